"""Pieces: a big file read as several pieces gives exactly the rows of reading it whole, every piece's
rows add up to its independent record count, bad WARC records cost only themselves, and a huge
record is rejected without being held."""
from __future__ import annotations

import gzip
import io
import json
import tracemalloc
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.config import InputSpec
from pipeline.readers import InputFile, Piece, count_records, expand_inputs, plan_pieces, read_piece

WHOLE = 1 << 40  # a max_bytes no test file reaches: one piece per file


def only_file(path: Path, **spec) -> InputFile:
    [f] = expand_inputs([InputSpec(path=str(path), **spec)])
    return f


def read_all(pieces: list[Piece], **kw) -> tuple[pa.Table, pa.Table]:
    results = [r for p in pieces for r in read_piece(p, **kw)]
    return pa.concat_tables([r.kept for r in results]), pa.concat_tables([r.rejected for r in results])


def assert_split_reads_like_whole(f: InputFile, max_bytes: int, **kw) -> tuple[list[Piece], pa.Table, pa.Table]:
    """Several pieces, the same rows as one piece, and every piece's rows equal to its count."""
    pieces = plan_pieces([f], max_bytes)
    assert len(pieces) > 2 and [p.index for p in pieces] == list(range(len(pieces)))
    assert plan_pieces([f], max_bytes) == pieces  # fixed by the input alone
    kept, rejected = read_all(pieces, **kw)
    whole_kept, whole_rejected = read_all(plan_pieces([f], WHOLE), **kw)
    assert kept.equals(whole_kept) and rejected.equals(whole_rejected)
    for piece in pieces:
        rows = sum(r.kept.num_rows + r.rejected.num_rows for r in read_piece(piece, **kw))
        assert rows == count_records(piece), piece
    return pieces, kept, rejected


def reasons(rejected: pa.Table) -> Counter:
    return Counter(rejected["reason"].to_pylist())


# --- line formats -------------------------------------------------------------------------------

def test_jsonl_pieces_align_to_lines_and_number_them(tmp_path):
    lines = []
    for i in range(400):
        lines.append(json.dumps({"id": f"d{i}", "text": f"document {i} " * (i % 17 + 1)}))
        if i % 50 == 7:
            lines += ["", '{"text": "broken', "   "]
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    f = only_file(tmp_path / "big.jsonl")
    pieces, kept, rejected = assert_split_reads_like_whole(f, 2_000, batch_rows=64)
    assert all(p.start < p.end for p in pieces[:-1]) and pieces[-1].end is None
    data = (tmp_path / "big.jsonl").read_bytes()
    assert all(data[p.start - 1:p.start] == b"\n" and data[:p.start].count(b"\n") == p.before for p in pieces[1:])
    assert kept.num_rows == 400 and reasons(rejected) == {"malformed_json": 8}
    numbers = {l: n for n, l in enumerate(lines, 1)}
    assert kept["origin"].to_pylist() == [f"big.jsonl:{numbers[json.dumps({'id': i, 'text': t})]}"
                                          for i, t in zip(kept["id"].to_pylist(), kept["text"].to_pylist())]
    assert all(o == f"big.jsonl:{d.split(':')[1]}" for o, d in zip(rejected["origin"].to_pylist(),
                                                                   rejected["detail"].to_pylist()))


def test_batches_are_bounded_and_in_order(tmp_path):
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(100)))
    [piece] = plan_pieces([only_file(tmp_path / "b.jsonl")], WHOLE)
    batches = list(read_piece(piece, batch_rows=30))
    assert [b.kept.num_rows for b in batches] == [30, 30, 30, 10]
    assert [t for b in batches for t in b.kept["text"].to_pylist()] == [f"t{i}" for i in range(100)]
    (tmp_path / "empty.jsonl").write_text("")
    [empty] = list(read_piece(plan_pieces([only_file(tmp_path / "empty.jsonl")], WHOLE)[0]))
    assert empty.kept.num_rows == empty.rejected.num_rows == 0 and "origin" in empty.kept.column_names


def test_tsv_pieces_take_the_header_from_the_file(tmp_path):
    rows = ["label\tbody"] + [f"{'spam' if i % 3 else 'ham'}\tmessage {i} " + "x" * (i % 40) for i in range(300)]
    rows[100] = "broken row without tab"
    (tmp_path / "m.tsv").write_text("\n".join(rows) + "\n")
    f = only_file(tmp_path / "m.tsv", text_field="body")
    _, kept, rejected = assert_split_reads_like_whole(f, 1_500)
    assert kept.num_rows == 299 and reasons(rejected) == {"malformed_record": 1}
    assert rejected["origin"].to_pylist() == ["m.tsv:101"]
    assert json.loads(kept["meta"][0].as_py()) == {"label": "ham"}


def test_csv_is_one_piece_and_counted_by_rows(tmp_path, shared_data):
    records = b"".join(b'%d,"line one\nline two %d"\n' % (i, i) for i in range(200))
    (tmp_path / "q.csv").write_bytes(b"id,body\n" + records)
    f = only_file(tmp_path / "q.csv", text_field="body")
    [piece] = plan_pieces([f], 100)
    kept, rejected = read_all([piece])
    assert kept.num_rows == 200 == count_records(piece) and rejected.num_rows == 0
    assert kept["origin"][1].as_py() == "q.csv:4"  # record 2 starts on physical line 4
    for f in expand_inputs([InputSpec(path=str(shared_data / "youtube-spam"), text_field="CONTENT")]):
        [piece] = plan_pieces([f], WHOLE)
        kept, rejected = read_all([piece])
        assert kept.num_rows + rejected.num_rows == count_records(piece)


def test_compressed_and_utf16_files_are_one_piece(tmp_path):
    body = "".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(500))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body.encode()))
    (tmp_path / "b.jsonl").write_bytes(body.encode("utf-16"))
    files = [only_file(tmp_path / "a.jsonl.gz"), only_file(tmp_path / "b.jsonl")]
    pieces = plan_pieces(files, 100)
    assert [(p.index, p.start, p.end) for p in pieces] == [(0, 0, None), (1, 0, None)]
    assert [count_records(p) for p in pieces] == [500, 500]


def test_twenty_megabyte_line_is_too_long_without_being_held(tmp_path):
    big = json.dumps({"text": "word " * 4_000_000})
    small, after = json.dumps({"text": "small"}), json.dumps({"text": "after"})
    (tmp_path / "big.jsonl").write_text(f"{small}\n{big}\n{after}\n")
    [piece] = plan_pieces([only_file(tmp_path / "big.jsonl")], WHOLE)
    tracemalloc.start()
    try:
        kept, rejected = read_all([piece], max_chars=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept["text"].to_pylist() == ["small", "after"]
    assert reasons(rejected) == {"too_long": 1} and rejected["origin"].to_pylist() == ["big.jsonl:2"]
    assert rejected["text"][0].as_py() == big[:len(rejected["text"][0].as_py())]
    assert len(rejected["text"][0].as_py()) <= 65_536 and "20000013 bytes" in rejected["detail"][0].as_py()
    assert peak < 8_000_000  # the record is 20 MB; the reader holds one 1 MiB chunk and a capped prefix
    assert count_records(piece) == 3


def test_text_over_max_chars_is_too_long_with_a_prefix(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "é" * 5000}) + "\n")
    kept, rejected = read_all(plan_pieces([only_file(tmp_path / "t.jsonl")], WHOLE), max_chars=4000)
    assert kept.num_rows == 0 and reasons(rejected) == {"too_long": 1}
    assert rejected["detail"][0].as_py() == "t.jsonl:1: 5000 chars > max 4000"


# --- Parquet --------------------------------------------------------------------------------------

def test_parquet_pieces_are_row_groups(tmp_path):
    texts = [None if i % 37 == 5 else f"row {i} " * (i % 9 + 1) for i in range(500)]
    texts[77] = "y" * 5000
    pq.write_table(pa.table({"text": texts, "n": list(range(500))}), tmp_path / "p.parquet", row_group_size=40)
    f = only_file(tmp_path / "p.parquet")
    pieces, kept, rejected = assert_split_reads_like_whole(f, 1_200, max_chars=1000)
    assert [p.before for p in pieces] == [40 * p.start for p in pieces]
    assert reasons(rejected) == {"missing_text": 14, "too_long": 1}
    assert kept.num_rows == 485 and kept["origin"][0].as_py() == "p.parquet#0"
    too_long = rejected.filter(pa.compute.equal(rejected["reason"], "too_long"))
    assert too_long["origin"].to_pylist() == ["p.parquet#77"] and too_long["text"][0].as_py() == "y" * 5000


# --- WARC / WET ---------------------------------------------------------------------------------

def _warc(records: int) -> bytes:
    """An uncompressed WARC: a warcinfo, then conversion (text) records, HTML responses and requests."""
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=False)
    writer.write_record(writer.create_warcinfo_record("gen.warc", {"software": "test"}))
    for i in range(records):
        uri = f"http://example.com/{i}"
        if i % 10 == 3:
            html = f"<html><body><article><p>Page {i} has a paragraph of real words in it, enough to keep.</p>" \
                   f"</article></body></html>".encode()
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(uri, "response", payload=io.BytesIO(html),
                                                          http_headers=http))
        elif i % 10 == 6:
            http = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.com")], is_http_request=True)
            writer.write_record(writer.create_warc_record(uri, "request", payload=io.BytesIO(b""), http_headers=http))
        else:
            text = f"Text of record {i}.\n" * (i % 7 + 1)
            writer.write_record(writer.create_warc_record(uri, "conversion", payload=io.BytesIO(text.encode()),
                                                          warc_content_type="text/plain"))
    return out.getvalue()


def test_warc_pieces_start_at_records(tmp_path):
    (tmp_path / "gen.warc").write_bytes(_warc(60))
    f = only_file(tmp_path / "gen.warc")
    pieces, kept, rejected = assert_split_reads_like_whole(f, 3_000)
    data = (tmp_path / "gen.warc").read_bytes()
    assert all(data[p.start:p.start + 9] == b"WARC/1.0\r" for p in pieces[1:])
    assert kept.num_rows == 54 and rejected.num_rows == 0  # 6 requests and the warcinfo are not documents
    assert all(data[int(o.split("@")[1]):].startswith(b"WARC/1.0") for o in kept["origin"].to_pylist())


def test_bad_content_length_costs_one_record(tmp_path):
    data = _warc(20)
    starts = [i for i in range(len(data)) if data.startswith(b"WARC/1.0", i)]
    too_long = data.replace(b"Content-Length: ", b"Content-Length: 9", 1)  # the warcinfo swallows record 1
    short = data[:starts[5]] + data[starts[5]:].replace(b"Content-Length: ", b"Content-Length: 1", 1)
    (tmp_path / "long.warc").write_bytes(too_long)
    (tmp_path / "short.warc").write_bytes(short)
    good_kept, _ = read_all(plan_pieces([only_file(tmp_path / "long.warc")], WHOLE))
    assert good_kept.num_rows == 18  # only the (non-document) warcinfo was lost: every record still read
    [piece] = plan_pieces([only_file(tmp_path / "short.warc")], WHOLE)
    kept, rejected = read_all([piece])
    assert kept.num_rows == 17 and reasons(rejected) == {"malformed_record": 1}
    assert rejected["origin"].to_pylist() == [f"short.warc@{starts[5]}"]
    assert kept.num_rows + rejected.num_rows == count_records(piece)


def test_ccnet_wet_every_record_parsed_or_malformed(shared_data):
    f = only_file(shared_data / "warc-samples" / "ccnet_sample.warc.wet.txt")
    [piece] = plan_pieces([f], WHOLE)
    kept, rejected = read_all([piece])
    assert set(reasons(rejected)) == {"malformed_record"}
    assert kept.num_rows + rejected.num_rows == count_records(piece) == 3


@pytest.mark.parametrize("name", ["warcio_example-iana.org-chunked.warc", "pywb_dupes.warc.gz",
                                  "commoncrawl_whirlwind.warc.wet.gz", "warcio_example.warc.gz"])
def test_real_warcs_reconcile_with_their_count(shared_data, name):
    [piece] = plan_pieces([only_file(shared_data / "warc-samples" / name)], WHOLE)
    kept, rejected = read_all([piece])
    assert kept.num_rows + rejected.num_rows == count_records(piece) > 0


def test_warc_truncated_mid_record(tmp_path, shared_data):
    data = _warc(10)
    starts = [i for i in range(len(data)) if data.startswith(b"WARC/1.0", i)]
    (tmp_path / "cut.warc").write_bytes(data[:starts[-1] + 300])  # inside the last record's body
    [piece] = plan_pieces([only_file(tmp_path / "cut.warc")], WHOLE)
    kept, rejected = read_all([piece])
    assert reasons(rejected) == {"truncated": 1} and rejected["origin"].to_pylist() == [f"cut.warc@{starts[-1]}"]
    assert kept.num_rows + rejected.num_rows == count_records(piece) == 9
    gz = (shared_data / "warc-samples" / "dolma_sample-0000.warc.gz").read_bytes()
    (tmp_path / "cut.warc.gz").write_bytes(gz[:len(gz) // 2])
    [piece] = plan_pieces([only_file(tmp_path / "cut.warc.gz")], WHOLE)
    kept, rejected = read_all([piece])
    assert reasons(rejected)["truncated"] == 2 and kept.num_rows > 5  # the record cut, and the break itself
    assert "records after it cannot be read" in rejected["detail"][-1].as_py()
    assert kept.num_rows + rejected.num_rows == count_records(piece)

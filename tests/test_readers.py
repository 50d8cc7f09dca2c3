"""Readers on the real files in ../shared/data and on generated bad inputs: nothing is lost,
every rejection carries its reason and a `file:line` (or byte offset), and reading is deterministic."""
from __future__ import annotations

import csv
import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from warcio.archiveiterator import ArchiveIterator

from pipeline.config import InputSpec
from pipeline.readers import InputError, expand_inputs, read_file

DOCUMENT_RECORDS = {"response", "resource", "conversion", "revisit"}


def read(path: Path | str, **spec):
    """Expand one input and read all its files; returns (files, kept rows, rejected rows)."""
    files = expand_inputs([InputSpec(path=str(path), **spec)])
    results = [read_file(f) for f in files]
    kept = pa.concat_tables([r.kept for r in results]).to_pylist()
    rejected = pa.concat_tables([r.rejected for r in results]).to_pylist()
    return files, kept, rejected


def reasons(rejected: list[dict]) -> Counter:
    return Counter(r["reason"] for r in rejected)


# --- real files ---------------------------------------------------------------------------------

def test_dolma_jsonl_gz_keeps_every_line_with_own_ids(shared_data):
    for path in sorted((shared_data / "cc-web-docs").glob("*.gz")):
        lines = [json.loads(l) for l in gzip.open(path, "rt", encoding="utf-8") if l.strip()]
        files, kept, rejected = read(path, url_field="metadata.url")
        assert files[0].format == "jsonl" and rejected == []
        assert [d["id"] for d in kept] == [str(l["id"]) for l in lines]
        assert [d["text"] for d in kept] == [l["text"] for l in lines]
        assert kept[0]["url"] == lines[0]["metadata"].get("url")
        assert "text" not in json.loads(kept[0]["meta"]) and "metadata" in json.loads(kept[0]["meta"])


def _document_records(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(r.rec_type in DOCUMENT_RECORDS for r in ArchiveIterator(fh))


@pytest.mark.parametrize("name", [
    "commoncrawl_whirlwind.warc.gz", "commoncrawl_whirlwind.warc.wet.gz", "dolma_sample-0000.warc.gz",
    "pywb_dupes.warc.gz", "warcio_example-iana.org-chunked.warc", "warcio_example.warc.gz",
    "resiliparse_warcfile.warc.gz",
])
def test_warc_records_all_accounted_for(shared_data, name):
    path = shared_data / "warc-samples" / name
    files, kept, rejected = read(path)
    assert len(kept) + len(rejected) == _document_records(path)
    assert all(d["id"].startswith(f"{files[0].source}/{name}#") for d in kept + rejected)
    assert all(r["detail"].startswith(f"{name}:") for r in rejected)
    assert set(reasons(rejected)) <= {"warc_no_body", "unsupported_content", "extraction_failed"}


def test_warc_html_to_main_text_through_chunked_encoding(shared_data):
    _, kept, _ = read(shared_data / "warc-samples" / "warcio_example-iana.org-chunked.warc")
    assert len(kept) == 1
    doc = kept[0]
    assert doc["url"].startswith("http") and "<" not in doc["text"] and len(doc["text"]) > 50
    assert json.loads(doc["meta"])["extractor"] == "trafilatura"


def test_warc_revisit_records_are_rejected_without_body(shared_data):
    _, kept, rejected = read(shared_data / "warc-samples" / "warcio_example.warc.gz")
    assert len(kept) == 1 and reasons(rejected) == {"warc_no_body": 1}
    offset = int(rejected[0]["id"].rsplit("#", 1)[1])
    assert rejected[0]["detail"].startswith(f"warcio_example.warc.gz:{offset}: revisit")
    assert json.loads(rejected[0]["meta"])["warc_type"] == "revisit"


def test_wet_conversion_records_become_text(shared_data):
    files, kept, rejected = read(shared_data / "warc-samples" / "commoncrawl_whirlwind.warc.wet.gz")
    assert files[0].format == "wet" and rejected == [] and len(kept) == 1
    assert kept[0]["url"] and json.loads(kept[0]["meta"])["warc_type"] == "conversion"


def test_wet_with_wrong_content_lengths_resyncs_per_record(shared_data):
    """ccnet_sample's Content-Length headers do not match its bodies (one counts characters, not
    bytes): each bad record is rejected at its own offset and reading resyncs at the next one."""
    path = shared_data / "warc-samples" / "ccnet_sample.warc.wet.txt"
    files, kept, rejected = read(path)
    assert files[0].format == "wet"  # sniffed from its first bytes despite the .txt name
    data = path.read_bytes()
    conversions = [m.start() for m in re.finditer(rb"(?m)^WARC/1\.0\r?\nWARC-Type: conversion", data)]
    assert kept == [] and reasons(rejected) == {"malformed_record": len(conversions)} and len(conversions) == 3
    assert [r["origin"] for r in rejected] == [f"ccnet_sample.warc.wet.txt@{o}" for o in conversions]
    assert [r["detail"].split(": ")[0] for r in rejected] == [f"ccnet_sample.warc.wet.txt:{o}" for o in conversions]
    assert "Famous Mark Twain Quotes" in rejected[0]["text"] and "Content-Length 353" in rejected[0]["detail"]


def test_gutenberg_cp1252_decoded_by_detection(shared_data):
    files, kept, rejected = read(shared_data / "gutenberg")
    assert rejected == [] and len(kept) == len(files) == 7
    by_name = {d["id"].split("/", 1)[1]: d for d in kept}
    pride = by_name["pg1342_with_pg_header.txt"]
    assert json.loads(pride["meta"]) == {"encoding": "cp1252", "decoded": "detected"}
    raw = (shared_data / "gutenberg" / "pg1342_with_pg_header.txt").read_bytes()
    assert b"\x9c" in raw and "\u0153" in pride["text"] and "\u015b" not in pride["text"]  # œ, not cp1250's ś
    assert "\u2019" in pride["text"]  # 0x92, right single quote
    assert json.loads(by_name["gitenberg_1342-0.txt"]["meta"]) == {}  # plain UTF-8: nothing recorded


def test_sms_spam_tsv(shared_data):
    files, kept, rejected = read(shared_data / "sms-spam" / "SMSSpamCollection.tsv", text_field="SMS")
    assert files[0].format == "tsv" and rejected == [] and len(kept) == 5574
    assert Counter(json.loads(d["meta"])["Label"] for d in kept)["spam"] == 747
    assert kept[0]["id"] == "SMSSpamCollection/SMSSpamCollection.tsv#2"  # line 1 is the header


def test_youtube_spam_csv(shared_data):
    files, kept, rejected = read(shared_data / "youtube-spam", text_field="CONTENT", id_field="COMMENT_ID")
    assert len(files) == 5 and {f.source for f in files} == {"youtube-spam"} and rejected == []
    expected = [row["COMMENT_ID"] for f in files for row in csv.DictReader(open(f.path, newline="", encoding="utf-8"))]
    assert len(kept) == 1956 and [d["id"] for d in kept] == expected
    assert sum(json.loads(d["meta"])["CLASS"] == "1" for d in kept) == 1005


def test_reading_is_deterministic(shared_data):
    f = expand_inputs([InputSpec(path=str(shared_data / "warc-samples" / "pywb_dupes.warc.gz"))])[0]
    a, b = read_file(f), read_file(f)
    assert a.kept.equals(b.kept) and a.rejected.equals(b.rejected)


# --- generated bad inputs -------------------------------------------------------------------------

def test_jsonl_bad_records_each_get_their_reason(tmp_path):
    lines = [
        b'{"id": "a", "text": "fine"}',
        b'{"text": "broken',
        '{"text": "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade", "lang": "fr"}'.encode("cp1252"),
        b'{"title": "no text here"}',
        b'{"text": ""}',
        b'',  # a blank line is not a record
        b'["a", "list"]',
        b'{"text": 42}',
        b'{"text": "x\\ud800y"}',
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    _, kept, rejected = read(path)
    assert [d["id"] for d in kept] == ["a", "bad/bad.jsonl#3", "bad/bad.jsonl#5"]
    assert kept[1]["text"] == "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade"
    assert json.loads(kept[1]["meta"]) == {"lang": "fr", "encoding": "cp1252", "decoded": "detected"}
    assert kept[2]["text"] == ""  # empty is `clean`'s call, not the reader's
    got = {r["id"]: (r["reason"], r["detail"].split(": ")[0]) for r in rejected}
    assert got == {
        "bad/bad.jsonl#2": ("malformed_json", "bad.jsonl:2"),
        "bad/bad.jsonl#4": ("missing_text", "bad.jsonl:4"),
        "bad/bad.jsonl#7": ("malformed_record", "bad.jsonl:7"),
        "bad/bad.jsonl#8": ("malformed_record", "bad.jsonl:8"),
        "bad/bad.jsonl#9": ("bad_encoding", "bad.jsonl:9"),
    }
    assert all(r["stage"] == "ingest" for r in rejected)
    assert next(r for r in rejected if r["reason"] == "malformed_json")["text"] == '{"text": "broken\n'


def test_undecodable_bytes_are_bad_encoding(tmp_path):
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)))
    _, kept, rejected = read(tmp_path / "binary.txt")
    assert kept == [] and reasons(rejected) == {"bad_encoding": 1}
    assert rejected[0]["detail"].startswith("binary.txt:0: ")


def test_utf16_with_bom(tmp_path):
    text = "Grüße aus Köln — ünïcödé\nzweite Zeile"
    (tmp_path / "doc.txt").write_bytes(text.encode("utf-16"))
    _, kept, _ = read(tmp_path / "doc.txt")
    assert kept[0]["text"] == text and json.loads(kept[0]["meta"]) == {"encoding": "utf-16", "decoded": "bom"}
    rows = "".join(json.dumps({"text": t}) + "\n" for t in ["eins ü", "zwei ß"])
    (tmp_path / "rows.jsonl").write_bytes(rows.encode("utf-16"))
    _, kept, rejected = read(tmp_path / "rows.jsonl")
    assert rejected == [] and [d["text"] for d in kept] == ["eins ü", "zwei ß"]
    assert [d["id"] for d in kept] == ["rows/rows.jsonl#1", "rows/rows.jsonl#2"]


def _jsonl(n: int) -> bytes:
    return b"".join(json.dumps({"text": f"document number {i} " * 20}).encode() + b"\n" for i in range(n))


@pytest.mark.parametrize("compress,suffix", [(gzip.compress, "gz"), (zstandard.ZstdCompressor().compress, "zst")])
def test_truncated_stream_keeps_what_was_read(tmp_path, compress, suffix):
    data = _jsonl(2000)
    blob = compress(data[:len(data) // 2]) + compress(data[len(data) // 2:])  # two members / frames
    (tmp_path / f"whole.jsonl.{suffix}").write_bytes(blob)
    _, kept, rejected = read(tmp_path / f"whole.jsonl.{suffix}")
    assert len(kept) == 2000 and rejected == []
    (tmp_path / f"cut.jsonl.{suffix}").write_bytes(blob[:-40])
    _, kept, rejected = read(tmp_path / f"cut.jsonl.{suffix}")
    assert reasons(rejected) == {"truncated": 1} and 1000 <= len(kept) < 2000
    assert [d["id"] for d in kept] == [f"cut/cut.jsonl.{suffix}#{i}" for i in range(1, len(kept) + 1)]
    assert [d["text"] for d in kept] == [json.loads(l)["text"] for l in data.splitlines()[:len(kept)]]
    cut = rejected[0]
    offset = int(cut["id"].rsplit("@", 1)[1])
    assert cut["id"] == f"cut/cut.jsonl.{suffix}#truncated@{offset}"
    assert cut["detail"].startswith(f"cut.jsonl.{suffix}:{offset}: ")
    assert data[offset - len(cut["text"]):offset] == cut["text"].encode()  # the incomplete tail


def test_truncated_warc_is_reported(tmp_path, shared_data):
    data = (shared_data / "warc-samples" / "warcio_example-iana.org-chunked.warc").read_bytes()
    (tmp_path / "cut.warc").write_bytes(data[:len(data) // 2])
    _, kept, rejected = read(tmp_path / "cut.warc")
    assert kept == [] and reasons(rejected) == {"truncated": 1}
    assert rejected[0]["id"].startswith("cut/cut.warc#truncated@")
    gz = (shared_data / "warc-samples" / "dolma_sample-0000.warc.gz").read_bytes()
    (tmp_path / "cut2.warc.gz").write_bytes(gz[:len(gz) // 2])
    _, kept, rejected = read(tmp_path / "cut2.warc.gz")
    assert len(kept) > 5 and reasons(rejected) == {"truncated": 2}  # the record cut, and the gzip break


def test_twenty_megabyte_document_is_read_whole(tmp_path):
    big = "word " * 4_000_000
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": big}) + "\n" + json.dumps({"text": "small"}) + "\n")
    _, kept, _ = read(tmp_path / "big.jsonl")
    assert [len(d["text"]) for d in kept] == [len(big), 5]


def test_csv_rows_and_malformed_rows(tmp_path):
    (tmp_path / "t.csv").write_bytes(
        b'id,body,stars\n1,"multi\nline, quoted",5\n2,too,many,fields\n3,"fine",\n'
        b'4,"caf\xe9 au lait",3\n'
    )
    _, kept, rejected = read(tmp_path / "t.csv", text_field="body")
    assert [d["id"] for d in kept] == ["1", "3", "4"]
    assert kept[0]["text"] == "multi\nline, quoted" and json.loads(kept[0]["meta"]) == {"stars": "5"}
    assert kept[2]["text"] == "caf\u00e9 au lait" and json.loads(kept[2]["meta"])["decoded"] == "detected"
    assert [(r["id"], r["reason"], r["detail"].split(": ")[0]) for r in rejected] == [
        ("t/t.csv#4", "malformed_record", "t.csv:4")]  # record 2 starts on physical line 4
    assert rejected[0]["text"] == "2,too,many,fields\n"


def test_parquet_rows(tmp_path):
    table = pa.table({"text": ["one", None, "three"], "id": [None, "b", "c"], "lang": ["en", "de", "fr"]})
    pq.write_table(table, tmp_path / "p.parquet")
    _, kept, rejected = read(tmp_path / "p.parquet")
    assert [d["id"] for d in kept] == ["p/p.parquet#0", "c"]
    assert json.loads(kept[1]["meta"]) == {"lang": "fr"}
    assert [(r["id"], r["reason"], r["detail"].split(": ")[0]) for r in rejected] == [
        ("b", "missing_text", "p.parquet:1")]


# --- expand_inputs ----------------------------------------------------------------------------

def test_expand_inputs_sources_rels_and_formats(shared_data):
    files = expand_inputs([
        InputSpec(path=str(shared_data / "cc-web-docs" / "*.gz")),
        InputSpec(path=str(shared_data / "warc-samples"), source="crawl"),
    ])
    cc = [f for f in files if f.format == "jsonl"]
    assert [f.source for f in cc][-1] == "dolma_provided_documents_000"  # .json.gz stripped
    assert [f.rel for f in cc] == sorted(f.rel for f in cc)
    warcs = {f.rel: f for f in files if f.source == "crawl"}
    assert len(warcs) == 12
    assert warcs["ccnet_sample.warc.wet.txt"].format == "wet"
    assert warcs["commoncrawl_whirlwind.warc.gz"].format == "warc"
    assert files == expand_inputs([InputSpec(path=str(shared_data / "cc-web-docs" / "*.gz")),
                                   InputSpec(path=str(shared_data / "warc-samples"), source="crawl")])


def test_inputs_that_cannot_be_read_fail_fast(tmp_path):
    def fails(match: str, **spec) -> None:
        with pytest.raises(InputError, match=match):
            expand_inputs([InputSpec.model_construct(**{"format": "auto", "source": None, "text_field": "text",
                                                         "id_field": "id", "url_field": "url", **spec})])

    fails("does not exist: .*nowhere", path=str(tmp_path / "nowhere.jsonl"))
    fails("matches no files", path=str(tmp_path / "*.jsonl"))
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    fails("cannot determine the format of .*data.bin", path=str(tmp_path / "data.bin"))
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    fails("no text column 'text'", path=str(tmp_path / "t.csv"))
    (tmp_path / "arr.json").write_text('[{"text": "a"}]')
    fails("JSON array", path=str(tmp_path / "arr.json"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    fails("not a readable Parquet", path=str(tmp_path / "bad.parquet"))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="listed twice"):
        expand_inputs([InputSpec(path=str(tmp_path / "x.txt")), InputSpec(path=str(tmp_path / "*.txt"))])


def test_unknown_html_extractor_fails_fast():
    from pipeline.readers import get_extractor

    with pytest.raises(InputError, match="unknown HTML extractor 'lynx'"):
        get_extractor("lynx")

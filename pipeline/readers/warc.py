"""WARC and WET: HTTP responses with HTML become their main text, WET conversion records their text.

warcio handles gzip members and chunked/compressed HTTP bodies. `warcinfo`, `request` and
`metadata` records describe the crawl, not documents, and are passed over. A `revisit` record (or
any record without a body) is rejected as `warc_no_body`. warcio ends a cut file silently, so a
record shorter than its Content-Length, or unread bytes after the last record, is `truncated`;
an unparseable record rejects the rest of the file as one `malformed_record` row.
"""
from __future__ import annotations

import zlib
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from pipeline.readers.base import InputFile, Rows
from pipeline.readers.encoding import UndecodableError, decode
from pipeline.readers.html import Extractor, get_extractor
from pipeline.readers.streams import GZIP_MAGIC

NOT_DOCUMENTS = {"warcinfo", "request", "metadata"}
HTML_TYPES = {"text/html", "application/xhtml+xml"}
TEXT_TYPES = {"text/plain"}
TAIL_LIMIT = 1_000_000


def read(f: InputFile, rows: Rows, html_extractor: str = "trafilatura") -> None:
    extract = get_extractor(html_extractor)
    end = 0  # byte offset just after the last record read
    with open(f.path, "rb") as fh:
        records = ArchiveIterator(fh)
        try:
            for record in records:
                _record(rows, records, record, extract, html_extractor)
                end = records.get_record_offset() + records.get_record_length()
        except (ArchiveLoadFailed, EOFError, OSError, ValueError, zlib.error) as err:
            rows.reject(rows.derived_id(end), _tail(f.path, end), "malformed_record", end,
                        f"unparseable WARC record, rest of file not read: {str(err).strip()}")
            return
    tail = _tail(f.path, end)
    if tail.strip(b"\r\n\t \x00"):
        rows.reject(rows.derived_id(f"truncated@{end}"), tail, "truncated", end,
                    "file ends inside a WARC record")


def _record(rows: Rows, records: ArchiveIterator, record, extract: Extractor, extractor_name: str) -> None:
    kind = record.rec_type
    headers = record.rec_headers
    url = headers.get_header("WARC-Target-URI")
    if kind in ("response", "revisit"):
        http = record.http_headers
        content_type = http.get_header("Content-Type") if http else None
    else:
        http, content_type = None, headers.get_header("Content-Type")
    mime = (content_type or "").split(";")[0].strip().lower()
    meta = {"warc_type": kind, "warc_record_id": headers.get_header("WARC-Record-ID"),
            "warc_date": headers.get_header("WARC-Date"), "content_type": content_type}
    if http is not None:
        meta["http_status"] = http.get_statuscode()
    try:
        payload, error = record.content_stream().read(), None
    except Exception as err:  # noqa: BLE001 - a broken chunked/compressed body is this record's problem
        payload, error = b"", f"{kind} body unreadable: {type(err).__name__}: {err}"
    offset = records.get_record_offset()  # reads the record to its end first
    missing = record.raw_stream.limit  # bytes the Content-Length promised but the file lacks
    if missing:
        rows.reject(rows.derived_id(f"truncated@{offset}"), payload, "truncated", offset,
                    f"{kind} record ends {missing} bytes before its Content-Length", url, meta)
        return
    if kind in NOT_DOCUMENTS:
        return
    derived = rows.derived_id(offset)
    if error:
        rows.reject(derived, headers.to_str(), "malformed_record", offset, error, url, meta)
    elif kind == "revisit" or not payload:
        rows.reject(derived, headers.to_str(), "warc_no_body", offset, f"{kind} record has no body", url, meta)
    elif mime in HTML_TYPES or (not mime and payload.lstrip()[:1] == b"<"):
        _html(rows, derived, offset, payload, url, meta, extract, extractor_name)
    elif kind == "conversion" or mime in TEXT_TYPES:
        try:
            decoded = decode(payload)
        except UndecodableError as err:
            rows.reject(derived, payload, "bad_encoding", offset, str(err), url, meta)
            return
        rows.keep(derived, decoded.text, url, {**meta, **decoded.meta})
    else:
        rows.reject(derived, payload, "unsupported_content", offset, f"{mime or 'unknown'} content is not text",
                    url, meta)


def _html(rows: Rows, doc_id: str, offset: int, payload: bytes, url: str | None, meta: dict,
          extract: Extractor, extractor_name: str) -> None:
    try:
        text = extract(payload, url)
    except Exception as err:  # noqa: BLE001 - any extractor failure is this record's, not the run's
        text, why = None, f"{extractor_name} failed: {type(err).__name__}: {err}"
    else:
        why = f"{extractor_name} found no main text"
    if text:
        rows.keep(doc_id, text, url, {**meta, "extractor": extractor_name})
    else:
        rows.reject(doc_id, payload, "extraction_failed", offset, why, url, meta)


def _tail(path: str | Path, offset: int) -> bytes:
    """The file's bytes from `offset` (decompressed when gzip, as far as they go), for a rejected row."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(TAIL_LIMIT)
    if data.startswith(GZIP_MAGIC):
        try:
            return zlib.decompressobj(wbits=31).decompress(data, TAIL_LIMIT)
        except zlib.error:
            return data
    return data

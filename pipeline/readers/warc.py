"""WARC and WET: HTTP responses with HTML become their main text, WET conversion records their text.

Record framing is read here, so that one bad record costs only itself: a record starts at a line
beginning `WARC/1.`, its header block ends at a blank line, and its body is Content-Length bytes,
after which only blank lines may come before the next record or the end of the file. A record that
breaks this (a wrong Content-Length, a header block without end) is `malformed_record` at its byte
offset and reading resyncs at the next `WARC/1.` line; a record the file ends inside is `truncated`,
and a broken compressed stream adds one `truncated` row for whatever followed the break.
The HTTP message inside a response or revisit record (headers, chunked or compressed bodies) is
left to warcio.
Offsets are in the decompressed stream. `warcinfo`, `request` and `metadata` records describe the
crawl, not documents, and are passed over, even when broken; a `revisit` record (or any record
without a body) is rejected as `warc_no_body`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator

from warcio.archiveiterator import ArchiveIterator

from pipeline.readers.base import Outcome, Piece, Rows
from pipeline.readers.encoding import UndecodableError, decode
from pipeline.readers.html import Extractor, get_extractor
from pipeline.readers.streams import ByteReader, Line, TruncatedStream, chunks

VERSION = b"WARC/1."
LINE_LIMIT = 1 << 16  # bytes of a header line (or a scanned body line) kept
NOT_DOCUMENTS = {"warcinfo", "request", "metadata"}
HTML_TYPES = {"text/html", "application/xhtml+xml"}
TEXT_TYPES = {"text/plain"}
HTTP_RECORDS = {"response", "revisit"}  # their block is an HTTP message, not the payload itself


def _until_cut(parts: Iterator[bytes], cut: list[TruncatedStream]) -> Iterator[bytes]:
    """The chunks, ending quietly where a compressed stream breaks: a cut stream then reads as a file
    that ends there, and the record it cuts is `truncated` like one in a cut uncompressed file."""
    try:
        yield from parts
    except TruncatedStream as err:
        cut.append(err)


def _stream(piece: Piece, cut: list[TruncatedStream]) -> ByteReader:
    return ByteReader(_until_cut(chunks(piece.file.path, piece.start), cut), piece.start)


def _is_version(line: Line, at_line_start: bool) -> bool:
    return at_line_start and line.raw.startswith(VERSION)


def _next_version(stream: ByteReader) -> Line | None:
    """Skip to the next record's first line (None at the end)."""
    while True:
        at_start = stream.at_line_start
        line = stream.line(LINE_LIMIT)
        if line is None or _is_version(line, at_start):
            return line


def _header_block(stream: ByteReader) -> tuple[list[Line], Line | None, bool]:
    """Header lines after a version line, the line that ended the block (blank, next version line, or
    None at the end), and whether it ended properly (with a blank line)."""
    headers: list[Line] = []
    while True:
        at_start = stream.at_line_start
        line = stream.line(LINE_LIMIT)
        if line is None or _is_version(line, at_start):
            return headers, line, False
        if line.blank:
            return headers, line, True
        headers.append(line)


def _fields(headers: list[Line]) -> dict[str, str]:
    """Header names (lower case) to values; the first of a repeated name wins."""
    fields: dict[str, str] = {}
    for line in headers:
        name, sep, value = line.raw.partition(b":")
        if sep:
            fields.setdefault(name.strip().lower().decode("utf-8", "replace"), value.strip().decode("utf-8", "replace"))
    return fields


def _record_type(fields: dict[str, str]) -> str | None:
    kind = fields.get("warc-type")
    return kind.lower() if kind else None


def count(piece: Piece) -> int:
    """Records counted from their `WARC/1.` lines alone, whatever their Content-Length says: every
    version line at a line start in the piece, less those whose header names a non-document type,
    plus one for non-blank bytes before a file's first record and one for a broken compressed stream."""
    cut: list[TruncatedStream] = []
    stream = _stream(piece, cut)
    records, seen_version = 0, piece.start > 0
    at_start, line = stream.at_line_start, stream.line(LINE_LIMIT)
    while line is not None and (piece.end is None or line.offset < piece.end):
        if _is_version(line, at_start):
            seen_version = True
            headers, ended_by, _ = _header_block(stream)
            records += _record_type(_fields(headers)) not in NOT_DOCUMENTS
            if ended_by is not None and not ended_by.blank:  # the next version line ended the block
                line = ended_by
                continue
        elif not seen_version and not line.blank:
            records, seen_version = records + 1, True
        at_start, line = stream.at_line_start, stream.line(LINE_LIMIT)
    return records + bool(cut)


@dataclass
class _Frame:
    """One record as framed: its offset and type, its header bytes and fields, its body as far as it
    was kept, and what is wrong with its framing (a reason and a message), if anything."""

    offset: int
    kind: str | None
    head: bytes
    fields: dict[str, str]
    length: int = 0  # Content-Length
    body: bytes = b""
    problem: tuple[str, str] | None = None


def _version_in(data: bytes) -> int:
    """Where a `WARC/1.` line starts in `data` (which starts a line), or -1."""
    return 0 if data.startswith(VERSION) else data.find(b"\n" + VERSION) + 1 or -1


def _cut_note(cut: list[TruncatedStream]) -> str:
    return f" ({cut[0]})" if cut else ""


def _frame(stream: ByteReader, version: Line, limit: int, cut: list[TruncatedStream]) -> tuple[_Frame, Line | None]:
    """The record that starts at `version`, and the first line of the next one (None at the end)."""
    headers, ended_by, complete = _header_block(stream)
    head = version.raw + b"".join(line.raw for line in headers) + (ended_by.raw if complete else b"")
    fields = _fields(headers)
    frame = _Frame(version.offset, _record_type(fields), head, fields)
    if not complete:
        if ended_by is None:
            frame.problem = ("truncated", "file ends inside the record's header" + _cut_note(cut))
        else:
            frame.problem = ("malformed_record", f"header has no end before the next record at {ended_by.offset}")
        return frame, ended_by
    try:
        frame.length = int(fields.get("content-length", ""))
        if frame.length < 0:
            raise ValueError
    except ValueError:
        frame.problem = ("malformed_record", "no valid Content-Length")
        return frame, _next_version(stream)
    frame.body, got = stream.read(frame.length, limit)
    separator: list[Line] = []  # what follows the body: blank lines, then the next record
    if got == frame.length:
        while True:
            at_start = stream.at_line_start
            line = stream.line(limit)
            if line is None or _is_version(line, at_start):
                return frame, line
            separator.append(line)
            if not line.blank:
                break
    # the body as declared does not end at a record boundary: resync at the next `WARC/1.` line,
    # looking first inside what was read, since a Content-Length too long swallows the next record
    consumed = frame.body + b"".join(line.raw for line in separator)
    whole = len(frame.body) == got and not any(line.cut for line in separator)
    inner = _version_in(consumed) if whole else -1
    if inner >= 0:
        stream.rewind(consumed[inner:])
        frame.problem = ("malformed_record", f"Content-Length {frame.length} runs past the record's end "
                                             f"(the next record starts at {stream.offset})")
        return frame, stream.line(LINE_LIMIT)
    if got < frame.length:
        frame.problem = ("truncated", f"{frame.kind} record ends {frame.length - got} bytes before its "
                                      f"Content-Length" + _cut_note(cut))
        return frame, None
    frame.problem = ("malformed_record", f"Content-Length {frame.length} does not end the record "
                                         f"(non-blank bytes follow it); resynced at the next record")
    return frame, _next_version(stream)


def read(piece: Piece, rows: Rows, html_extractor: str = "trafilatura") -> Iterator[Outcome]:
    extract = get_extractor(html_extractor)
    cut: list[TruncatedStream] = []
    stream = _stream(piece, cut)
    junk: Line | None = None  # the first non-blank line before a file's first record
    while True:
        at_start = stream.at_line_start
        line = stream.line(LINE_LIMIT)
        if line is None or _is_version(line, at_start):
            break
        junk = junk or (None if line.blank else line)
    if junk is not None:
        yield rows.reject(rows.derived_id(junk.offset), junk.raw, "malformed_record", junk.offset,
                          "bytes before the first WARC record")
    while line is not None and (piece.end is None or line.offset < piece.end):
        frame, line = _frame(stream, line, rows.raw_limit, cut)
        if frame.kind in NOT_DOCUMENTS:
            continue
        if frame.problem is not None:
            reason, message = frame.problem
            position = f"truncated@{frame.offset}" if reason == "truncated" else frame.offset
            yield rows.reject(rows.derived_id(position), frame.head + frame.body, reason, frame.offset, message,
                              frame.fields.get("warc-target-uri"), position=frame.offset)
        else:
            yield _document(frame, rows, extract, html_extractor)
    if cut:  # whatever followed a broken compressed stream is lost: say so once, at the break
        yield rows.reject(rows.derived_id(f"truncated@{cut[0].offset}"), b"", "truncated", cut[0].offset,
                          f"{cut[0]}; records after it cannot be read")


def _document(frame: _Frame, rows: Rows, extract: Extractor, extractor_name: str) -> Outcome:
    """A well-framed record's document, or why it has none."""
    offset, derived = frame.offset, rows.derived_id(frame.offset)
    url = frame.fields.get("warc-target-uri")
    meta = {"warc_type": frame.kind, "warc_record_id": frame.fields.get("warc-record-id"),
            "warc_date": frame.fields.get("warc-date"), "content_type": frame.fields.get("content-type")}
    if frame.length > rows.raw_limit:
        return rows.unread(derived, frame.body, frame.length, offset, url, meta)
    kind, payload = frame.kind, frame.body
    if kind in HTTP_RECORDS:  # warcio for what HTTP wraps around the payload (chunked, gzip, brotli)
        try:
            record = next(iter(ArchiveIterator(io.BytesIO(frame.head + frame.body + b"\r\n\r\n"))))
            http = record.http_headers
            meta["content_type"] = http.get_header("Content-Type") if http else None
            if http is not None:
                meta["http_status"] = http.get_statuscode()
            payload = record.content_stream().read()
        except Exception as err:  # noqa: BLE001 - a broken HTTP message is this record's problem
            return rows.reject(derived, frame.head, "malformed_record", offset,
                               f"{kind} body unreadable: {type(err).__name__}: {err}", url, meta)
    mime = (meta["content_type"] or "").split(";")[0].strip().lower()
    if kind == "revisit" or not payload:
        return rows.reject(derived, frame.head, "warc_no_body", offset, f"{kind} record has no body", url, meta)
    if mime in HTML_TYPES or (not mime and payload.lstrip()[:1] == b"<"):
        return _html(rows, derived, offset, payload, url, meta, extract, extractor_name)
    if kind == "conversion" or mime in TEXT_TYPES:
        try:
            decoded = decode(payload)
        except UndecodableError as err:
            return rows.reject(derived, payload, "bad_encoding", offset, str(err), url, meta)
        return rows.keep(derived, decoded.text, offset, url, {**meta, **decoded.meta})
    return rows.reject(derived, payload, "unsupported_content", offset, f"{mime or 'unknown'} content is not text",
                       url, meta)


def _html(rows: Rows, doc_id: str, offset: int, payload: bytes, url: str | None, meta: dict,
          extract: Extractor, extractor_name: str) -> Outcome:
    try:
        text = extract(payload, url)
    except Exception as err:  # noqa: BLE001 - any extractor failure is this record's, not the run's
        text, why = None, f"{extractor_name} failed: {type(err).__name__}: {err}"
    else:
        why = f"{extractor_name} found no main text"
    if text:
        return rows.keep(doc_id, text, offset, url, {**meta, "extractor": extractor_name})
    return rows.reject(doc_id, payload, "extraction_failed", offset, why, url, meta)

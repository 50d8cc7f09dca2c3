"""Ingest: input files planned into pieces (the unit of the row-local pass), and read by the readers.

Malformed records come back from the readers as rejected rows; documents over `ingest.max_chars`
are rejected as `too_long` while they are read. Nothing read is dropped, and the records a reader
returns are checked against a count taken without parsing (see `pipeline.stage`).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import IngestConfig
from pipeline.fingerprint import code_digest, digest
from pipeline.readers import InputFile
from pipeline.readers.pieces import Piece, plan_pieces
from pipeline.rundir import file_digest
from pipeline.stage import Reader

STAGE = "ingest"


def pieces(files: list[InputFile], cfg: IngestConfig) -> tuple[list[Piece], list[str]]:
    """The pieces of the inputs and each one's identity: its file's name, format, size and content
    hash, and its range; a changed byte invalidates the pieces of that file only."""
    out = plan_pieces(files, cfg.piece_bytes)
    file_ids = {f.path: digest(f.source, f.rel, f.format, Path(f.path).stat().st_size, file_digest(f.path))
                for f in files}
    return out, [digest(file_ids[p.file.path], p.start, p.end) for p in out]


def build(cfg: IngestConfig) -> Reader:
    return Reader(cfg.html_extractor, cfg.max_chars, digest(cfg, code_digest(__name__, "pipeline.readers")))

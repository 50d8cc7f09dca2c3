"""Input pieces (interim: one piece per file until the splitting readers land)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.ledger import StageResult, rejected_rows
from pipeline.readers import InputFile, read_file


@dataclass(frozen=True)
class Piece:
    index: int
    file: InputFile
    start: int = 0
    end: int | None = None


def plan_pieces(files: list[InputFile], max_bytes: int) -> list[Piece]:
    return [Piece(i, f) for i, f in enumerate(files)]


def read_piece(piece: Piece, html_extractor: str, max_chars: int, batch_rows: int = 2048) -> Iterator[StageResult]:
    result = read_file(piece.file, html_extractor)
    too_long = pc.greater(pc.utf8_length(result.kept["text"]), max_chars)
    long_docs = result.kept.filter(too_long)
    yield StageResult(kept=result.kept.filter(pc.invert(too_long)),
                      rejected=pa.concat_tables([result.rejected, rejected_rows(long_docs, "ingest", "too_long")]))


def count_records(piece: Piece) -> int:
    r = read_file(piece.file)
    return r.kept.num_rows + r.rejected.num_rows

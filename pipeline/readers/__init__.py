"""Readers: input specs to files (`expand_inputs`, on the driver), files to pieces (`plan_pieces`),
and one piece to rows (`read_piece`, with `count_records` to check it).

`expand_inputs` is cheap (it stats paths and sniffs at most a few bytes or a header line), so a
missing path or unreadable format fails before any Ray work. `read_piece` returns every record of a
piece as kept documents or rejected ledger rows, in file order, deterministically.
"""
from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import InputSpec
from pipeline.ledger import StageResult
from pipeline.readers import csv
from pipeline.readers.base import InputError, InputFile, Piece
from pipeline.readers.html import get_extractor
from pipeline.readers.pieces import count_records, plan_pieces, read_piece
from pipeline.readers.streams import compression, read_head

__all__ = ["InputError", "InputFile", "Piece", "expand_inputs", "plan_pieces", "read_piece", "count_records",
           "read_file", "detect_format", "get_extractor"]

COMPRESSION_SUFFIXES = {".gz", ".zst", ".zstd"}
FORMAT_SUFFIXES = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv",
    ".txt": "text", ".md": "text", ".text": "text",
    ".warc": "warc", ".arc": "warc", ".wat": "warc", ".wet": "wet",
}


def source_name(name: str) -> str:
    """A file or folder name without its format and compression extensions: `a.jsonl.gz` -> `a`."""
    stem = name
    while (suffix := Path(stem).suffix.lower()) and (suffix in COMPRESSION_SUFFIXES or suffix in FORMAT_SUFFIXES):
        stem = stem[: -len(suffix)]
    return stem or name


def _format_by_name(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in COMPRESSION_SUFFIXES]
    return FORMAT_SUFFIXES.get(suffixes[-1]) if suffixes else None


def detect_format(path: str | Path, declared: str = "auto") -> str:
    """The reader for a file: declared, else sniffed from its first bytes (WARC, Parquet), else by extension."""
    path = Path(path)
    if declared != "auto":
        return declared
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
    except OSError as err:
        raise InputError(f"cannot read input {path}: {err}") from None
    if magic.startswith(b"PAR1"):
        return "parquet"
    head = read_head(path, 8) if compression(magic) else magic
    if head.startswith(b"WARC/"):
        return "wet" if ".wet" in [s.lower() for s in path.suffixes] else "warc"
    fmt = _format_by_name(path)
    if fmt is None:
        raise InputError(f"cannot determine the format of {path} from its name or first bytes; "
                         f"set `format:` on its input ({', '.join(sorted(set(FORMAT_SUFFIXES.values())))})")
    return fmt


def _check_readable(path: Path, fmt: str, spec: InputSpec) -> None:
    """Cheap checks that would otherwise reject every record: text column present, JSONL not a JSON array."""
    if fmt == "parquet":
        try:
            names = pq.read_schema(path).names
        except Exception as err:  # noqa: BLE001 - any footer error means the file cannot be read at all
            raise InputError(f"{path} is not a readable Parquet file: {err}") from None
        if spec.text_field not in names:
            raise InputError(f"{path}: no text column {spec.text_field!r} (columns: {names}); set `text_field`")
    elif fmt in ("csv", "tsv"):
        header = csv.first_line(str(path))
        if header is not None:
            names = csv.header_names(header, fmt)
            if spec.text_field not in names:
                raise InputError(f"{path}: no text column {spec.text_field!r} in its header {names}; set `text_field`")
    elif fmt == "jsonl" and read_head(path, 256).lstrip().startswith(b"["):
        raise InputError(f"{path} holds a JSON array, not JSON Lines (one object per line)")


def _glob_root(pattern: str) -> Path:
    """The folder above a pattern's first wildcard: derived ids name files relative to it."""
    parts = Path(pattern).parts
    fixed = parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return Path(*fixed) if fixed else Path(".")


def _resolve(spec: InputSpec) -> Iterator[tuple[Path, str, str]]:
    """(file, source, rel) for every file an input names, sorted."""
    path = Path(spec.path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise InputError(f"input folder {path} holds no files")
        source = spec.source or source_name(path.resolve().name)
        for p in files:
            yield p, source, p.relative_to(path).as_posix()
    elif path.is_file():
        yield path, spec.source or source_name(path.name), path.name
    elif glob.has_magic(spec.path):
        files = sorted(Path(p) for p in glob.glob(spec.path, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"input pattern {spec.path} matches no files")
        root = _glob_root(spec.path)
        for p in files:
            yield p, spec.source or source_name(p.name), p.relative_to(root).as_posix()
    else:
        raise InputError(f"input path does not exist: {spec.path}")


def expand_inputs(specs: list[InputSpec]) -> list[InputFile]:
    """Every input file, in spec order and sorted within a spec; raises `InputError` naming the path."""
    out: list[InputFile] = []
    seen: dict[str, str] = {}
    for spec in specs:
        for path, source, rel in _resolve(spec):
            key = str(path.resolve())
            if key in seen:
                raise InputError(f"input file {path} is listed twice (by {seen[key]!r} and {spec.path!r})")
            seen[key] = spec.path
            fmt = detect_format(path, spec.format)
            _check_readable(path, fmt, spec)
            out.append(InputFile(path=str(path), format=fmt, source=source, rel=rel, spec=spec))
    return out


def read_file(f: InputFile, html_extractor: str = "trafilatura", max_chars: int = sys.maxsize) -> StageResult:
    """All records of one file, read as one piece: kept documents and rejected rows, in file order."""
    results = list(read_piece(Piece(0, f), html_extractor, max_chars))
    return StageResult(kept=pa.concat_tables([r.kept for r in results]),
                       rejected=pa.concat_tables([r.rejected for r in results]))

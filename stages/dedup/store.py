"""What the dedup stages persist and read back: index folders, their fingerprints, candidates' texts.

An index folder (`hash_index/`, `band_index/`) holds Parquet parts and one JSON metadata file,
written last; a folder without it is unfinished and never read. A later run finds an earlier run's
index by name anywhere shallow inside that run's root, so the stage does not depend on where the
core places stage folders, and fingerprints it by content, so moving a run does not invalidate
work done against it while changing its index does.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from pipeline.rundir import atomic_write_bytes, file_digest, safe_join
from stages.dedup.keys import parts

META = "_index.json"  # leading underscore: Parquet dataset readers skip it
SEARCH_DEPTH = 3
CODE = Path(__file__).resolve().parent


def write_parquet(table: pa.Table, path: Path) -> None:
    """One Parquet file, written whole then renamed into place."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue())


def write_meta(folder: Path, meta: BaseModel) -> None:
    """An index's metadata file: written after every part, so its presence means the index is whole."""
    atomic_write_bytes(folder / META, meta.model_dump_json(indent=2).encode())


def find_index(run_root: str | Path, name: str) -> Path:
    """The one finished index folder called `name` in an earlier run (hidden folders are temporary)."""
    root = Path(run_root)
    found = [p for depth in range(SEARCH_DEPTH + 1) for p in sorted(root.glob("/".join(["*"] * depth + [name])))
             if (p / META).is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one finished {name}/ in {run_root}, found {len(found)}: {found}")
    return found[0]


def index_parts(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.parquet"))


def content_digest(folder: Path) -> str:
    """A hash of an index folder's file names and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(f"{path.name}\x00{file_digest(path)}\n".encode())
    return digest.hexdigest()[:16]


def stage_fingerprint(stage_file: str, settings: dict) -> str:
    """What a dedup stage's output depends on beyond its rows: its settings and its code."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in sorted(CODE.glob("*.py")) + [Path(stage_file)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class TextFiles:
    """Where the texts of keyed documents live: (level, file) -> a Parquet file with a `text` column.

    Level 0 is this run (file = piece index, path = the piece's kept rows); level n an earlier run,
    its paths resolved inside that run's root. Verification re-reads only candidates' rows.
    """

    paths: dict[tuple[int, int], str] = field(default_factory=dict)

    def add_run(self, level: int, root: Path, files: dict[int, str]) -> None:
        for number, relative in files.items():
            self.paths[(level, number)] = str(safe_join(root, relative))

    def texts(self, keys: Sequence[str]) -> list[str]:
        """The texts of these keys, in order, reading each file once."""
        where = pl.DataFrame({"key": pl.Series(keys, dtype=pl.String)}).with_row_index("i") \
            .with_columns(**{k: v for k, v in parts(pl.col("key")).items() if k in ("level", "file", "row")})
        out: list[str | None] = [None] * len(keys)
        for (level, number), group in where.group_by(["level", "file"], maintain_order=True):
            path = self.paths.get((level, number))
            if path is None:
                raise FileNotFoundError(f"no kept-rows file known for level {level} file {number}")
            column = pq.read_table(path, columns=["text"])["text"]
            for i, text in zip(group["i"].to_list(), column.take(pa.array(group["row"].to_list())).to_pylist()):
                out[i] = text
        return out

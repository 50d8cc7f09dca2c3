"""Rows as the core hands them to a shuffle stage, and a runner for a stage's `build` (dedup tests)."""
from __future__ import annotations

import gzip
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray import cloudpickle

from pipeline.config import parse_config
from pipeline.mailbox import directory, read
from pipeline.rundir import RunDir
from pipeline.schema import DECISION_SCHEMA
from pipeline.stage import DECIDED

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


def web_texts(shared: Path, n: int, min_words: int = 300) -> list[str]:
    texts = []
    for path in sorted((shared / "cc-web-docs").glob("*.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    return [t for t in texts if len(t.split()) > min_words][:n]


def edited(text: str, seed: int, fraction: float = 0.01) -> str:
    """The same text with a fraction of its words replaced."""
    words = text.split()
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(words), size=max(1, int(len(words) * fraction)), replace=False):
        words[i] = f"edit{seed}x{i}"
    return " ".join(words)


def rows_table(docs: list[tuple[str, str, str]], piece_size: int = 2,
               quality: list[float | None] | None = None) -> pa.Table:
    """(source, id, text) documents as the core hands them over, `piece_size` rows per piece."""
    n = len(docs)
    return pa.table({
        "source": [d[0] for d in docs], "id": [d[1] for d in docs],
        "text": pa.array([d[2] for d in docs], pa.large_string()),
        "quality_score": pa.array(quality or [None] * n, pa.float64()),
        "origin": [f"{d[0]}.jsonl:{i + 1}" for i, d in enumerate(docs)],
        "_piece": pa.array([i // piece_size for i in range(n)], pa.int32()),
        "_row": pa.array([i % piece_size for i in range(n)], pa.int32()),
    })


def write_pieces(root: Path, rows: pa.Table) -> pa.Table:
    """Write each piece's kept rows under RUN/pieces/ and add `_file`, as the core does."""
    files = []
    for piece in sorted(set(rows["_piece"].to_pylist())):
        part = rows.filter(pc.equal(rows["_piece"], piece))
        path = root / "pieces" / f"piece-{piece:05d}" / "kept.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part.select(["source", "id", "text"]), path)
        files += [str(path)] * part.num_rows
    return rows.append_column("_file", pa.array(files, pa.string()))


@dataclass(frozen=True)
class TableParts:
    """`Parts` over an in-memory table cut into `count` slices, as a stage's input without a run."""

    table: pa.Table
    count: int

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def read(self, part: int) -> pa.Table:
        size = -(-self.table.num_rows // self.count)
        return self.table.slice(part * size, size)


def run_stage(ray, module, root: Path, rows: pa.Table, blocks: int = 3, **dedup) -> pa.Table:
    """The stage's `build` on `rows` read in `blocks` parts (one Ray task each); the decisions it
    posted, sorted by row."""
    cfg = parse_config({"out": str(root), "dedup": dedup})
    workdir = root / "stages" / module.STAGE
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = RunDir.exchange(workdir)
    shutil.rmtree(scratch, ignore_errors=True)
    module.build(cfg, workdir)(TableParts(rows, blocks), scratch)
    out = [read(letters).cast(DECISION_SCHEMA) for letters in directory(scratch / DECIDED).values()]
    table = pa.concat_tables(out) if out else DECISION_SCHEMA.empty_table()
    return table.sort_by([("_piece", "ascending"), ("_row", "ascending")])


def fates(decisions: pa.Table, rows: pa.Table) -> dict[tuple[str, str], str]:
    """(source, id) -> reason for the rejected rows (first record of a repeated id wins the name)."""
    where = {(p, r): (s, i) for s, i, p, r in zip(rows["source"].to_pylist(), rows["id"].to_pylist(),
                                                   rows["_piece"].to_pylist(), rows["_row"].to_pylist())}
    return {where[(p, r)]: reason for p, r, reason in zip(decisions["_piece"].to_pylist(),
                                                           decisions["_row"].to_pylist(),
                                                           decisions["reason"].to_pylist())}

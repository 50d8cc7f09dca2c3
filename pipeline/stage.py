"""Running one ledger stage on Ray: skip if finished, build, write canonically, reconcile, commit.

A stage module supplies a pure batch function (unit-testable without Ray) and a `build` that wires
it into Ray Data, returning kept and rejected rows as one dataset (`pipeline.ledger.combine`).
This module writes that dataset hash-partitioned by document id into a fixed number of files,
each sorted by (source, id), so the bytes on disk never depend on worker or block counts.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import xxhash

from pipeline.config import SluiceConfig
from pipeline.ledger import StageCount, StageResult, combine, split
from pipeline.rundir import RunDir
from pipeline.schema import DOC_SCHEMA

log = logging.getLogger("sluice")

PART_COLUMN = "_part"
KEPT = "__kept__"


@dataclass
class StageContext:
    """What a stage's Ray wiring may use: the config, and its temporary folder for extra artifacts."""

    name: str
    config: SluiceConfig
    run: RunDir
    workdir: Path


Build = Callable[[ray.data.Dataset, StageContext], ray.data.Dataset]


def map_stage(fn: Callable[[pa.Table], StageResult], stage_name: str) -> Build:
    """Ray wiring for a row-local stage: apply the pure function to every batch."""

    def apply(batch: pa.Table) -> pa.Table:
        return combine(fn(batch))

    apply.__name__ = stage_name  # Ray Data names the operator after it, so the dashboard shows stages

    def build(ds: ray.data.Dataset, ctx: StageContext) -> ray.data.Dataset:
        return ds.map_batches(apply, batch_format="pyarrow")

    return build


def partition_of(ids: pa.Array | pa.ChunkedArray, partitions: int) -> pa.Array:
    return pa.array([xxhash.xxh64_intdigest(i.encode()) % partitions for i in ids.to_pylist()], pa.int32())


def sort_rows(table: pa.Table) -> pa.Table:
    return table.sort_by([("source", "ascending"), ("id", "ascending"), ("text", "ascending")])


def write_part(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


def _write_partitions(ds: ray.data.Dataset, workdir: Path, partitions: int) -> dict[str, int]:
    """Write kept/ and rejected/ as `partitions` sorted files each; return row counts by reason."""

    def tag(batch: pa.Table) -> pa.Table:
        return batch.append_column(PART_COLUMN, partition_of(batch["id"], partitions))

    def write_group(group: pa.Table) -> pa.Table:
        part = group[PART_COLUMN][0].as_py()
        result = split(sort_rows(group.drop_columns([PART_COLUMN])))
        write_part(result.kept, workdir / "kept" / f"part-{part:05d}.parquet")
        if result.rejected.num_rows:
            write_part(result.rejected, workdir / "rejected" / f"part-{part:05d}.parquet")
        reasons = Counter(result.rejected["reason"].to_pylist())
        reasons[KEPT] = result.kept.num_rows
        return pa.table({"reason": list(reasons), "n": list(reasons.values())})

    counts: Counter[str] = Counter()
    tagged = ds.map_batches(tag, batch_format="pyarrow")
    groups = tagged.groupby(PART_COLUMN, num_partitions=partitions)
    for row in groups.map_groups(write_group, batch_format="pyarrow").iter_rows():
        counts[row["reason"]] += row["n"]
    return dict(counts)


def read_stage(run: RunDir, name: str) -> ray.data.Dataset:
    """The kept rows of a finished stage, as the next stage's input."""
    files = sorted(str(p) for p in (run.stage_path(name) / "kept").glob("*.parquet"))
    if not files:
        return ray.data.from_arrow(DOC_SCHEMA.empty_table())
    return ray.data.read_parquet(files)


def run_stage(
    run: RunDir,
    name: str,
    fingerprint: str,
    build: Build,
    upstream: Callable[[], ray.data.Dataset],
    config: SluiceConfig,
    expected_inputs: int | None,
) -> StageCount:
    """Run (or skip) one stage and return its reconciled count."""
    done = run.finished(name, fingerprint)
    if done:
        log.info("stage %s: finished earlier, skipped", name)
        return StageCount.from_dict(done["count"])
    workdir = run.begin(name)
    ctx = StageContext(name=name, config=config, run=run, workdir=workdir)
    output = build(upstream(), ctx)
    if expected_inputs == 0:  # nothing to write, but the stage's side artifacts (indexes) still are
        output.materialize()
        counts = {}
    else:
        counts = _write_partitions(output, workdir, config.output.partitions)
    kept = counts.pop(KEPT, 0)
    total = kept + sum(counts.values())
    count = StageCount(stage=name, inputs=total if expected_inputs is None else expected_inputs,
                       kept=kept, rejected=counts)
    count.check()
    run.commit(name, workdir, {"fingerprint": fingerprint, "count": count.to_dict()})
    log.info("stage %s: %d in, %d kept, %d rejected", name, count.inputs, kept, count.rejected_total)
    return count

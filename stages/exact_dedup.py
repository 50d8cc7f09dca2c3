"""Exact dedup: a 128-bit hash of the cleaned text; the smallest (source, id) of each hash is kept.

On Ray, rows are partitioned by hash bucket, so no worker ever holds all hashes, and each bucket is
deduplicated by the same pure function that the unit tests call on a plain table.

The kept documents' hashes persist as `hash_index/bucket-NNNNN.parquet` in the stage folder. With
`dedup.exact.against: <earlier run>`, each bucket also reads that run's index: a new document whose
text an earlier run already kept is rejected as its duplicate, and the index written is the union.
"""
from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import xxhash

from pipeline.ledger import StageResult, combine, rejected_rows
from pipeline.stage import StageContext, write_part

STAGE = "exact_dedup"
HASH = "_text_hash"
BUCKET = "_hash_bucket"
BUCKETS = 64
SHUFFLE_PARTITIONS = 8  # reduce tasks; buckets spread over them
INDEX_DIR = "hash_index"
INDEX_SCHEMA = pa.schema([("hash", pa.string()), ("source", pa.string()), ("id", pa.string())])


def text_hashes(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    return pa.array([xxhash.xxh3_128_hexdigest(t.encode()) for t in text.to_pylist()], pa.string())


def dedup(batch: pa.Table, stage: str = STAGE, seen: pa.Table | None = None) -> StageResult:
    """Keep the smallest (source, id) per text hash; reject the rest as `exact_duplicate` of it.

    `seen` (hash, source, id) lists documents kept by earlier runs: they win every tie. A batch
    tagged with `_text_hash` keeps that column on its kept rows, for the caller's hash index.
    """
    hashes = batch[HASH] if HASH in batch.column_names else text_hashes(batch["text"])
    new = pl.DataFrame({"h": pl.Series(hashes.to_pylist(), dtype=pl.String),
                        "source": batch["source"].to_pylist(), "id": batch["id"].to_pylist()}).with_row_index("row")
    old = pl.from_arrow(seen if seen is not None else INDEX_SCHEMA.empty_table()).rename({"hash": "h"})
    order = (
        pl.concat([new.with_columns(old=pl.lit(False)),
                   old.with_columns(row=pl.lit(None, pl.UInt32), old=pl.lit(True))], how="diagonal")
        .sort(["h", "old", "source", "id"], descending=[False, True, False, False])
        .with_columns(keeper=pl.col("id").first().over("h"), rank=pl.int_range(pl.len()).over("h"))
        .filter(~pl.col("old"))
    )
    docs = batch.drop_columns([BUCKET]) if BUCKET in batch.column_names else batch
    kept_rows = pa.array(order.filter(pl.col("rank") == 0)["row"].sort().to_list(), pa.int64())
    dups = order.filter(pl.col("rank") > 0).sort("row")
    rejected = rejected_rows(docs.take(pa.array(dups["row"].to_list(), pa.int64())), stage, "exact_duplicate",
                             "same text hash as the kept document", duplicate_of=dups["keeper"].to_list())
    return StageResult(kept=docs.take(kept_rows), rejected=rejected)


def bucket_file(index_dir: Path, bucket: int) -> Path:
    return index_dir / f"bucket-{bucket:05d}.parquet"


def _tag(batch: pa.Table) -> pa.Table:
    hashes = text_hashes(batch["text"])
    buckets = pa.array([int(h[:8], 16) % BUCKETS for h in hashes.to_pylist()], pa.int32())
    return batch.append_column(HASH, hashes).append_column(BUCKET, buckets)


def _read_index(path: Path) -> pa.Table | None:
    return pq.read_table(path, schema=INDEX_SCHEMA) if path.is_file() else None


def build(ds: ray.data.Dataset, ctx: StageContext) -> ray.data.Dataset:
    against = ctx.config.dedup.exact.against
    old_dir = Path(against) / "stages" / STAGE / INDEX_DIR if against else None
    if old_dir is not None and not old_dir.is_dir():
        raise FileNotFoundError(f"dedup.exact.against: no exact-dedup hash index in {against}")
    new_dir = ctx.workdir / INDEX_DIR
    new_dir.mkdir()
    if old_dir is not None:  # buckets this run adds nothing to keep their old index as it is
        for f in sorted(old_dir.glob("bucket-*.parquet")):
            os.link(f, new_dir / f.name)

    def exact_dedup(group: pa.Table) -> pa.Table:
        bucket = group[BUCKET][0].as_py()
        seen = _read_index(bucket_file(old_dir, bucket)) if old_dir else None
        result = dedup(group, ctx.name, seen)
        kept = pa.table({"hash": result.kept[HASH], "source": result.kept["source"], "id": result.kept["id"]},
                        schema=INDEX_SCHEMA)
        result.kept = result.kept.drop_columns([HASH])
        index = pa.concat_tables([seen, kept]) if seen is not None else kept
        target = bucket_file(new_dir, bucket)
        target.unlink(missing_ok=True)  # a hard link to the old index: never write through it
        write_part(index.sort_by([("hash", "ascending"), ("source", "ascending"), ("id", "ascending")]), target)
        return combine(result)

    return ds.map_batches(_tag, batch_format="pyarrow").groupby(BUCKET, num_partitions=SHUFFLE_PARTITIONS).map_groups(
        exact_dedup, batch_format="pyarrow")

"""Exact dedup: a 128-bit hash of the cleaned text; the smallest (source, id) of each hash is kept.

On Ray, rows are partitioned by hash bucket, so no worker ever holds all hashes, and each bucket is
deduplicated by the same pure function that the unit tests call on a plain table.
"""
from __future__ import annotations

import polars as pl
import pyarrow as pa
import ray
import xxhash

from pipeline.ledger import StageResult, combine, rejected_rows
from pipeline.stage import StageContext

STAGE = "exact_dedup"
HASH = "_text_hash"
BUCKET = "_hash_bucket"
BUCKETS = 64
SHUFFLE_PARTITIONS = 8  # reduce tasks; buckets spread over them


def text_hashes(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    return pa.array([xxhash.xxh3_128_hexdigest(t.encode()) for t in text.to_pylist()], pa.string())


def dedup(batch: pa.Table, stage: str = STAGE) -> StageResult:
    """Keep the smallest (source, id) per text hash; reject the rest as `exact_duplicate` of it."""
    hashes = batch[HASH] if HASH in batch.column_names else text_hashes(batch["text"])
    order = (
        pl.DataFrame({"h": pl.Series(hashes.to_pylist(), dtype=pl.String),
                      "source": batch["source"].to_pylist(), "id": batch["id"].to_pylist()})
        .with_row_index("row")
        .sort(["h", "source", "id"])
        .with_columns(keeper=pl.col("id").first().over("h"), rank=pl.int_range(pl.len()).over("h"))
    )
    docs = batch.drop_columns([c for c in (HASH, BUCKET) if c in batch.column_names])
    kept_rows = pa.array(order.filter(pl.col("rank") == 0)["row"].sort().to_list(), pa.int64())
    dups = order.filter(pl.col("rank") > 0).sort("row")
    rejected = rejected_rows(docs.take(pa.array(dups["row"].to_list(), pa.int64())), stage, "exact_duplicate",
                             "same text hash as the kept document", duplicate_of=dups["keeper"].to_list())
    return StageResult(kept=docs.take(kept_rows), rejected=rejected)


def _tag(batch: pa.Table) -> pa.Table:
    hashes = text_hashes(batch["text"])
    buckets = pa.array([int(h[:8], 16) % BUCKETS for h in hashes.to_pylist()], pa.int32())
    return batch.append_column(HASH, hashes).append_column(BUCKET, buckets)


def build(ds: ray.data.Dataset, ctx: StageContext) -> ray.data.Dataset:
    def exact_dedup(bucket: pa.Table) -> pa.Table:
        return combine(dedup(bucket, ctx.name))

    return ds.map_batches(_tag, batch_format="pyarrow").groupby(BUCKET, num_partitions=SHUFFLE_PARTITIONS).map_groups(
        exact_dedup, batch_format="pyarrow")

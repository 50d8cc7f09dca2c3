"""Duplicate ids (interim, replaced by the dedup branch)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import polars as pl
import pyarrow as pa
import ray

from pipeline.config import SluiceConfig
from pipeline.fingerprint import code_digest, digest

STAGE = "duplicate_ids"
READS = ("source", "id", "origin")


def process(rows: pa.Table) -> pa.Table:
    df = pl.from_arrow(rows.select(["source", "id", "origin", "_piece", "_row"])).sort(["source", "id", "_piece", "_row"])
    df = df.with_columns(first=pl.col("origin").first().over(["source", "id"]),
                         rank=pl.int_range(pl.len()).over(["source", "id"]))
    dup = df.filter(pl.col("rank") > 0)
    return pa.table({"_piece": dup["_piece"].to_arrow().cast(pa.int32()), "_row": dup["_row"].to_arrow().cast(pa.int32()),
                     "reason": pa.array(["duplicate_id"] * dup.height, pa.string()),
                     "detail": pa.array([f"id already used by {o}" for o in dup["first"].to_list()], pa.string())})


def build(cfg: SluiceConfig, workdir: Path):
    def run(ds: ray.data.Dataset) -> ray.data.Dataset:
        table = pa.concat_tables(ray.get(ds.to_arrow_refs())) if ds.count() else None
        return ray.data.from_arrow(process(table)) if table is not None and table.num_rows else ray.data.from_items([]).limit(0)
    return run


def fingerprint(cfg: SluiceConfig) -> str:
    return digest(code_digest(__name__))

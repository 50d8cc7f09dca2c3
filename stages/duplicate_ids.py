"""Duplicate ids: within one source, a second record with an id already seen is rejected.

Identity is (source, id): two sources may share ids, one source may not. The first record (smallest
`_piece`, `_row`, i.e. first in input order) is processed normally; every later one is rejected as
`duplicate_id`, its detail naming where the first came from (`origin`: file and line, byte offset
or row). Only (source, id, origin, _piece, _row) move through the shuffle, to a box per hash of
(source, id).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import polars as pl
import pyarrow as pa

from pipeline.config import SluiceConfig
from pipeline.mailbox import BOX, Parts, boxes_for, deliver, scatter
from pipeline.schema import DECISION_SCHEMA
from pipeline.stage import post_decisions
from stages.dedup.store import stage_fingerprint

STAGE = "duplicate_id"
READS: tuple[str, ...] = ("source", "id", "origin")
REASON = "duplicate_id"
ROWS_PER_BOX = 200_000  # (source, id, origin, row key) rows one task holds at most, about 20 MB
ROUTING_SEED = 20240601  # polars' hash is stable within one polars version: enough inside one run


def process(rows: pa.Table) -> pa.Table:
    """Decisions for every record whose (source, id) an earlier record (in input order) already has."""
    ident = ["source", "id"]
    df = pl.from_arrow(rows.select([*ident, "origin", "_piece", "_row"])).sort([*ident, "_piece", "_row"])
    df = df.with_columns(first=pl.col("origin").first().over(ident), rank=pl.int_range(pl.len()).over(ident))
    df = df.filter(pl.col("rank") > 0).sort(["_piece", "_row"])
    detail = pl.concat_str([pl.lit("id already used by the record at "), pl.col("first").fill_null("?")])
    out = df.select("_piece", "_row", reason=pl.lit(REASON), detail=detail, duplicate_of="id",
                    duplicate_of_source="source", cluster_id=pl.lit(None, pl.String))
    return out.to_arrow().cast(DECISION_SCHEMA)


def _route(rows: pa.Table, boxes: int) -> pa.Table:
    df = pl.from_arrow(rows.select(["source", "id", "origin", "_piece", "_row"]))
    box = pl.concat_str(["source", pl.lit("\x00"), "id"]).hash(ROUTING_SEED) % boxes
    return df.with_columns(box.cast(pl.String).alias(BOX)).to_arrow()


def _decide(letters: pa.Table, box: str, scratch: Path) -> int:
    return post_decisions(process(letters), scratch, box)


def build(cfg: SluiceConfig, workdir: Path) -> Callable[[Parts, Path], None]:
    def duplicate_ids(rows: Parts, scratch: Path) -> None:
        scatter(rows, functools.partial(_route, boxes=boxes_for(rows.rows, ROWS_PER_BOX)), scratch / "ids")
        deliver(scratch / "ids", functools.partial(_decide, scratch=scratch))

    return duplicate_ids


def fingerprint(cfg: SluiceConfig) -> str:
    """No settings: only the code decides."""
    return stage_fingerprint(__file__, {})

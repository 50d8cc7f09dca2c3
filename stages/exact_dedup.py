"""Exact dedup: a 128-bit hash of the cleaned text; one keeper per hash, by the `dedup.keep` policy.

Rows become (key, hash, bucket) next to where they are read, so only those small columns move
through the shuffle (`pipeline.mailbox`, each box a share of the buckets); each hash bucket is
deduplicated by the same pure function the unit tests call on a plain table. Keys sort in keeper
order (`stages.dedup.keys`), so a bucket's decisions cannot depend on worker or box counts.

The kept documents' hashes persist as `hash_index/bucket-NNNNN.parquet` (hash, source, id). With
`dedup.exact.against: <earlier run>`, each bucket also reads that run's index: a new document whose
text an earlier run already kept is rejected as its duplicate, and the index written is the union
(buckets this run adds nothing to are hard links to the earlier files).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from pipeline.config import KeepPolicy, Section, SluiceConfig
from pipeline.mailbox import BOX, Parts, boxes_for, deliver, scatter
from pipeline.stage import post_decisions
from stages.dedup.keys import decisions, doc_keys, old_keys, parts
from stages.dedup.store import META, content_digest, find_index, stage_fingerprint, write_meta, write_parquet

STAGE = "exact_dedup"
READS: tuple[str, ...] = ("source", "id", "text", "quality_score")
REASON = "exact_duplicate"
DETAIL = "same text hash (xxh3-128) as the kept document"
INDEX_DIR = "hash_index"
HASH_NAME = "xxh3-128"
BUCKETS = 64
ROWS_PER_BOX = 200_000  # (key, hash) rows one task holds at most; never more boxes than buckets
HASH = "hash"
BUCKET = "_bucket"
INDEX_SCHEMA = pa.schema([(HASH, pa.string()), ("source", pa.string()), ("id", pa.string())])
TAG_SCHEMA = pa.schema([("key", pa.string()), (HASH, pa.string()), (BUCKET, pa.int32())])


class HashIndexMeta(Section):
    """`hash_index/_index.json`: what must match for an earlier index to be read."""

    hash: str = HASH_NAME
    buckets: int = BUCKETS


@dataclass
class Outcome:
    decisions: pa.Table  # DECISION_SCHEMA
    index: pa.Table  # INDEX_SCHEMA: earlier documents plus this run's keepers


def tag(rows: pa.Table, keep: KeepPolicy) -> pa.Table:
    """The small columns that travel: key (keeper order and location), text hash, hash bucket."""
    text = pc.fill_null(rows["text"], "").to_pylist()
    hashes = [xxhash.xxh3_128_hexdigest(t.encode()) for t in text]
    buckets = np.array([int(h[:8], 16) % BUCKETS for h in hashes], np.int32)
    return pa.table([doc_keys(rows, keep), pa.array(hashes, pa.string()), buckets], schema=TAG_SCHEMA)


def dedupe(tagged: pa.Table, seen: pa.Table | None = None) -> Outcome:
    """Keep the smallest key per hash; reject the rest as `exact_duplicate` of it.

    `seen` (hash, source, id) lists documents kept by earlier runs: their keys sort first.
    """
    seen = seen if seen is not None else INDEX_SCHEMA.empty_table()
    old = pl.DataFrame({HASH: seen[HASH].to_pylist(), "key": old_keys(seen["source"], seen["id"], [0] * seen.num_rows,
                                                                        [0] * seen.num_rows, level=1).to_pylist()},
                       schema={HASH: pl.String, "key": pl.String})
    ranked = pl.concat([old, pl.from_arrow(tagged.select([HASH, "key"]))]).sort([HASH, "key"]) \
        .with_columns(root=pl.col("key").first().over(HASH))
    edges = ranked.filter(pl.col("key") != pl.col("root")).select(node="key", root="root").to_arrow()
    keepers = ranked.filter(pl.col("key") == pl.col("root"))
    index = keepers.select(HASH, **{k: v for k, v in parts(pl.col("key")).items() if k in ("source", "id")})
    return Outcome(decisions(edges, REASON, DETAIL, with_cluster=False), index.to_arrow().cast(INDEX_SCHEMA))


def process(rows: pa.Table, keep: KeepPolicy = "first", seen: pa.Table | None = None) -> Outcome:
    """The whole stage on one in-memory table (columns source, id, text, _piece, _row; quality_score)."""
    return dedupe(tag(rows, keep), seen)


def bucket_file(index_dir: Path, bucket: int) -> Path:
    return index_dir / f"bucket-{bucket:05d}.parquet"


def earlier_index(against: str) -> Path:
    """An earlier run's hash index, after checking it hashes and buckets as this code does."""
    folder = find_index(against, INDEX_DIR)
    meta = HashIndexMeta.model_validate_json((folder / META).read_text())
    if meta != HashIndexMeta():
        raise ValueError(f"hash index {folder} was built with {meta}, this run uses {HashIndexMeta()}")
    return folder


def _tag_for_box(rows: pa.Table, keep: KeepPolicy, boxes: int) -> pa.Table:
    tagged = tag(rows, keep)
    return tagged.append_column(BOX, pc.cast(pc.remainder(tagged[BUCKET], boxes), pa.string()))


def _dedupe_box(tagged: pa.Table, box: str, old_dir: Path | None, new_dir: Path, scratch: Path) -> int:
    """Each hash bucket of one box, against the earlier index's bucket file when there is one; the
    bucket's index file written, its decisions posted."""
    decided = []
    for bucket in sorted(pc.unique(tagged[BUCKET]).to_pylist()):
        group = tagged.filter(pc.equal(tagged[BUCKET], bucket))
        old_file = bucket_file(old_dir, bucket) if old_dir else None
        seen = pq.read_table(old_file, schema=INDEX_SCHEMA) if old_file and old_file.is_file() else None
        outcome = dedupe(group, seen)
        # the written file replaces a hard link to the earlier index's file, never writes through it
        write_parquet(outcome.index.sort_by([(HASH, "ascending"), ("source", "ascending"), ("id", "ascending")]),
                      bucket_file(new_dir, bucket))
        decided.append(outcome.decisions)
    return post_decisions(pa.concat_tables(decided), scratch, box)


def build(cfg: SluiceConfig, workdir: Path) -> Callable[[Parts, Path], None]:
    keep = cfg.dedup.keep
    old_dir = earlier_index(cfg.dedup.exact.against) if cfg.dedup.exact.against else None
    new_dir = workdir / INDEX_DIR

    def exact_dedup(rows: Parts, scratch: Path) -> None:
        new_dir.mkdir(parents=True, exist_ok=True)
        if old_dir is not None:  # buckets this run adds nothing to keep their earlier file as it is
            for f in sorted(old_dir.glob("bucket-*.parquet")):
                (new_dir / f.name).unlink(missing_ok=True)  # a retried attempt finds its own links
                os.link(f, new_dir / f.name)
        boxes = min(BUCKETS, boxes_for(rows.rows, ROWS_PER_BOX))
        scatter(rows, functools.partial(_tag_for_box, keep=keep, boxes=boxes), scratch / "hashes")
        deliver(scratch / "hashes", functools.partial(_dedupe_box, old_dir=old_dir, new_dir=new_dir, scratch=scratch))
        write_meta(new_dir, HashIndexMeta())  # last: the index is complete once its metadata exists

    return exact_dedup


def fingerprint(cfg: SluiceConfig) -> str:
    """Config section (without the `against` path), keep policy, the earlier index's content, the code."""
    exact = cfg.dedup.exact
    digest = content_digest(earlier_index(exact.against)) if exact.against else None
    return stage_fingerprint(__file__, {"exact": exact.model_dump(mode="json", exclude={"against"}),
                                        "keep": cfg.dedup.keep, "against": digest})

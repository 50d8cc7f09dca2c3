"""MinHash LSH: bands x rows chosen for recall at the threshold, band hashing, candidate pairs per bucket.

A bucket is one (band, band_hash) value. Small buckets yield every member pair; a large bucket
yields one edge per member to its smallest member instead (quadratic in its size otherwise), so
the edge count stays linear in the number of band rows.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import polars as pl
import pyarrow as pa

from stages.dedup.minhash import FMIX64, POLY, U64, _fmix

BAND_ROW_SCHEMA = pa.schema([("band", pa.int32()), ("band_hash", pa.uint64()), ("key", pa.string())])
EDGE_SCHEMA = pa.schema([("node", pa.string()), ("root", pa.string())])
# Buckets up to this size yield every member pair; larger ones only their star edges.
ALL_PAIRS_UP_TO = 32
# Candidate probability a pair at exactly the threshold must reach when bands x rows are derived.
MIN_RECALL = 0.95


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int, bands: int | None = None, rows: int | None = None,
               recall: float = MIN_RECALL) -> tuple[int, int]:
    """(bands, rows): the hand-set pair when given, else the pair that makes a pair of Jaccard
    `threshold` a candidate with probability >= `recall` while sending the fewest pairs below the
    threshold to verification (least area under the S-curve on [0, threshold]).

    Candidates are verified exactly, so pairs below the threshold cost only time, while a true pair
    that never becomes a candidate is lost: recall at the threshold is the constraint.
    """
    if bands is not None and rows is not None:
        return bands, rows
    grid = np.linspace(0.0, threshold, 201)
    best: tuple[float, int, int] | None = None
    for r in range(1, num_perm + 1):
        for b in range(1, num_perm // r + 1):
            if collision_probability(threshold, b, r) < recall:
                continue
            waste = float(np.trapezoid(collision_probability(grid, b, r), grid))
            if best is None or waste < best[0]:
                best = (waste, b, r)
    if best is None:
        raise ValueError(f"no bands x rows <= {num_perm} reach recall {recall} at threshold {threshold}")
    return best[1], best[2]


def collision_probability(s: np.ndarray | float, bands: int, rows: int) -> np.ndarray | float:
    """P(two docs of Jaccard s share at least one bucket) = 1 - (1 - s^r)^b."""
    return 1 - (1 - np.asarray(s, float) ** rows) ** bands


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: band i hashes values [i*r, (i+1)*r), the ranges datasketch's LSH uses."""
    values = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(U64)
    h = np.zeros(values.shape[:2], U64)
    for j in range(rows):
        h = h * U64(POLY) + values[:, :, j] + U64(1)
    return _fmix(h, FMIX64, U64)


def band_rows(keys: pa.Array | pa.ChunkedArray, hashes: np.ndarray) -> pa.Table:
    """One row per (doc, band) from (n, bands) band hashes: the LSH index's rows, doc-major."""
    n, bands = hashes.shape
    return pa.table([pa.array(np.tile(np.arange(bands, dtype=np.int32), n)), pa.array(hashes.reshape(-1)),
                     keys.take(pa.array(np.repeat(np.arange(n), bands)))], schema=BAND_ROW_SCHEMA)


def candidate_pairs(rows: pa.Table, wanted: pl.Expr | None = None) -> pa.Table:
    """Candidate edges (node, root), node > root, of the buckets with more than one member, deduplicated.

    In buckets of up to ALL_PAIRS_UP_TO members, every pair (a star to the smallest member alone
    would lose members similar to each other but not to it); in larger buckets, each member's edge
    to the smallest member. `wanted` (a polars predicate on `node` and `root`) drops pairs not worth
    verifying, such as two documents both known from an earlier run.
    """
    df = pl.from_arrow(rows.select(["band", "band_hash", "key"]))
    df = df.with_columns(size=pl.len().over(["band", "band_hash"])).filter(pl.col("size") > 1)
    star = df.filter(pl.col("size") > ALL_PAIRS_UP_TO)
    roots = star.group_by(["band", "band_hash"]).agg(root=pl.col("key").min())
    small = df.filter(pl.col("size") <= ALL_PAIRS_UP_TO).select("band", "band_hash", "key")
    pairs = pl.concat([
        star.join(roots, on=["band", "band_hash"]).select(node="key", root="root"),
        small.join(small.rename({"key": "root"}), on=["band", "band_hash"]).select(node="key", root="root"),
    ]).filter(pl.col("node") > pl.col("root"))
    if wanted is not None:
        pairs = pairs.filter(wanted)
    return pairs.unique().sort(["node", "root"]).to_arrow().cast(EDGE_SCHEMA)

"""MinHash LSH: bands x rows from datasketch's optimiser, band hashing, star edges per bucket.

A bucket is one (band, band_hash) value. Instead of every pair in a bucket (quadratic in its size),
each member gets one edge to the bucket's smallest member: the connected components are the same,
and the edge count stays linear in the number of band rows.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
from datasketch.lsh import _optimal_param

from stages.minhash import FMIX64, POLY, U64, _fmix

BAND_ROW_SCHEMA = pa.schema([("band", pa.int32()), ("band_hash", pa.uint64()), ("key", pa.string())])
EDGE_SCHEMA = pa.schema([("node", pa.string()), ("root", pa.string())])
# Buckets up to this size have every member pair verified; larger ones only their star edges.
VERIFY_ALL_PAIRS_UP_TO = 32


def lsh_params(threshold: float, num_perm: int, bands: int | None = None, rows: int | None = None) -> tuple[int, int]:
    """(bands, rows): the hand-set pair when given, else datasketch's optimum for the threshold."""
    if bands is not None and rows is not None:
        return bands, rows
    b, r = _optimal_param(threshold, num_perm, 0.5, 0.5)
    return int(b), int(r)


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


def band_rows(keys: pa.Array | pa.ChunkedArray, signatures: np.ndarray, bands: int, rows: int) -> pa.Table:
    """One row per (doc, band): the LSH index's rows, doc-major."""
    hashes = band_hashes(signatures, bands, rows)
    return pa.table(
        [pa.array(np.tile(np.arange(bands, dtype=np.int32), len(signatures))),
         pa.array(hashes.reshape(-1)),
         pa.array(np.repeat(np.asarray(keys.to_pylist(), dtype=object), bands), pa.string())],
        schema=BAND_ROW_SCHEMA,
    )


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise fraction of equal signature values: the MinHash estimate of Jaccard similarity."""
    return (a == b).mean(axis=1)


def star_edges(rows: pa.Table, signatures: np.ndarray | None = None, known: np.ndarray | None = None,
               threshold: float | None = None) -> pa.Table:
    """Candidate edges of the buckets with more than one member, deduplicated.

    Unverified: each member's edge to its bucket's smallest member. With `signatures` (one per
    row of `rows`) and `threshold`: in buckets of up to VERIFY_ALL_PAIRS_UP_TO members, every pair
    whose signatures estimate a Jaccard of at least the threshold (a star to the smallest member
    alone would lose members similar to each other but not to it); in larger buckets, the verified
    star edges. Rows where `known` is False have no signature (a document known only from an
    earlier run's band index); their edges are kept unverified. The caller reduces the verified
    pairs to a star forest (`stages.components.local_components`), keeping the edge count linear.
    """
    df = pl.from_arrow(rows.select(["band", "band_hash", "key"])).with_row_index("row")
    df = df.with_columns(size=pl.len().over(["band", "band_hash"])).filter(pl.col("size") > 1)
    verify = signatures is not None and threshold is not None
    star = df.filter(pl.col("size") > VERIFY_ALL_PAIRS_UP_TO) if verify else df
    roots = star.sort("key").group_by(["band", "band_hash"]).agg(
        root=pl.col("key").first(), root_row=pl.col("row").first())
    edges = star.join(roots, on=["band", "band_hash"]).filter(pl.col("key") != pl.col("root"))
    if verify:
        small = df.filter(pl.col("size") <= VERIFY_ALL_PAIRS_UP_TO).select("band", "band_hash", "key", "row")
        pairs = small.join(small.rename({"key": "root", "row": "root_row"}), on=["band", "band_hash"])
        edges = pl.concat([edges.select(pairs.columns), pairs.filter(pl.col("key") > pl.col("root"))])
        a, b = edges["row"].to_numpy(), edges["root_row"].to_numpy()
        unknown = np.zeros(len(a), bool) if known is None else ~(known[a] & known[b])
        edges = edges.filter(pl.Series(unknown | (estimated_jaccard(signatures[a], signatures[b]) >= threshold)))
    out = edges.select(node="key", root="root").unique().sort(["node", "root"])
    return out.to_arrow().cast(EDGE_SCHEMA)

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
    """Edges (member, smallest member) of every bucket with more than one member, deduplicated.

    With `signatures` (one per row of `rows`) and `threshold`, edges whose two signatures estimate a
    Jaccard below the threshold are dropped. Rows where `known` is False have no signature (a doc
    known only from an earlier run's band index); their edges are kept unverified.
    """
    df = pl.from_arrow(rows.select(["band", "band_hash", "key"])).with_row_index("row")
    roots = (
        df.sort("key")
        .group_by(["band", "band_hash"])
        .agg(root=pl.col("key").first(), root_row=pl.col("row").first(), size=pl.len())
        .filter(pl.col("size") > 1)
    )
    edges = df.join(roots, on=["band", "band_hash"]).filter(pl.col("key") != pl.col("root"))
    if signatures is not None and threshold is not None and edges.height:
        a = signatures[edges["row"].to_numpy()]
        b = signatures[edges["root_row"].to_numpy()]
        unknown = np.zeros(len(a), bool) if known is None else ~(
            known[edges["row"].to_numpy()] & known[edges["root_row"].to_numpy()])
        edges = edges.filter(pl.Series(unknown | (estimated_jaccard(a, b) >= threshold)))
    out = edges.select(node="key", root="root").unique().sort(["node", "root"])
    return out.to_arrow().cast(EDGE_SCHEMA)

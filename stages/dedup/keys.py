"""Document keys whose string order is keeper order, and the decisions built from keeper edges.

A key is one string per document:

    ORIGIN  RANK      SOURCE \\0 ID \\0 LEVEL FILE       ROW
    "0"/"1" 16 hex    ...        ...    3 dig 10 digits 10 digits

ORIGIN "0" marks a document an earlier run already kept (it can no longer be rejected, so it wins
every tie), "1" a document of this run. RANK encodes the keeper policy (`dedup.keep`), then
(source, id) breaks ties, then the row's location (which file, which row) makes every key unique
even when one source repeats an id. So the smallest key of a group is its keeper, whatever the
worker or block count, and every key names its own row: LEVEL 0 is this run (FILE is the piece
index), LEVEL n >= 1 the n-th earlier run of an `against` chain.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from pipeline.config import KeepPolicy
from pipeline.schema import DECISION_SCHEMA

OLD, NEW = "0", "1"
RANK_WIDTH = 16
NO_RANK = "0" * RANK_WIDTH
LEVEL_DIGITS, FILE_DIGITS, ROW_DIGITS = 3, 10, 10
LOC_WIDTH = LEVEL_DIGITS + FILE_DIGITS + ROW_DIGITS
QUALITY = "quality_score"


def _descending(values: np.ndarray) -> list[str]:
    """Fixed-width hex strings that sort by descending float64 value; NaN sorts last."""
    bits = (-values).view(np.uint64)
    ordered = np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))
    return ["f" * RANK_WIDTH if np.isnan(v) else f"{o:016x}" for v, o in zip(values, ordered)]


def ranks(rows: pa.Table, keep: KeepPolicy) -> list[str] | str:
    """The RANK part of each row's key under the keeper policy (one shared string for `first`)."""
    if keep == "first":
        return NO_RANK
    if keep == "longest":
        return _descending(np.asarray(pc.utf8_length(pc.fill_null(rows["text"], "")), np.float64))
    scores = rows[QUALITY] if QUALITY in rows.column_names else pa.nulls(rows.num_rows, pa.float64())
    return _descending(np.asarray(pc.fill_null(scores.cast(pa.float64()), np.nan), np.float64))


def make_keys(rank: list[str] | str, source, ids, files, rows, origin: str = NEW, level: int = 0) -> pa.Array:
    """Keys from their parts (Arrow or Python sequences of equal length; `rank` may be one string)."""
    types = {"source": pl.String, "id": pl.String, "file": pl.Int64, "row": pl.Int64}
    frame = pl.DataFrame([pl.Series(name, values).cast(types[name])
                          for name, values in zip(types, (source, ids, files, rows))])
    rank_col = pl.lit(rank) if isinstance(rank, str) else pl.Series(rank, dtype=pl.String)
    digits = lambda col, n: pl.col(col).cast(pl.String).str.zfill(n)  # noqa: E731
    key = pl.concat_str([pl.lit(origin), rank_col, "source", pl.lit("\x00"), "id", pl.lit("\x00"),
                         pl.lit(f"{level:0{LEVEL_DIGITS}d}"), digits("file", FILE_DIGITS), digits("row", ROW_DIGITS)])
    return frame.select(key).to_series().to_arrow().cast(pa.string())


def doc_keys(rows: pa.Table, keep: KeepPolicy) -> pa.Array:
    """Keys of this run's rows (columns source, id, _piece, _row, and what the policy ranks by)."""
    return make_keys(ranks(rows, keep), rows["source"], rows["id"], rows["_piece"], rows["_row"])


def old_keys(source, ids, files, rows, level: int) -> pa.Array:
    """Keys of documents an earlier run kept: they sort before every new document."""
    return make_keys(NO_RANK, source, ids, files, rows, origin=OLD, level=level)


def parts(key: pl.Expr) -> dict[str, pl.Expr]:
    """Polars expressions for the parts of a key column: source, id, level, file, row."""
    body = key.str.slice(1 + RANK_WIDTH).str.head(-(LOC_WIDTH + 1)).str.splitn("\x00", 2)
    loc = key.str.tail(LOC_WIDTH)
    return {
        "source": body.struct.field("field_0"),
        "id": body.struct.field("field_1"),
        "level": loc.str.slice(0, LEVEL_DIGITS).cast(pl.Int32),
        "file": loc.str.slice(LEVEL_DIGITS, FILE_DIGITS).cast(pl.Int32),
        "row": loc.str.slice(LEVEL_DIGITS + FILE_DIGITS, ROW_DIGITS).cast(pl.Int32),
    }


def cluster_ids(roots: pl.Series) -> pa.Array:
    """A stable id per cluster: the hash of its keeper's (source, id)."""
    root = parts(pl.col("root"))
    ident = pl.DataFrame({"root": roots}).select(source=root["source"], id=root["id"])
    return pa.array([xxhash.xxh64_hexdigest(f"{s}\x00{i}".encode()) for s, i in ident.iter_rows()], pa.string())


def decisions(edges: pa.Table, reason: str, detail: str, with_cluster: bool = True) -> pa.Table:
    """Decisions, in row order, for every node of this run in (node, root) edges whose root is its keeper."""
    node, root = parts(pl.col("node")), parts(pl.col("root"))
    df = pl.from_arrow(edges.select(["node", "root"])).filter(pl.col("node").str.starts_with(NEW)).select(
        "root", _piece=node["file"], _row=node["row"], duplicate_of=root["id"], duplicate_of_source=root["source"],
    ).sort(["_piece", "_row"])
    n = df.height
    return pa.table({
        "_piece": df["_piece"].to_arrow(), "_row": df["_row"].to_arrow(),
        "reason": pa.array([reason] * n, pa.string()), "detail": pa.array([detail] * n, pa.string()),
        "duplicate_of": df["duplicate_of"].to_arrow(), "duplicate_of_source": df["duplicate_of_source"].to_arrow(),
        "cluster_id": cluster_ids(df["root"]) if with_cluster else pa.nulls(n, pa.string()),
    }).cast(DECISION_SCHEMA)

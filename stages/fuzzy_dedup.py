"""Fuzzy dedup: MinHash LSH candidates, connected components, one keeper per cluster.

Every document gets a sort key that orders documents the way keepers are chosen: earlier-run
documents first (they are already curated), then the highest `quality_score` when that column
exists, then the smallest (source, id). Components are rooted at their smallest key, so the root
is the keeper and every other member is rejected as its `near_duplicate`; the result cannot depend
on worker or block counts. The band index of the kept corpus is written as Parquet next to the
stage output, so a later run with `against:` can reject documents that near-match it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray
import xxhash

from pipeline.config import FuzzyDedupConfig, SluiceConfig
from pipeline.ledger import StageResult, combine, rejected_rows
from pipeline.rundir import atomic_write_json
from pipeline.stage import StageContext, write_part
from stages.components import PART, by_partition, distributed_components, local_components
from stages.lsh import EDGE_SCHEMA, band_rows, lsh_params, star_edges
from stages.minhash import MinHashParams, signatures

STAGE = "fuzzy_dedup"
REASON = "near_duplicate"
INDEX_DIR = "band_index"
INDEX_PARAMS = "_params.json"  # leading underscore: Parquet readers skip it
INDEX_SCHEMA = pa.schema([("band", pa.int32()), ("band_hash", pa.uint64()), ("id", pa.string())])
SHINGLE_HASH = "poly64-fmix64-v1"  # bump when the shingle or band hash changes: old indexes then refuse to load
QUALITY = "quality_score"
OLD, NEW = "0", "1"  # key prefixes: earlier-run documents sort (and so are kept) first
SIG = "_sig"
DECISION_SCHEMA = pa.schema([("id", pa.string()), ("duplicate_of", pa.string()), ("cluster_id", pa.string())])
# Up to this many candidate edges, `clustering: auto` collects them on the driver.
AUTO_LOCAL_EDGES = 2_000_000


@dataclass(frozen=True)
class Settings:
    """The resolved fuzzy-dedup parameters (bands and rows worked out from the threshold)."""

    minhash: MinHashParams
    bands: int
    rows: int
    threshold: float
    verify: bool
    backend: str

    @classmethod
    def from_config(cls, cfg: FuzzyDedupConfig) -> "Settings":
        bands, rows = lsh_params(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows)
        return cls(MinHashParams.from_config(cfg), bands, rows, cfg.threshold, cfg.verify, cfg.backend)

    def index_meta(self) -> dict:
        """What must match for an earlier run's band index to be comparable with this run's."""
        return {**asdict(self.minhash), "bands": self.bands, "rows": self.rows, "shingle_hash": SHINGLE_HASH}


def _quality_rank(scores: pa.ChunkedArray | pa.Array) -> list[str]:
    """Fixed-width strings that sort by descending score; missing or NaN scores sort last."""
    values = np.asarray(pc.fill_null(scores.cast(pa.float64()), np.nan), np.float64)
    bits = (-values).view(np.uint64)
    ordered = np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))
    return ["z" * 16 if np.isnan(v) else f"{o:016x}" for v, o in zip(values, ordered)]


def doc_keys(batch: pa.Table) -> pa.Array:
    """NEW + quality rank + source + NUL + id: string order is keeper order (sources contain no NUL)."""
    rank = _quality_rank(batch[QUALITY]) if QUALITY in batch.column_names else [""] * batch.num_rows
    frame = pl.DataFrame({"rank": rank, "source": batch["source"].to_pylist(), "id": batch["id"].to_pylist()},
                         schema={"rank": pl.String, "source": pl.String, "id": pl.String})
    return frame.select(pl.concat_str([pl.lit(NEW), "rank", "source", pl.lit("\x00"), "id"]))\
        .to_series().to_arrow().cast(pa.string())


def key_id(key: pl.Expr) -> pl.Expr:
    """The document id inside a key: everything after its first NUL."""
    return key.str.splitn("\x00", 2).struct.field("field_1")


def _with_partition(rows: pa.Table, partitions: int) -> pa.Table:
    part = (np.asarray(rows["band_hash"]) % np.uint64(partitions)).astype(np.int32)
    return rows.append_column(PART, pa.array(part))


def doc_band_rows(batch: pa.Table, settings: Settings, partitions: int) -> pa.Table:
    """The band rows of a batch of documents, each carrying its doc's signature when verifying."""
    sigs = signatures(batch["text"], settings.minhash, settings.backend)
    rows = band_rows(doc_keys(batch), sigs, settings.bands, settings.rows)
    if not settings.verify:
        return _with_partition(rows, partitions)
    packed = np.repeat(sigs, settings.bands, axis=0)
    sig = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * sigs.shape[1]), len(packed),
                                               [None, pa.py_buffer(packed.tobytes())])
    return _with_partition(rows.append_column(SIG, sig), partitions)


def old_band_rows(index: pa.Table, settings: Settings, partitions: int) -> pa.Table:
    """An earlier run's band index as band rows of known-good documents without signatures."""
    keys = pl.from_arrow(index.select(["id"])).select(pl.concat_str([pl.lit(OLD + "\x00"), "id"])).to_series()
    rows = pa.table({"band": index["band"].cast(pa.int32()), "band_hash": index["band_hash"].cast(pa.uint64()),
                     "key": keys.to_arrow().cast(pa.string())})
    if settings.verify:
        rows = rows.append_column(SIG, pa.nulls(index.num_rows, pa.binary(4 * settings.minhash.num_perm)))
    return _with_partition(rows, partitions)


def bucket_edges(rows: pa.Table, settings: Settings) -> pa.Table:
    """A star forest spanning the (verified, when configured) candidate pairs of the buckets that
    hold at least one new document: as few edges as nodes, whatever the bucket sizes."""
    df = pl.from_arrow(rows.select(["band", "band_hash", "key"]))
    wanted = df.select(pl.col("key").str.starts_with(NEW).any().over(["band", "band_hash"])).to_series()
    rows = rows.filter(wanted.to_arrow())
    if not settings.verify:
        return local_components(star_edges(rows))
    width = settings.minhash.num_perm
    sig = rows[SIG].combine_chunks() if rows.num_rows else pa.array([], pa.binary(4 * width))
    known = np.asarray(sig.is_valid(), bool)
    filled = pc.fill_null(sig, pa.scalar(bytes(4 * width), sig.type)).buffers()[1]
    sigs = np.frombuffer(filled, np.uint32, rows.num_rows * width, sig.offset * 4 * width).reshape(-1, width)
    return local_components(star_edges(rows, sigs, known, settings.threshold))


def decisions(components: pa.Table) -> pa.Table:
    """(id, duplicate_of, cluster_id) for every new document that is not its cluster's keeper."""
    df = pl.from_arrow(components.select(["node", "root"])).filter(pl.col("node").str.starts_with(NEW))
    roots = df["root"].to_list()
    return pa.table({
        "id": df.select(key_id(pl.col("node"))).to_series().to_arrow().cast(pa.string()),
        "duplicate_of": df.select(key_id(pl.col("root"))).to_series().to_arrow().cast(pa.string()),
        "cluster_id": pa.array([xxhash.xxh64_hexdigest(r.encode()) for r in roots], pa.string()),
    }, schema=DECISION_SCHEMA)


def mark(batch: pa.Table, rejected: pa.Table, stage: str = STAGE) -> StageResult:
    """Split a batch into kept rows and rows rejected by the `decisions` table."""
    where = pc.index_in(batch["id"], value_set=rejected["id"])
    hit = pc.is_valid(where)
    picks = where.filter(hit)
    return StageResult(
        kept=batch.filter(pc.invert(hit)),
        rejected=rejected_rows(batch.filter(hit), stage, REASON,
                               duplicate_of=rejected["duplicate_of"].take(picks),
                               cluster_id=rejected["cluster_id"].take(picks)),
    )


def index_rows(rows: pa.Table, rejected: pa.Table) -> pa.Table:
    """The band index of the kept corpus: earlier-run rows plus the new rows not rejected."""
    df = pl.from_arrow(rows.select(["band", "band_hash", "key"])).with_columns(id=key_id(pl.col("key")))
    new = pl.col("key").str.starts_with(NEW)
    dropped = pl.Series(rejected["id"].to_pylist(), dtype=pl.String)
    keep = df.filter(~new | ~pl.col("id").is_in(dropped.implode()))
    return keep.select(["band", "band_hash", "id"]).sort(["band", "band_hash", "id"]).to_arrow().cast(INDEX_SCHEMA)


def dedup_table(table: pa.Table, cfg: FuzzyDedupConfig, stage: str = STAGE,
                old_index: pa.Table | None = None) -> tuple[StageResult, pa.Table]:
    """The whole stage on one in-memory table, without Ray: (result, new band index)."""
    settings = Settings.from_config(cfg)
    rows = doc_band_rows(table, settings, 1)
    if old_index is not None:
        rows = pa.concat_tables([rows, old_band_rows(old_index, settings, 1)])
    rejected = decisions(local_components(bucket_edges(rows, settings)))
    return mark(table, rejected, stage), index_rows(rows, rejected)


def find_band_index(run_root: str | Path) -> Path:
    """The band index folder a finished run's fuzzy-dedup stage left behind."""
    found = [p for p in sorted((Path(run_root) / "stages").glob(f"*fuzzy*/{INDEX_DIR}"))
             if not p.parent.name.startswith(".") and (p / INDEX_PARAMS).is_file()]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one finished fuzzy-dedup band index under {run_root}/stages, "
                                f"found {len(found)}")
    return found[0]


def index_files(index_dir: Path, settings: Settings) -> list[str]:
    """The index's Parquet files, after checking it was built with this run's parameters."""
    meta = json.loads((index_dir / INDEX_PARAMS).read_text())
    diff = {k: (meta.get(k), v) for k, v in settings.index_meta().items() if meta.get(k) != v}
    if diff:
        raise ValueError(f"band index {index_dir} was built with other parameters (theirs, ours): {diff}")
    return sorted(str(p) for p in index_dir.glob("*.parquet"))


def _collect(ds: ray.data.Dataset, schema: pa.Schema) -> pa.Table:
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables]) if tables else schema.empty_table()


def _rejections(edges: ray.data.Dataset, clustering: str, partitions: int) -> pa.Table:
    n_edges = edges.count()
    if n_edges == 0:
        return DECISION_SCHEMA.empty_table()
    if clustering == "union_find" or (clustering == "auto" and n_edges <= AUTO_LOCAL_EDGES):
        return decisions(local_components(_collect(edges, EDGE_SCHEMA)))
    components = distributed_components(edges, partitions)
    return _collect(components.map_batches(decisions, batch_format="pyarrow"), DECISION_SCHEMA)


def _write_index(rows: ray.data.Dataset, rejected: pa.Table, folder: Path, meta: dict, partitions: int) -> None:
    def write(group: pa.Table) -> pa.Table:
        part = group[PART][0].as_py()
        write_part(index_rows(group, rejected), folder / f"part-{part:05d}.parquet")
        return pa.table({"part": [part]})

    folder.mkdir(parents=True, exist_ok=True)
    by_partition(rows, partitions).map_groups(write, batch_format="pyarrow").materialize()
    atomic_write_json(folder / INDEX_PARAMS, meta)


def build(ds: ray.data.Dataset, ctx: StageContext) -> ray.data.Dataset:
    """Ray wiring: band rows -> bucket edges -> components -> decisions applied to every row."""
    cfg = ctx.config.dedup.fuzzy
    settings = Settings.from_config(cfg)
    partitions = ctx.config.output.partitions
    rows = ds.map_batches(doc_band_rows, fn_kwargs={"settings": settings, "partitions": partitions},
                          batch_format="pyarrow")
    if cfg.against:
        files = index_files(find_band_index(cfg.against), settings)
        if files:
            old = ray.data.read_parquet(files).map_batches(
                old_band_rows, fn_kwargs={"settings": settings, "partitions": partitions}, batch_format="pyarrow")
            rows = rows.union(old)
    rows = rows.materialize()
    edges = by_partition(rows, partitions).map_groups(bucket_edges, fn_kwargs={"settings": settings},
                                          batch_format="pyarrow").materialize()
    rejected = _rejections(edges, cfg.clustering, partitions)
    _write_index(rows, rejected, ctx.workdir / INDEX_DIR, settings.index_meta(), partitions)

    def fuzzy_dedup(batch: pa.Table) -> pa.Table:
        return combine(mark(batch, rejected, ctx.name))

    return ds.map_batches(fuzzy_dedup, batch_format="pyarrow")


def configure(cfg: SluiceConfig, threshold: float | None = None, num_perm: int | None = None,
              ngram: int | None = None) -> SluiceConfig:
    """A copy of `cfg` with the CLI's fuzzy-dedup overrides applied and validated."""
    updates = {k: v for k, v in {"threshold": threshold, "num_perm": num_perm, "ngram": ngram}.items()
               if v is not None}
    fuzzy = FuzzyDedupConfig.model_validate({**cfg.dedup.fuzzy.model_dump(), **updates})
    return cfg.model_copy(update={"dedup": cfg.dedup.model_copy(update={"fuzzy": fuzzy})})

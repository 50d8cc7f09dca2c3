"""Fuzzy dedup: MinHash LSH candidates, verified by exact shingle-set Jaccard, one keeper per cluster.

`threshold` is a true Jaccard of word (or character) n-gram sets. Bands x rows are chosen so a
pair at the threshold becomes a candidate with probability >= 0.95; every candidate pair is then
verified on the exact Jaccard of the two documents' shingle sets. A new document's set is built
with its signature, from the same shingle hashes, and kept in the stage's folder until
verification reads it; an earlier run's document has its set rebuilt from its text. Verified
pairs form a graph whose connected components are clusters; components are rooted at their
smallest key, and keys sort in keeper order (`stages.dedup.keys`), so the root is the keeper and
every other member of this run is rejected as its `near_duplicate`, whatever the worker or block
count.

Only small columns move, never texts: band rows (key, band, band hash) to their buckets, and
candidate pairs to the file of their node. Band rows, pairs and sets go through files in the
stage's folder (`stages.dedup.mailbox`), not through Ray's object store; verification reads only
the sets its pairs name, from memory-mapped letters.

The kept documents' band hashes persist in `band_index/` with each document's (source, id) and
where its text lives (piece file relative to the run root, row). With `dedup.fuzzy.against`, a
later run reads that index, and the indexes it was itself checked against (`parent`), and verifies
a match against an earlier document exactly like one inside the batch.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipeline.config import FuzzyDedupConfig, KeepPolicy, Section, SluiceConfig
from pipeline.runtime import releasing_memory
from pipeline.schema import DECISION_SCHEMA
from stages.dedup.components import distributed_components, local_components
from stages.dedup.jaccard import from_blob, jaccard, shingle_sets, signatures_and_sets, to_blobs
from stages.dedup.keys import NEW, decisions, doc_keys, old_keys, parts
from stages.dedup.mailbox import BOX, deliver, pick, post, sender_name
from stages.dedup import lsh
from stages.dedup.lsh import EDGE_SCHEMA, band_hashes, candidate_pairs, lsh_params
from stages.dedup.minhash import MinHashParams, signatures
from stages.dedup.store import (META, TextFiles, content_digest, find_index, index_parts, stage_fingerprint,
                                write_meta, write_parquet)

STAGE = "fuzzy_dedup"
READS: tuple[str, ...] = ("source", "id", "text", "quality_score")
REASON = "near_duplicate"
INDEX_DIR = "band_index"
SCRATCH = ".exchange"  # the stage's mailboxes (sets, band rows, pairs, index rows), removed when it ends
SHINGLE_HASH = "poly64-fmix64-v1"  # bump when the shingle or band hash changes: old indexes then refuse to load
PARTITIONS = 8  # shuffle partitions and index parts; fixed, so the index never depends on workers
# Documents of an earlier run whose shingle sets are rebuilt at once: the hashing's temporaries are
# many times the text (see stages.dedup.minhash.SIGNATURE_BATCH for the measured trade-off).
HASH_BATCH = 512
# Up to this many verified edges, `clustering: auto` finds components on the driver.
AUTO_LOCAL_EDGES = 2_000_000
HASHES = "band_hashes"
SETS = "shingles"
SKETCH_SCHEMA = pa.schema([("key", pa.string()), ("_piece", pa.int32()), ("_file", pa.string()),
                           (HASHES, pa.list_(pa.uint64()))])
INDEX_SCHEMA = pa.schema([("source", pa.string()), ("id", pa.string()), ("file", pa.int32()), ("row", pa.int32()),
                          (HASHES, pa.list_(pa.uint64()))])


@dataclass(frozen=True)
class Settings:
    """The resolved fuzzy-dedup parameters (bands and rows worked out from the threshold)."""

    minhash: MinHashParams
    bands: int
    rows: int
    threshold: float
    verify: bool
    backend: str
    keep: KeepPolicy

    @classmethod
    def from_config(cls, cfg: FuzzyDedupConfig, keep: KeepPolicy = "first") -> "Settings":
        bands, rows = lsh_params(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows)
        return cls(MinHashParams.from_config(cfg), bands, rows, cfg.threshold, cfg.verify, cfg.backend, keep)

    def index_params(self) -> dict:
        """What must match for an earlier run's band index to be comparable with this run's."""
        return {**asdict(self.minhash), "bands": self.bands, "rows": self.rows, "shingle_hash": SHINGLE_HASH}

    @property
    def detail(self) -> str:
        unit = "character" if self.minhash.char_ngrams else "word"
        return f"{unit} {self.minhash.ngram}-gram Jaccard >= {self.threshold} with a member of its cluster"


class IndexMeta(Section):
    """`band_index/_index.json`: written last, read before any part of the index."""

    params: dict
    files: dict[int, str]  # file number (piece index) -> kept-rows Parquet file, relative to the run root
    parent: str | None = None  # the run this one was checked against, relative to this run's root


# ---------------------------------------------------------------- pure steps (no Ray)

def sketch(rows: pa.Table, settings: Settings) -> pa.Table:
    """Per document: its key, its file, and its band hashes; with `verify`, also its shingle set
    (column SETS), built from the same hashes as the signature."""
    if settings.verify:
        sigs, sets = signatures_and_sets(rows["text"], settings.minhash, settings.backend)
    else:
        sigs = signatures(rows["text"], settings.minhash, settings.backend)
    hashes = band_hashes(sigs, settings.bands, settings.rows)
    flat = pa.array(hashes.reshape(-1), pa.uint64())
    offsets = pa.array(np.arange(0, len(flat) + 1, settings.bands, dtype=np.int32))
    files = rows["_file"] if "_file" in rows.column_names else pa.nulls(rows.num_rows, pa.string())
    docs = pa.table([doc_keys(rows, settings.keep), rows["_piece"], files, pa.ListArray.from_arrays(offsets, flat)],
                    names=SKETCH_SCHEMA.names).cast(SKETCH_SCHEMA)
    return docs.append_column(SETS, to_blobs(sets)) if settings.verify else docs


def band_rows(docs: pa.Table) -> pa.Table:
    """One row per (document, band)."""
    flat = np.asarray(pc.list_flatten(docs[HASHES]), np.uint64)
    hashes = flat.reshape(docs.num_rows, len(flat) // max(docs.num_rows, 1))  # every document has `bands` hashes
    return lsh.band_rows(docs["key"], hashes)


def old_docs(index: pa.Table, level: int) -> pa.Table:
    """An earlier run's index rows as documents keyed before every new one."""
    n = index.num_rows
    return pa.table([old_keys(index["source"], index["id"], index["file"], index["row"], level),
                     pa.nulls(n, pa.int32()), pa.nulls(n, pa.string()), index[HASHES]],
                    names=SKETCH_SCHEMA.names).cast(SKETCH_SCHEMA)


def bucket_pairs(rows: pa.Table) -> pa.Table:
    """Candidate pairs of the buckets in `rows` that involve at least one new document."""
    return candidate_pairs(rows, wanted=pl.col("node").str.starts_with(NEW))


def jaccards(pairs: pa.Table, sets: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([jaccard(sets[a], sets[b]) for a, b in zip(pairs["node"].to_pylist(), pairs["root"].to_pylist())])


def verified(pairs: pa.Table, sets: dict[str, np.ndarray], threshold: float) -> pa.Table:
    """The pairs whose exact shingle-set Jaccard reaches the threshold."""
    if pairs.num_rows == 0:
        return pairs
    return pairs.filter(pa.array(jaccards(pairs, sets) >= threshold))


def index_table(docs: pa.Table, rejected: pa.Table) -> pa.Table:
    """The band index rows of this run's documents not rejected, sorted by location."""
    df = pl.from_arrow(docs.select(["key", HASHES])).with_columns(**parts(pl.col("key")))
    dropped = pl.from_arrow(rejected.select(["_piece", "_row"])).rename({"_piece": "file", "_row": "row"})
    kept = df.join(dropped, on=["file", "row"], how="anti").sort(["file", "row"])
    return kept.select(["source", "id", "file", "row", HASHES]).to_arrow().cast(INDEX_SCHEMA)


@dataclass
class Outcome:
    decisions: pa.Table  # DECISION_SCHEMA
    index: pa.Table  # INDEX_SCHEMA: the kept documents of this run


def process(rows: pa.Table, settings: Settings, earlier: "Earlier | None" = None) -> Outcome:
    """The whole stage on one in-memory table (columns source, id, text, _piece, _row; quality_score
    for the quality policy), against an earlier run's index when given."""
    docs = sketch(rows, settings)
    everything = docs.select(SKETCH_SCHEMA.names)
    if earlier is not None:
        everything = pa.concat_tables([everything, earlier.docs()])
    pairs = bucket_pairs(band_rows(everything))
    if settings.verify:
        keys = sorted(set(pairs["node"].to_pylist()) | set(pairs["root"].to_pylist()))
        blobs = dict(zip(docs["key"].to_pylist(), docs[SETS].to_pylist()))
        sets = {k: from_blob(blobs[k]) for k in keys if k in blobs}
        old = [k for k in keys if k not in blobs]
        if old:
            sets.update(rebuilt_sets(old, earlier.files, settings.minhash))
        pairs = verified(pairs, sets, settings.threshold)
    rejected = decisions(local_components(pairs), REASON, settings.detail)
    return Outcome(rejected, index_table(docs, rejected))


# ---------------------------------------------------------------- earlier runs

@dataclass
class Earlier:
    """An `against` chain: the index folders of the earlier run and of the runs it was checked against."""

    folders: list[Path]  # level 1, 2, ...
    files: TextFiles

    @classmethod
    def load(cls, run_root: str | Path, settings: Settings) -> "Earlier":
        folders, files, root, seen = [], TextFiles(), Path(run_root).resolve(), set()
        while root is not None:
            if root in seen:
                raise ValueError(f"dedup.fuzzy.against: the chain of earlier runs from {run_root} loops at {root}")
            seen.add(root)
            folder = find_index(root, INDEX_DIR)
            meta = IndexMeta.model_validate_json((folder / META).read_text())
            diff = {k: (meta.params.get(k), v) for k, v in settings.index_params().items() if meta.params.get(k) != v}
            if diff:
                raise ValueError(f"band index {folder} was built with other parameters (theirs, ours): {diff}")
            folders.append(folder)
            files.add_run(len(folders), root, meta.files)
            root = (root / meta.parent).resolve() if meta.parent is not None else None
        return cls(folders, files)

    def parts(self) -> list[dict]:
        """Every index part of the chain with its level."""
        return [{"path": path, "level": level} for level, folder in enumerate(self.folders, 1)
                for path in index_parts(folder)]

    def docs(self) -> pa.Table:
        return _read_old_docs(pa.Table.from_pylist(self.parts(), schema=PART_LIST_SCHEMA))

    def digest(self) -> str:
        return "+".join(content_digest(f) for f in self.folders)


PART_LIST_SCHEMA = pa.schema([("path", pa.string()), ("level", pa.int64())])


def _read_old_docs(part_list: pa.Table) -> pa.Table:
    """The documents of the listed index parts (columns path, level)."""
    tables = [old_docs(pq.read_table(path, schema=INDEX_SCHEMA), level)
              for path, level in zip(part_list["path"].to_pylist(), part_list["level"].to_pylist())]
    return pa.concat_tables(tables) if tables else SKETCH_SCHEMA.empty_table()


def rebuilt_sets(keys: list[str], files: TextFiles, params: MinHashParams) -> dict[str, np.ndarray]:
    """Earlier runs' documents' shingle sets, their texts re-read (each file once) and hashed
    HASH_BATCH documents at a time, the hashing's temporaries being many times the text."""
    texts = files.texts(keys)
    sets: dict[str, np.ndarray] = {}
    for i in range(0, len(keys), HASH_BATCH):
        sets.update(zip(keys[i:i + HASH_BATCH], shingle_sets(texts[i:i + HASH_BATCH], params)))
    return sets


# ---------------------------------------------------------------- Ray wiring

def _file_box(column: str) -> pl.Expr:
    """The mailbox of the file that holds the document in `column`, so one task reads each file."""
    loc = parts(pl.col(column))
    return pl.format("{}-{}", loc["level"], loc["file"]).alias(BOX)


def _post_band_rows(docs: pa.Table, mailbox: Path) -> pa.Table:
    """Each document's band rows, posted to the bucket partition of their band hash."""
    rows = pl.from_arrow(band_rows(docs)).with_columns((pl.col("band_hash") % PARTITIONS).cast(pl.String).alias(BOX))
    return post(rows.to_arrow(), mailbox, sender_name(docs, ["key"]))


def _sketch(rows: pa.Table, settings: Settings, mailbox: Path) -> pa.Table:
    """A batch's sketches; with `verify`, their shingle sets are posted to the box of their file,
    where verification picks the ones it needs, and leave the table."""
    docs = sketch(rows, settings)
    if not settings.verify:
        return docs
    post(pl.from_arrow(docs.select(["key", SETS])).with_columns(_file_box("key")).to_arrow(), mailbox,
         sender_name(docs, ["key"]))
    return docs.drop_columns([SETS])


def _pairs_by_node_file(rows: pa.Table) -> pa.Table:
    """A bucket partition's candidate pairs, each routed to the file of its node."""
    return pl.from_arrow(bucket_pairs(rows)).with_columns(_file_box("node")).to_arrow()


@dataclass(frozen=True)
class SetSource:
    """Where verification finds a candidate's shingle set: a new document's among the letters the
    sketch step posted, an earlier run's rebuilt from its text."""

    letters: Path
    files: TextFiles
    params: MinHashParams

    def sets(self, keys: list[str]) -> dict[str, np.ndarray]:
        where = pl.DataFrame({"key": pl.Series(keys, dtype=pl.String)}) \
            .with_columns(_file_box("key"), old=parts(pl.col("key"))["level"] > 0)
        old = where.filter(pl.col("old"))["key"].to_list()
        sets = rebuilt_sets(old, self.files, self.params) if old else {}
        for (box,), group in where.filter(~pl.col("old")).group_by(BOX):
            found = pick(self.letters / box, "key", group["key"].to_arrow())
            sets.update(zip(found["key"].to_pylist(), map(from_blob, found[SETS].to_pylist())))
        return sets


def _verify(pairs: pa.Table, source: SetSource, threshold: float) -> pa.Table:
    """One box's candidate pairs that reach the threshold, with only the sets they name read."""
    pairs = pl.from_arrow(pairs.select(["node", "root"])).unique().sort(["node", "root"]).to_arrow()
    keys = pl.concat([pl.from_arrow(pairs["node"]), pl.from_arrow(pairs["root"])]).unique().sort().to_list()
    return verified(pairs, source.sets(keys), threshold)


def _collect(ds: ray.data.Dataset, schema: pa.Schema) -> pa.Table:
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables]) if tables else schema.empty_table()


def _clusters(edges: ray.data.Dataset, clustering: str, detail: str) -> ray.data.Dataset:
    """Decisions from verified edges: union-find on the driver when few, else large-star/small-star."""
    n_edges = edges.count()
    if clustering == "union_find" or (clustering == "auto" and n_edges <= AUTO_LOCAL_EDGES):
        return ray.data.from_arrow(decisions(local_components(_collect(edges, EDGE_SCHEMA)), REASON, detail))
    if n_edges == 0:
        return ray.data.from_arrow(DECISION_SCHEMA.empty_table())
    components = distributed_components(edges, PARTITIONS)
    return components.map_batches(decisions, fn_kwargs={"reason": REASON, "detail": detail}, batch_format="pyarrow")


_INDEX_ROW = pa.schema([("key", pa.string()), (HASHES, pa.list_(pa.uint64())), ("_piece", pa.int32()),
                        ("_row", pa.int32()), ("_drop", pa.bool_()), (BOX, pa.string())])


def _post_index_rows(batch: pa.Table, mailbox: Path) -> pa.Table:
    """Documents (key, band hashes) or rejections (_piece, _row) in one schema, posted to the index
    part of their piece."""
    n, docs = batch.num_rows, "key" in batch.column_names
    rows = pa.table({
        "key": batch["key"] if docs else pa.nulls(n, pa.string()),
        HASHES: batch[HASHES] if docs else pa.nulls(n, pa.list_(pa.uint64())),
        "_piece": batch["_piece"], "_row": pa.nulls(n, pa.int32()) if docs else batch["_row"],
        "_drop": pa.array([not docs] * n, pa.bool_()),
        BOX: pc.cast(pc.remainder(batch["_piece"], PARTITIONS), pa.string()),
    }).cast(_INDEX_ROW)
    return post(rows, mailbox, sender_name(batch, ["key"] if docs else ["_piece", "_row"]))


def _write_index_part(rows: pa.Table, folder: Path) -> pa.Table:
    """One part of the band index: its pieces' documents less the rejected ones."""
    drop = rows["_drop"]
    part = rows["_piece"][0].as_py() % PARTITIONS
    write_parquet(index_table(rows.filter(pc.invert(drop)), rows.filter(drop)), folder / f"part-{part:05d}.parquet")
    return pa.table({"part": [part]})


def _write_index(docs: ray.data.Dataset, rejected: ray.data.Dataset, mailbox: Path, folder: Path,
                 meta: IndexMeta) -> None:
    """The band index of the documents this run keeps: one part per partition, then the metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    for rows, columns in ((docs, ["key", HASHES, "_piece"]), (rejected, ["_piece", "_row"])):
        rows.select_columns(columns).map_batches(_post_index_rows, fn_kwargs={"mailbox": mailbox},
                                                 batch_format="pyarrow").materialize()
    deliver(mailbox, _write_index_part, pa.schema([("part", pa.int64())]), folder=folder)
    write_meta(folder, meta)


def _piece_files(docs: ray.data.Dataset, run_root: Path) -> dict[int, str]:
    """This run's piece files, relative to the run root (they must lie inside it)."""

    def distinct(batch: pa.Table) -> pa.Table:
        return pl.from_arrow(batch.select(["_piece", "_file"])).unique().to_arrow()

    pairs = docs.select_columns(["_piece", "_file"]).map_batches(distinct, batch_format="pyarrow").take_all()
    files = {}
    for row in pairs:
        path = Path(row["_file"]).resolve()
        if run_root != path and run_root not in path.parents:
            raise ValueError(f"kept-rows file {path} lies outside the run root {run_root}")
        files[int(row["_piece"])] = str(path.relative_to(run_root))
    return dict(sorted(files.items()))


def build(cfg: SluiceConfig, workdir: Path) -> Callable[[ray.data.Dataset], ray.data.Dataset]:
    """Ray wiring: sketches -> band buckets -> candidate pairs -> exact verification -> components."""
    fuzzy = cfg.dedup.fuzzy
    settings = Settings.from_config(fuzzy, cfg.dedup.keep)
    run_root = Path(cfg.out).resolve()
    earlier = Earlier.load(fuzzy.against, settings) if fuzzy.against else None

    def fuzzy_dedup(ds: ray.data.Dataset) -> ray.data.Dataset:
        scratch = workdir / SCRATCH
        docs = ds.map_batches(releasing_memory(_sketch), fn_kwargs={"settings": settings, "mailbox": scratch / SETS},
                              batch_format="pyarrow").materialize()
        own = _piece_files(docs, run_root)
        posted = [docs]
        files = TextFiles()
        files.add_run(0, run_root, own)
        if earlier is not None and earlier.parts():
            files.paths.update(earlier.files.paths)
            # listing the parts and reading them in a map: ray.data.read_parquet costs seconds per call
            posted.append(ray.data.from_items(earlier.parts()).map_batches(_read_old_docs, batch_format="pyarrow"))
        for sketches in posted:
            sketches.map_batches(_post_band_rows, fn_kwargs={"mailbox": scratch / "bands"},
                                 batch_format="pyarrow").materialize()
        if settings.verify:
            deliver(scratch / "bands", _pairs_by_node_file, forward_to=scratch / "pairs")
            edges = deliver(scratch / "pairs", _verify, EDGE_SCHEMA, threshold=settings.threshold,
                            source=SetSource(scratch / SETS, files, settings.minhash))
        else:
            edges = deliver(scratch / "bands", bucket_pairs, EDGE_SCHEMA)
        rejected = _clusters(edges, fuzzy.clustering, settings.detail).materialize()
        parent = os.path.relpath(Path(fuzzy.against).resolve(), run_root) if fuzzy.against else None
        _write_index(docs, rejected, scratch / "index", workdir / INDEX_DIR,
                     IndexMeta(params=settings.index_params(), files=own, parent=parent))
        shutil.rmtree(scratch, ignore_errors=True)
        return rejected

    return fuzzy_dedup


def fingerprint(cfg: SluiceConfig) -> str:
    """Config section (without the `against` path), keep policy, the against chain's content, the code."""
    fuzzy = cfg.dedup.fuzzy
    earlier = Earlier.load(fuzzy.against, Settings.from_config(fuzzy, cfg.dedup.keep)) if fuzzy.against else None
    return stage_fingerprint(__file__, {"fuzzy": fuzzy.model_dump(mode="json", exclude={"against"}),
                                        "keep": cfg.dedup.keep, "against": earlier.digest() if earlier else None})


def configure(cfg: SluiceConfig, threshold: float | None = None, num_perm: int | None = None,
              ngram: int | None = None) -> SluiceConfig:
    """A copy of `cfg` with the CLI's fuzzy-dedup overrides applied and validated."""
    updates = {k: v for k, v in {"threshold": threshold, "num_perm": num_perm, "ngram": ngram}.items()
               if v is not None}
    fuzzy = FuzzyDedupConfig.model_validate({**cfg.dedup.fuzzy.model_dump(), **updates})
    return cfg.model_copy(update={"dedup": cfg.dedup.model_copy(update={"fuzzy": fuzzy})})

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
candidate pairs to the file of their node. Band rows, pairs, sets, edges and index rows go through
files in the stage's scratch folder (`pipeline.mailbox`), not through Ray's object store;
verification reads only the sets its pairs name, from memory-mapped letters.

The kept documents' band hashes persist in `band_index/` with each document's (source, id) and
where its text lives (piece file relative to the run root, row). With `dedup.fuzzy.against`, a
later run reads that index, and the indexes it was itself checked against (`parent`), and verifies
a match against an earlier document exactly like one inside the batch.
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import FuzzyDedupConfig, KeepPolicy, Section, SluiceConfig
from pipeline.mailbox import BOX, Letter, Parts, boxes_for, deliver, directory, part_name, pick, post, read
from pipeline.runtime import map_in_order, releasing_memory
from pipeline.stage import post_decisions
from stages.dedup.components import both_directions, by_node, component_edges, distributed_components, local_components
from stages.dedup.jaccard import from_blob, jaccard, shingle_sets, signatures_and_sets, to_blobs
from stages.dedup.keys import NEW, decisions, doc_keys, old_keys, parts
from stages.dedup import lsh
from stages.dedup.lsh import EDGE_SCHEMA, band_hashes, candidate_pairs, lsh_params
from stages.dedup.minhash import MinHashParams, signatures
from stages.dedup.store import (META, TextFiles, content_digest, find_index, index_parts, stage_fingerprint,
                                write_meta, write_parquet)

STAGE = "fuzzy_dedup"
READS: tuple[str, ...] = ("source", "id", "text", "quality_score")
REASON = "near_duplicate"
INDEX_DIR = "band_index"
SHINGLE_HASH = "poly64-fmix64-v1"  # bump when the shingle or band hash changes: old indexes then refuse to load
# Documents per mailbox box (and band index part; `pipeline.mailbox.boxes_for`): what one task holds
# is a box's band rows and their candidate pairs. (400k documents in 8 boxes: a worker finding
# candidates peaked at 547 MB RSS, 330 MB when idle; in 20 boxes at 425 MB, the `sluice dedup` tree at
# 1,985 MB; in 40 boxes the candidate step is no longer the tree's peak, 1,957 MB, no slower.)
DOCS_PER_BOX = 10_000
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
        return _read_old_docs(self.parts())

    def digest(self) -> str:
        return "+".join(content_digest(f) for f in self.folders)


def _read_old_docs(part_list: list[dict]) -> pa.Table:
    """The documents of the listed index parts (`Earlier.parts()`)."""
    tables = [old_docs(pq.read_table(part["path"], schema=INDEX_SCHEMA), part["level"]) for part in part_list]
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


def _post_band_rows(docs: pa.Table, mailbox: Path, sender: str, boxes: int) -> int:
    """Each document's band rows, posted to the bucket partition of their band hash."""
    rows = pl.from_arrow(band_rows(docs)).with_columns((pl.col("band_hash") % boxes).cast(pl.String).alias(BOX))
    return post(rows.to_arrow(), mailbox, sender)


def _sketch_part(part: int, rows: Parts, settings: Settings, scratch: Path, boxes: int) -> dict[int, str]:
    """One part's sketches, posted: band rows to their buckets, the documents' index rows to their
    index part and, with `verify`, shingle sets to the box of their file, where verification picks
    the ones it needs. Returns the part's piece files."""
    table = rows.read(part)
    docs, sender = sketch(table, settings), part_name(part)
    if settings.verify:
        post(pl.from_arrow(docs.select(["key", SETS])).with_columns(_file_box("key")).to_arrow(), scratch / SETS, sender)
    _post_band_rows(docs, scratch / "bands", sender, boxes)
    _post_index_rows(docs.select(["key", HASHES, "_piece"]), scratch / "index", sender, boxes)
    files = pl.from_arrow(table.select(["_piece", "_file"])).unique()
    return dict(zip(files["_piece"].to_list(), files["_file"].to_list()))


def _post_old_band_rows(numbered: tuple[int, dict], mailbox: Path, boxes: int) -> int:
    """One index part of an earlier run: its documents' band rows, posted like this run's."""
    number, part = numbered
    return _post_band_rows(_read_old_docs([part]), mailbox, f"old-{number:06d}", boxes)


def _pairs_by_node_file(bands: pa.Table, box: str, to: Path) -> int:
    """A bucket partition's candidate pairs, each posted to the box of its node's file."""
    return post(pl.from_arrow(bucket_pairs(bands)).with_columns(_file_box("node")).to_arrow(), to, box)


def _edges_by_node(edges: pa.Table, box: str, to: Path, boxes: int) -> int:
    """Candidate (or verified) edges, posted to the component partition of their node."""
    return post(by_node(pl.from_arrow(edges.select(["node", "root"])), boxes).to_arrow(), to, box)


@dataclass(frozen=True)
class SetSource:
    """Where verification finds a candidate's shingle set: a new document's among the letters the
    sketch step posted (their `directory`, read once on the driver), an earlier run's rebuilt from
    its text."""

    letters: dict[str, list[Letter]]
    files: TextFiles
    params: MinHashParams

    def sets(self, keys: list[str]) -> dict[str, np.ndarray]:
        where = pl.DataFrame({"key": pl.Series(keys, dtype=pl.String)}) \
            .with_columns(_file_box("key"), old=parts(pl.col("key"))["level"] > 0)
        old = where.filter(pl.col("old"))["key"].to_list()
        sets = rebuilt_sets(old, self.files, self.params) if old else {}
        for (box,), group in where.filter(~pl.col("old")).group_by(BOX):
            found = pick(self.letters[box], "key", group["key"].to_arrow())
            sets.update(zip(found["key"].to_pylist(), map(from_blob, found[SETS].to_pylist())))
        return sets


def _verify(pairs: pa.Table, box: str, source: SetSource, threshold: float, to: Path, boxes: int) -> int:
    """One box's candidate pairs that reach the threshold, with only the sets they name read,
    posted as edges."""
    pairs = pl.from_arrow(pairs.select(["node", "root"])).unique().sort(["node", "root"]).to_arrow()
    keys = pl.concat([pl.from_arrow(pairs["node"]), pl.from_arrow(pairs["root"])]).unique().sort().to_list()
    return _edges_by_node(verified(pairs, source.sets(keys), threshold), box, to, boxes)


_INDEX_ROW = pa.schema([("key", pa.string()), (HASHES, pa.list_(pa.uint64())), ("_piece", pa.int32()),
                        ("_row", pa.int32()), ("_drop", pa.bool_()), (BOX, pa.string())])


def _post_index_rows(batch: pa.Table, mailbox: Path, sender: str, boxes: int) -> int:
    """Documents (key, band hashes) or rejections (_piece, _row) in one schema, posted to the index
    part of their piece."""
    n, docs = batch.num_rows, "key" in batch.column_names
    rows = pa.table({
        "key": batch["key"] if docs else pa.nulls(n, pa.string()),
        HASHES: batch[HASHES] if docs else pa.nulls(n, pa.list_(pa.uint64())),
        "_piece": batch["_piece"], "_row": pa.nulls(n, pa.int32()) if docs else batch["_row"],
        "_drop": pa.array([not docs] * n, pa.bool_()),
        BOX: pc.cast(pc.remainder(batch["_piece"], boxes), pa.string()),
    }).cast(_INDEX_ROW)
    return post(rows, mailbox, sender)


def _decide(edges: pa.Table, sender: str, scratch: Path, detail: str, boxes: int) -> int:
    """Decisions from a component's (node, root) edges, posted to their pieces, and their rows to
    the index mailbox as rejections."""
    rejected = decisions(edges, REASON, detail)
    _post_index_rows(rejected.select(["_piece", "_row"]), scratch / "index", f"rejected-{sender}", boxes)
    return post_decisions(rejected, scratch, sender)


def _decide_box(letters: pa.Table, box: str, scratch: Path, detail: str, boxes: int) -> int:
    return _decide(component_edges(letters), box, scratch, detail, boxes)


def _both_directions(edges: pa.Table, box: str, to: Path, boxes: int) -> int:
    return post(both_directions(edges, boxes), to, box)


@releasing_memory  # the driver hands the edges' and union-find's heap back before the stage goes on
def _cluster_here(edges: Path, scratch: Path, detail: str, boxes: int) -> None:
    found = [read(letters).cast(EDGE_SCHEMA) for letters in directory(edges).values()]
    table = pa.concat_tables(found) if found else EDGE_SCHEMA.empty_table()
    _decide(local_components(table), "driver", scratch, detail, boxes)


def _cluster(scratch: Path, n_edges: int, clustering: str, detail: str, boxes: int) -> None:
    """Decisions from the verified edges: union-find on the driver when few, else large-star/small-star."""
    edges = scratch / "edges"
    if clustering == "union_find" or (clustering == "auto" and n_edges <= AUTO_LOCAL_EDGES):
        _cluster_here(edges, scratch, detail, boxes)
        return
    deliver(edges, functools.partial(_both_directions, to=scratch / "components", boxes=boxes))
    final = distributed_components(scratch / "components", scratch, boxes)
    deliver(final, functools.partial(_decide_box, scratch=scratch, detail=detail, boxes=boxes))


def _write_index_part(rows: pa.Table, box: str, folder: Path) -> int:
    """One part of the band index: its pieces' documents less the rejected ones."""
    drop = rows["_drop"]
    write_parquet(index_table(rows.filter(pc.invert(drop)), rows.filter(drop)), folder / f"part-{int(box):05d}.parquet")
    return int(box)


def _relative_files(files: dict[int, str], run_root: Path) -> dict[int, str]:
    """This run's piece files, relative to the run root (they must lie inside it)."""
    out = {}
    for piece, file in sorted(files.items()):
        path = Path(file).resolve()
        if run_root != path and run_root not in path.parents:
            raise ValueError(f"kept-rows file {path} lies outside the run root {run_root}")
        out[piece] = str(path.relative_to(run_root))
    return out


def build(cfg: SluiceConfig, workdir: Path) -> Callable[[Parts, Path], None]:
    """Ray wiring: sketches -> band buckets -> candidate pairs -> exact verification -> components."""
    fuzzy = cfg.dedup.fuzzy
    settings = Settings.from_config(fuzzy, cfg.dedup.keep)
    run_root = Path(cfg.out).resolve()
    earlier = Earlier.load(fuzzy.against, settings) if fuzzy.against else None

    def fuzzy_dedup(rows: Parts, scratch: Path) -> None:
        boxes = boxes_for(rows.rows, DOCS_PER_BOX)
        own: dict[int, str] = {}
        for files in map_in_order(functools.partial(_sketch_part, rows=rows, settings=settings, scratch=scratch,
                                                    boxes=boxes), range(rows.count)):
            own.update(files)
        own = _relative_files(own, run_root)
        files = TextFiles()
        files.add_run(0, run_root, own)
        if earlier is not None and earlier.parts():
            files.paths.update(earlier.files.paths)
            for _ in map_in_order(functools.partial(_post_old_band_rows, mailbox=scratch / "bands", boxes=boxes),
                                  enumerate(earlier.parts())):
                pass
        if settings.verify:
            deliver(scratch / "bands", functools.partial(_pairs_by_node_file, to=scratch / "pairs"))
            source = SetSource(directory(scratch / SETS), files, settings.minhash)
            n_edges = sum(deliver(scratch / "pairs", functools.partial(
                _verify, source=source, threshold=settings.threshold, to=scratch / "edges", boxes=boxes)))
        else:
            n_edges = sum(deliver(scratch / "bands", lambda bands, box: _edges_by_node(
                bucket_pairs(bands), box, scratch / "edges", boxes)))
        _cluster(scratch, n_edges, fuzzy.clustering, settings.detail, boxes)
        parent = os.path.relpath(Path(fuzzy.against).resolve(), run_root) if fuzzy.against else None
        index = workdir / INDEX_DIR
        index.mkdir(parents=True, exist_ok=True)
        deliver(scratch / "index", functools.partial(_write_index_part, folder=index))
        write_meta(index, IndexMeta(params=settings.index_params(), files=own, parent=parent))

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

"""A shuffle through files: senders write one Arrow IPC letter per receiving partition, each receiver
reads its own letters.

Fuzzy dedup's large exchanges (every document's band rows, candidates' shingle sets) go this way
rather than through a Ray Data groupby, whose blocks live in Ray's object store: the store's shared
pages stay resident in every worker that read them, so a worker's memory grew with the corpus. With
letters, a worker holds only the partition it works on. On a cluster the run directory is shared
storage already (verification re-reads the run's piece files), so the mailbox lives there too.

A letter's name is fixed by its content (sender and receiver), so a retried task rewrites the same
letter whole rather than adding one; receivers start only after every sender has finished.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.runtime import releasing_memory

BOX = "_box"  # the column naming each posted row's receiver
LETTERS = pa.schema([("box", pa.string())])  # what `post` returns: the box of each letter it wrote


def sender_name(batch: pa.Table, identity: list[str]) -> str:
    """A name for a batch of rows, the same on every retry: batches are disjoint and the `identity`
    columns tell rows apart, so the batch's first row (and the columns' names) name it."""
    first = [f"{c}={batch[c][0].as_py()}" for c in identity] if batch.num_rows else ["empty"]
    return hashlib.sha256("\x00".join(first).encode()).hexdigest()[:20]


def post(rows: pa.Table, mailbox: Path, sender: str) -> pa.Table:
    """Write `rows` as one letter per receiver named in their BOX column (dropped from the letter);
    return one row per letter written."""
    boxes = []
    for (box,), part in pl.from_arrow(rows).group_by(BOX, maintain_order=True):
        letter = part.drop(BOX).to_arrow()
        folder = mailbox / str(box)
        folder.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(folder / f"{sender}.arrow"), "wb") as sink, pa.ipc.new_file(sink, letter.schema) as writer:
            writer.write_table(letter)
        boxes.append(str(box))
    return pa.table({"box": pa.array(boxes, pa.string())}, schema=LETTERS)


def receive(box: Path) -> pa.Table:
    """Every letter in `box`, in name order, so the table does not depend on which sender finished first."""
    tables = []
    for path in sorted(box.glob("*.arrow")):
        with pa.OSFile(str(path)) as source:  # read, not memory-mapped: pages go when the table does
            tables.append(pa.ipc.open_file(source).read_all())
    return pa.concat_tables(tables)


def pick(box: Path, column: str, values: pa.Array) -> pa.Table:
    """The rows of `box`'s letters whose `column` is among `values`, read through a memory map, so
    only the pages of the rows asked for (and of `column`) are read."""
    tables = []
    for path in sorted(box.glob("*.arrow")):
        with pa.memory_map(str(path)) as source:
            letter = pa.ipc.open_file(source).read_all()
            wanted = pc.is_in(letter[column], value_set=values.cast(letter.schema.field(column).type))
            tables.append(letter.filter(wanted))
    return pa.concat_tables(tables)


def deliver(mailbox: Path, handle: Callable[..., pa.Table], schema: pa.Schema | None = None,
            forward_to: Path | None = None, **kwargs) -> ray.data.Dataset:
    """`handle(letters, **kwargs)` for each box's letters, one Ray task per box, boxes in name order,
    materialized: either its results, cast to `schema`, or (with `forward_to`) the LETTERS it posted
    there, each result (rows with a BOX column) sent on by the box it came from."""
    if (schema is None) == (forward_to is None):
        raise ValueError("deliver needs either a result schema or a mailbox to forward to")
    out_schema = LETTERS if forward_to is not None else schema
    boxes = sorted(p.name for p in mailbox.iterdir()) if mailbox.is_dir() else []

    @releasing_memory
    def each(batch: pa.Table) -> pa.Table:
        out = []
        for box in batch["box"].to_pylist():
            result = handle(receive(mailbox / box), **kwargs)
            out.append(post(result, forward_to, box) if forward_to is not None else result)
        return pa.concat_tables([t.select(out_schema.names).cast(out_schema) for t in out])

    if not boxes:
        return ray.data.from_arrow(out_schema.empty_table())
    return ray.data.from_items([{"box": b} for b in boxes], override_num_blocks=len(boxes)).map_batches(
        each, batch_size=1, batch_format="pyarrow").materialize()

"""A shuffle through files: senders write one Arrow IPC letter per receiving box, each receiver
reads its own box, one plain Ray task per sender and per box.

The dedup stages exchange their small columns (keys, hashes, band rows, candidate pairs, shingle
sets, decisions) this way rather than through a Ray Data groupby. Its blocks live in Ray's object
store, whose shared pages stay resident in every worker that read them, so a worker's memory grew
with the corpus; and any Ray Data execution starts two actors (~0.4 GB together) that stay for the
whole run. With letters, a worker holds only the box it works on. On a cluster the run directory is
shared storage already (the final pass re-reads every piece's files), so the mailbox lives there too.

A letter's name is its sender's (a part number, a box name), fixed by the input, so a retried task
rewrites the same letter whole rather than adding one; receivers start only after every sender has
finished, and read letters in name order, so what a box holds never depends on which task finished first.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.runtime import map_in_order, task_name

BOX = "_box"  # the column naming each posted row's receiver
MIN_BOXES = 8
R = TypeVar("R")


class Parts(Protocol):
    """A table read in parts, one task per part (a run's pieces; a test's slices of a table)."""

    count: int  # parts
    rows: int  # rows in all, known before any part is read: what an exchange sizes its boxes by

    def read(self, part: int) -> pa.Table:
        ...


def boxes_for(rows: int, rows_per_box: int) -> int:
    """The boxes of an exchange of `rows` rows: at least MIN_BOXES, one more per `rows_per_box`, so
    what one receiving task holds stays flat as the input grows. Fixed by the input, never by the
    workers, so neither are the outputs."""
    return max(MIN_BOXES, -(-rows // rows_per_box))


def part_name(part: int) -> str:
    """A sender name for part `part` that sorts in part order."""
    return f"{part:06d}"


def post(rows: pa.Table, mailbox: Path, sender: str) -> int:
    """Write `rows` as one letter per receiver named in their BOX column (dropped from the letter);
    return the number of rows posted."""
    for (box,), part in pl.from_arrow(rows).group_by(BOX, maintain_order=True):
        letter = part.drop(BOX).to_arrow()
        folder = mailbox / str(box)
        folder.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(folder / f"{sender}.arrow"), "wb") as sink, pa.ipc.new_file(sink, letter.schema) as writer:
            writer.write_table(letter)
    return rows.num_rows


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


def _send_part(parts: Parts, route: Callable[[pa.Table], pa.Table], mailbox: Path, part: int) -> int:
    return post(route(parts.read(part)), mailbox, part_name(part))


def scatter(parts: Parts, route: Callable[[pa.Table], pa.Table], mailbox: Path) -> int:
    """Post every part's rows, `route`d (a BOX column added), one task per part; return the rows posted."""
    return sum(map_in_order(functools.partial(_send_part, parts, route, mailbox), range(parts.count),
                            name=task_name(route)))


def _open_box(mailbox: Path, handle: Callable[[pa.Table, str], R], box: str) -> R:
    return handle(receive(mailbox / box), box)


def deliver(mailbox: Path, handle: Callable[[pa.Table, str], R]) -> list[R]:
    """`handle(letters, box)` for each box of `mailbox`, one Ray task per box, results in box name
    order (none when nothing was posted). A handler that sends on posts with its box as the sender."""
    boxes = sorted(p.name for p in mailbox.iterdir()) if mailbox.is_dir() else []
    return list(map_in_order(functools.partial(_open_box, mailbox, handle), boxes, name=task_name(handle)))

"""A shuffle through files: each sender writes one Arrow IPC file holding a letter (a run of record
batches) per receiving box, each receiver reads its own letters; one plain Ray task per sender and
per box.

The dedup stages exchange their small columns (keys, hashes, band rows, candidate pairs, shingle
sets, decisions) this way rather than through a Ray Data groupby. Its blocks live in Ray's object
store, whose shared pages stay resident in every worker that read them, so a worker's memory grew
with the corpus; and any Ray Data execution starts two actors (~0.4 GB together) that stay for the
whole run. With letters, a worker holds only the box it works on. On a cluster the run directory is
shared storage already (the final pass re-reads every piece's files), so the mailbox lives there too.

One file per sender, not per (sender, box): an exchange between M senders and R boxes leaves M files,
not M x R (at a terabyte, ~16k pieces times ~15k boxes would be a quarter of a billion files). The
file's schema metadata says which batches are which box's letter, and the IPC file format's footer
lets a receiver read just those batches: a box task opens each sender's footer and reads its own
letters, while the driver holds only the sender and box names (M + R, not M x R entries).

A file's name is its sender's (a part number, a box name), fixed by the input, and it is written
whole under a temporary name then renamed, so a retried task replaces it rather than adding one;
receivers start only after every sender has finished, and read letters in sender name order, so
what a box holds never depends on which task finished first.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.runtime import map_in_order, task_name

BOX = "_box"  # the column naming each posted row's receiver
MIN_BOXES = 8
LETTERS = b"sluice.letters"  # schema metadata of a sender's file: {box: [first batch, end batch]}
R = TypeVar("R")


class Parts(Protocol):
    """A table read in parts, one task per part (a run's pieces; a test's slices of a table)."""

    count: int  # parts
    rows: int  # rows in all, known before any part is read: what an exchange sizes its boxes by

    def read(self, part: int) -> pa.Table:
        ...


@dataclass(frozen=True)
class Letter:
    """Where one sender's rows for one box lie: batches [first, end) of its file."""

    path: str
    first: int
    end: int


def boxes_for(rows: int, rows_per_box: int) -> int:
    """The boxes of an exchange of `rows` rows: at least MIN_BOXES, one more per `rows_per_box`, so
    what one receiving task holds stays flat as the input grows. Fixed by the input, never by the
    workers, so neither are the outputs."""
    return max(MIN_BOXES, -(-rows // rows_per_box))


def part_name(part: int) -> str:
    """A sender name for part `part` that sorts in part order."""
    return f"{part:06d}"


def post(rows: pa.Table, mailbox: Path, sender: str) -> int:
    """Write `rows` as the sender's file of `mailbox`, one letter per receiver named in their BOX
    column (dropped from the letter); return the number of rows posted."""
    if rows.num_rows == 0:
        return 0
    spans: dict[str, list[int]] = {}
    batches: list[pa.RecordBatch] = []
    for (box,), part in pl.from_arrow(rows).group_by(BOX, maintain_order=True):
        letter = part.drop(BOX).to_arrow().to_batches()
        spans[str(box)] = [len(batches), len(batches) + len(letter)]
        batches += letter
    schema = batches[0].schema.with_metadata({LETTERS: json.dumps(spans)})
    mailbox.mkdir(parents=True, exist_ok=True)
    final = mailbox / f"{sender}.arrow"
    temporary = final.with_name(f".{final.name}.tmp")  # not an `*.arrow` a receiver would list
    with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    os.replace(temporary, final)
    return rows.num_rows


def _senders(mailbox: Path) -> list[str]:
    """The senders' files of `mailbox`, in name order."""
    return [str(p) for p in sorted(mailbox.glob("*.arrow"))] if mailbox.is_dir() else []


def _spans(sender: str) -> dict[str, list[int]]:
    """A sender's boxes and the batch span of each, from its footer alone."""
    with pa.OSFile(sender) as source:
        return json.loads(pa.ipc.open_file(source).schema.metadata[LETTERS])


def _letters_for(senders: list[str], box: str) -> list[Letter]:
    """`box`'s letters among `senders`' files, in their order."""
    return [Letter(sender, *span) for sender in senders if (span := _spans(sender).get(box))]


def directory(mailbox: Path) -> dict[str, list[Letter]]:
    """Every box of `mailbox` with its letters in sender name order. Its size is senders x boxes, so
    it is for exchanges where each sender writes to few boxes (shingle sets, by their file);
    `deliver` keeps only the box names and lets each box task find its own letters."""
    found: dict[str, list[Letter]] = {}
    for sender in _senders(mailbox):
        for box, (first, end) in _spans(sender).items():
            found.setdefault(box, []).append(Letter(sender, first, end))
    return dict(sorted(found.items()))


def _read(letter: Letter, source: pa.NativeFile) -> pa.Table:
    reader = pa.ipc.open_file(source)
    batches = [reader.get_batch(i) for i in range(letter.first, letter.end)]
    return pa.Table.from_batches(batches, reader.schema.remove_metadata())


def read(letters: list[Letter]) -> pa.Table:
    """One box's letters as one table, in the order given."""
    tables = []
    for letter in letters:
        with pa.OSFile(letter.path) as source:  # read, not memory-mapped: pages go when the table does
            tables.append(_read(letter, source))
    return pa.concat_tables(tables)


def pick(letters: list[Letter], column: str, values: pa.Array) -> pa.Table:
    """The rows of `letters` whose `column` is among `values`, read through a memory map, so only the
    pages of the rows asked for (and of `column`) are read."""
    tables = []
    for letter in letters:
        with pa.memory_map(letter.path) as source:
            table = _read(letter, source)
            wanted = pc.is_in(table[column], value_set=values.cast(table.schema.field(column).type))
            tables.append(table.filter(wanted))
    return pa.concat_tables(tables)


def _send_part(parts: Parts, route: Callable[[pa.Table], pa.Table], mailbox: Path, part: int) -> int:
    return post(route(parts.read(part)), mailbox, part_name(part))


def scatter(parts: Parts, route: Callable[[pa.Table], pa.Table], mailbox: Path) -> int:
    """Post every part's rows, `route`d (a BOX column added), one task per part; return the rows posted."""
    return sum(map_in_order(functools.partial(_send_part, parts, route, mailbox), range(parts.count),
                            name=task_name(route)))


def _open_box(handle: Callable[[pa.Table, str], R], senders: list[str], box: str) -> R:
    return handle(read(_letters_for(senders, box)), box)


def deliver(mailbox: Path, handle: Callable[[pa.Table, str], R]) -> list[R]:
    """`handle(letters, box)` for each box of `mailbox`, one Ray task per box, results in box name
    order (none when nothing was posted). A handler that sends on posts with its box as the sender.
    The driver holds the senders' names and the box names only; each task reads the senders'
    footers for its own letters."""
    senders = _senders(mailbox)
    boxes = sorted({box for sender in senders for box in _spans(sender)})
    return list(map_in_order(functools.partial(_open_box, handle, senders), boxes, name=task_name(handle)))

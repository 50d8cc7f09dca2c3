"""The file shuffle the dedup stages move their small columns through (`pipeline.mailbox`)."""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ray import cloudpickle

from pipeline.mailbox import BOX, deliver, directory, pick, post, read, scatter

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


def letters(keys: list[str], boxes: list[str]) -> pa.Table:
    return pa.table({"key": keys, BOX: boxes})


def receive(mailbox, box: str) -> pa.Table:
    return read(directory(mailbox)[box])


def test_a_retried_sender_rewrites_its_file_and_receivers_read_in_sender_order(tmp_path):
    post(letters(["k3", "k4"], ["a", "b"]), tmp_path, "s2")
    post(letters(["k1", "k2"], ["a", "a"]), tmp_path, "s1")
    post(letters(["k1", "k2"], ["a", "a"]), tmp_path, "s1")  # a retry: the same file, not a second one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.arrow", "s2.arrow"]  # one file per sender
    assert receive(tmp_path, "a").to_pydict() == {"key": ["k1", "k2", "k3"]}
    assert receive(tmp_path, "b").to_pydict() == {"key": ["k4"]}
    assert [letter.path.rsplit("/", 1)[1] for letter in directory(tmp_path)["a"]] == ["s1.arrow", "s2.arrow"]


def forward_by_first_letter(table: pa.Table, box: str, to) -> int:
    return post(table.append_column(BOX, pc.utf8_slice_codeunits(table["key"], 0, 1)), to, box)


def test_deliver_runs_each_box_once_and_forwards(ray_cluster, tmp_path):
    post(letters(["ax", "by", "az"], ["1", "1", "2"]), tmp_path / "first", "s")
    posted = deliver(tmp_path / "first", functools.partial(forward_by_first_letter, to=tmp_path / "second"))
    assert posted == [2, 1]  # box 1 sent ax and by, box 2 az: results in box order
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == ["1.arrow", "2.arrow"]  # senders: the boxes
    assert list(directory(tmp_path / "second")) == ["a", "b"]
    got = deliver(tmp_path / "second", lambda t, box: (box, sorted(t["key"].to_pylist())))
    assert got == [("a", ["ax", "az"]), ("b", ["by"])]
    assert deliver(tmp_path / "none", lambda t, box: box) == []


@dataclass(frozen=True)
class Slices:
    table: pa.Table
    count: int
    rows: int = 5

    def read(self, part: int) -> pa.Table:
        return self.table.slice(part * 2, 2)


def test_scatter_posts_each_part_as_its_own_sender(ray_cluster, tmp_path):
    parts = Slices(pa.table({"key": ["k0", "k1", "k2", "k3", "k4"]}), 3)
    n = scatter(parts, lambda t: t.append_column(BOX, pa.array(["x"] * t.num_rows)), tmp_path)
    assert n == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.arrow", "000001.arrow", "000002.arrow"]
    assert receive(tmp_path, "x")["key"].to_pylist() == ["k0", "k1", "k2", "k3", "k4"]


def test_pick_reads_only_the_rows_asked_for_across_letters(tmp_path):
    post(pa.table({"key": ["k1", "k2"], "v": [1, 2], BOX: ["a", "a"]}), tmp_path, "s1")
    post(pa.table({"key": ["k3", "k4"], "v": [3, 4], BOX: ["a", "b"]}), tmp_path, "s2")
    got = pick(directory(tmp_path)["a"], "key", pa.array(["k3", "k1", "k4", "absent"]))
    assert got.to_pydict() == {"key": ["k1", "k3"], "v": [1, 3]}  # letters in name order; k4 is in box b

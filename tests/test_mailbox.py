"""The file shuffle fuzzy dedup moves its large exchanges through (`stages.dedup.mailbox`)."""
from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.compute as pc

from ray import cloudpickle

from stages.dedup.mailbox import BOX, deliver, pick, post, receive, sender_name

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


def letters(keys: list[str], boxes: list[str]) -> pa.Table:
    return pa.table({"key": keys, BOX: boxes})


def test_a_retried_sender_rewrites_its_letters_and_receivers_read_in_name_order(tmp_path):
    post(letters(["k3", "k4"], ["a", "b"]), tmp_path, "s2")
    post(letters(["k1", "k2"], ["a", "a"]), tmp_path, "s1")
    post(letters(["k1", "k2"], ["a", "a"]), tmp_path, "s1")  # a retry: the same letter, not a second one
    assert receive(tmp_path / "a").to_pydict() == {"key": ["k1", "k2", "k3"]}
    assert receive(tmp_path / "b").to_pydict() == {"key": ["k4"]}


def test_sender_names_differ_between_batches_and_repeat_on_retry():
    batch = pa.table({"piece": [1, 1], "row": [7, 8]})
    assert sender_name(batch, ["piece", "row"]) == sender_name(batch, ["piece", "row"])
    assert sender_name(batch, ["piece", "row"]) != sender_name(batch.slice(1), ["piece", "row"])
    assert sender_name(batch, ["piece", "row"]) != sender_name(batch.rename_columns(["a", "b"]), ["a", "b"])


def forward_by_first_letter(table: pa.Table) -> pa.Table:
    return table.append_column(BOX, pc.utf8_slice_codeunits(table["key"], 0, 1))


def test_deliver_runs_each_box_once_and_forwards(ray_cluster, tmp_path):
    post(letters(["ax", "by", "az"], ["1", "1", "2"]), tmp_path / "first", "s")
    listed = deliver(tmp_path / "first", forward_by_first_letter, forward_to=tmp_path / "second")
    assert sorted(row["box"] for row in listed.take_all()) == ["a", "a", "b"]  # box 1 wrote a and b, box 2 a
    schema = pa.schema([("key", pa.string())])
    got = deliver(tmp_path / "second", lambda t: t.sort_by("key"), schema).take_all()
    assert [row["key"] for row in got] == ["ax", "az", "by"]  # box a (letters from 1 and 2), then box b
    assert deliver(tmp_path / "none", lambda t: t, schema).count() == 0


def test_pick_reads_only_the_rows_asked_for_across_letters(tmp_path):
    post(pa.table({"key": ["k1", "k2"], "v": [1, 2], BOX: ["a", "a"]}), tmp_path, "s1")
    post(pa.table({"key": ["k3", "k4"], "v": [3, 4], BOX: ["a", "b"]}), tmp_path, "s2")
    got = pick(tmp_path / "a", "key", pa.array(["k3", "k1", "k4", "absent"]))
    assert got.to_pydict() == {"key": ["k1", "k3"], "v": [1, 3]}  # letters in name order; k4 is in box b

"""`pipeline.runtime.map_in_order`: the plain Ray tasks behind tokenizing, shard writing and BPE sampling."""
from __future__ import annotations

import os
import time

import pytest

from pipeline.runtime import map_in_order


def test_results_come_in_item_order_though_later_items_finish_first(ray_cluster):
    def slower_first(index: int) -> int:  # defined here: Ray ships it by value, workers cannot import tests
        time.sleep(0.05 * (6 - index))
        return index * index

    assert list(map_in_order(slower_first, range(6), in_flight=6)) == [i * i for i in range(6)]


def test_never_more_tasks_running_than_in_flight(ray_cluster, tmp_path):
    def running_alongside(index: int) -> int:
        """How many tasks were running when this one was (itself included), seen through marker files."""
        mark = tmp_path / f"running-{index}"
        mark.touch()
        time.sleep(0.2)
        seen = len(list(tmp_path.glob("running-*")))
        mark.unlink()
        return seen

    assert list(map_in_order(running_alongside, range(4), in_flight=1)) == [1, 1, 1, 1]


def test_a_failing_item_raises_its_error_in_the_caller(ray_cluster, tmp_path):
    def fails_on_two(index: int) -> int:
        if index == 2:
            raise ValueError(f"item {index} is bad")
        return index

    results = map_in_order(fails_on_two, range(5), in_flight=2)
    assert [next(results), next(results)] == [0, 1]
    with pytest.raises(ValueError, match="item 2 is bad"):
        next(results)


def test_items_run_in_ray_workers_not_the_caller(ray_cluster):
    assert os.getpid() not in set(map_in_order(lambda _: os.getpid(), range(3)))

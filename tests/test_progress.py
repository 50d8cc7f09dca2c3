"""The stage progress reporter: one line per interval without a TTY, a bar in one; time is injected."""
from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from pipeline.progress import Progress


class Clock:
    """A clock the test moves by hand, so nothing here depends on how fast the machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="sluice.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "sluice.progress"]


def test_without_a_tty_one_line_per_interval_with_rates(lines):
    clock = Clock()
    progress = Progress("rules", total_items=4000, total_bytes=20_000_000, clock=clock, tty=False)
    for _ in range(9):  # 9 s of steady work: no line yet
        clock.now += 1
        progress.advance(100, 500_000)
    assert lines() == []
    clock.now += 1
    progress.advance(100, 500_000)  # 10 s: 1,000 rows, 5 MB
    assert lines() == ["rules: running, 1,000/4,000 rows (25%), 5.0/20.0 MB, 100 rows/s, 0.5 MB/s, 10 s"]
    for _ in range(50):  # many batches inside one interval still make one line
        clock.now += 0.1
        progress.advance(10, 0)
    assert len(lines()) == 1
    clock.now += 5
    progress.advance(0, 0)
    assert len(lines()) == 2 and lines()[1].startswith("rules: running, 1,500/4,000 rows (38%)")


def test_close_reports_totals_once_in_the_callers_unit(lines):
    clock = Clock()
    with Progress("row-local stages", total_items=None, total_bytes=None, unit="pieces", clock=clock,
                  tty=False) as progress:
        clock.now += 4
        progress.advance(20, 8_000_000)
    progress.close()
    assert lines() == ["row-local stages: done, 20 pieces, 8.0 MB, 5 pieces/s, 2.0 MB/s, 4 s"]


def test_in_a_tty_stages_share_one_bar_display_and_log_nothing(lines):
    clock = Clock()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=150)
    clean = Progress("clean", total_items=1000, total_bytes=None, clock=clock, tty=True, console=console)
    rules = Progress("rules", total_items=None, total_bytes=None, clock=clock, tty=True, console=console)
    clock.now += 2
    clean.advance(600, 3_000_000)
    rules.advance(50, 0)
    clean.close()
    rules.close()
    shown = out.getvalue()
    assert "clean" in shown and "rules" in shown and "600/1000" in shown and "50/50" in shown
    assert "300 rows/s, 1.5 MB/s" in shown
    assert lines() == []

"""Progress of a stage, for the person watching: a bar in a terminal, a log line every ~10 s without one.

Logs captured from a pipe (CI, `nohup`, a scheduler) need a few lines that say how fast a stage goes,
not a redrawn bar per operator, so without a TTY a stage logs one line per interval with rows/s and
MB/s, and one when it closes. In a terminal the stages share one rich progress display.

    with Progress("rules", total_items=n, total_bytes=None) as progress:
        for batch in batches:
            ...
            progress.advance(len(batch), batch_bytes)
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

log = logging.getLogger("sluice.progress")

Clock = Callable[[], float]


class _Display:
    """The one rich display every open stage in a terminal draws into (rich allows one live display
    per console); started with the first open stage, stopped with the last."""

    def __init__(self) -> None:
        self.bars: RichProgress | None = None
        self.open = 0

    def add(self, stage: str, total: int | None, console: Console | None, clock: Clock) -> int:
        if self.bars is None:
            self.bars = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rates]}"), TimeElapsedColumn(),
                                     console=console, get_time=clock, transient=False)
            self.bars.start()
        self.open += 1
        return self.bars.add_task(stage, total=total, rates="")

    def remove(self) -> None:
        self.open -= 1
        if self.open == 0 and self.bars is not None:
            self.bars.stop()
            self.bars = None


_display = _Display()


class Progress:
    """Items (rows by default; `unit` names them) and bytes a stage has done, reported without a TTY as
    one log line per `interval` seconds (and a last one on close), in a TTY as a bar.

    `clock` and `tty` exist for tests and for callers that know better than `sys.stdout.isatty()`.
    """

    def __init__(self, stage: str, total_items: int | None = None, total_bytes: int | None = None, *,
                 unit: str = "rows", interval: float = 10.0, clock: Clock = time.monotonic,
                 tty: bool | None = None, console: Console | None = None) -> None:
        self.stage, self.total_items, self.total_bytes, self.unit = stage, total_items, total_bytes, unit
        self.items = self.nbytes = 0
        self.interval, self.clock = interval, clock
        self.started = self.last_report = clock()
        self.closed = False
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.task = _display.add(stage, total_items, console, clock) if self.tty else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def advance(self, items: int, nbytes: int = 0) -> None:
        """Count `items` more rows and `nbytes` more bytes done; report if an interval has passed."""
        self.items += items
        self.nbytes += nbytes
        now = self.clock()
        if self.tty:
            _display.bars.update(self.task, completed=self.items, rates=self.rates(now))
        elif now - self.last_report >= self.interval:
            self.last_report = now
            log.info("%s", self.line(now))

    def close(self) -> None:
        """Report the stage's totals and rates once; closing again does nothing."""
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        if self.tty:
            _display.bars.update(self.task, completed=self.items, total=self.total_items or self.items,
                                 rates=self.rates(now))
            _display.remove()
        else:
            log.info("%s", self.line(now, done=True))

    def rates(self, now: float) -> str:
        """Items/s and MB/s since the stage started."""
        elapsed = max(now - self.started, 1e-9)
        return f"{self.items / elapsed:,.0f} {self.unit}/s, {self.nbytes / elapsed / 1e6:,.1f} MB/s"

    def line(self, now: float, done: bool = False) -> str:
        """One log line: what is done (of how much, when known), how fast, for how long."""
        count = f"{self.items:,}" + (f"/{self.total_items:,} {self.unit} ({self.items / self.total_items:.0%})"
                                     if self.total_items else f" {self.unit}")
        mb = f"{self.nbytes / 1e6:,.1f}" + (f"/{self.total_bytes / 1e6:,.1f} MB" if self.total_bytes else " MB")
        state = "done" if done else "running"
        return f"{self.stage}: {state}, {count}, {mb}, {self.rates(now)}, {now - self.started:,.0f} s"

"""Progress of a long stage (interim)."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("sluice")


class Progress:
    def __init__(self, stage: str, total_items: int | None = None, total_bytes: int | None = None):
        self.stage, self.items, self.bytes, self.start = stage, 0, 0, time.monotonic()

    def advance(self, items: int, nbytes: int = 0) -> None:
        self.items += items
        self.bytes += nbytes

    def close(self) -> None:
        log.info("%s: %d in %.1f s", self.stage, self.items, time.monotonic() - self.start)

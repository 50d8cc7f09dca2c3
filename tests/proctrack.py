"""What a test started: every descendant of a command it runs, recorded while the command lives.

Processes are matched by pid and start time (and a server by its port), never by name across the
machine: other jobs on the same machine run Prefect and Ray too.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time

import psutil

from flows.processes import ProcessRef

RECORDED: list[ProcessRef] = []  # everything every Recorder saw: the session check in conftest.py reads it


class Recorder:
    """A thread that records the descendants of `pid` (and the ports they listen on) until stopped."""

    def __init__(self, pid: int, every: float = 0.2):
        self.root = psutil.Process(pid)
        self.refs: dict[int, ProcessRef] = {}
        self.ports: set[int] = set()
        self.commands: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.snapshot()
            self._stop.wait(every)

    def snapshot(self) -> None:
        with contextlib.suppress(psutil.Error):
            for child in self.root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.pid not in self.refs:
                        ref = ProcessRef(pid=child.pid, create_time=child.create_time())
                        self.refs[child.pid] = ref
                        self.commands[child.pid] = " ".join(child.cmdline())
                        RECORDED.append(ref)
                    self.ports |= {c.laddr.port for c in child.net_connections(kind="tcp")
                                   if c.status == psutil.CONN_LISTEN}

    def stop(self) -> list[ProcessRef]:
        self._stop.set()
        self._thread.join()
        return list(self.refs.values())


def alive_after(refs: list[ProcessRef], ceiling: float) -> list[str]:
    """Poll until every recorded process is gone; what is still alive at `ceiling` seconds, described."""
    deadline = time.monotonic() + ceiling
    while True:
        alive = [p for p in (r.process() for r in refs) if p is not None]
        if not alive or time.monotonic() > deadline:
            described = []
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    described.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            return described
        time.sleep(0.5)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0

"""`sluice serve`: the incremental flow as a scheduled Prefect deployment, served from this process.

Prefect's ephemeral server schedules nothing, so with no PREFECT_API_URL set a local
`prefect server start` is launched on 127.0.0.1 for the lifetime of the command, with its UI asking
that same server for its API. The server dies with this process however it ends (see
flows/processes.py), and `ROOT/.serve.lock` keeps a second `sluice serve` off the same run root.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator

import psutil
from pydantic import BaseModel, ValidationError

from flows.prefect_server import LocalServer, local_prefect_server
from flows.processes import ProcessRef, kill_recorded, start_watchdog

log = logging.getLogger("sluice")

LOCK_FILE = ".serve.lock"


class ServeRecord(BaseModel):
    """What ROOT/.serve.lock says about the `sluice serve` holding it: enough to clean up after a kill."""

    serve: ProcessRef
    started: str
    watchdog: ProcessRef | None = None
    server: LocalServer | None = None

    def owned(self) -> list[ProcessRef]:
        return [r for r in (self.watchdog, self.server.process if self.server else None) if r]


class AlreadyServing(RuntimeError):
    """Another live `sluice serve` holds the run root."""


class ServeLock:
    """An exclusive flock on ROOT/.serve.lock, whose content records this command's processes.

    The kernel drops the flock when its holder dies, so a lock that can be taken but still has a
    record was left by a killed `sluice serve`: what it records is killed if still alive. The file
    is rewritten in place, never replaced, so every holder locks the same inode.
    """

    def __init__(self, fh: IO[str], record: ServeRecord):
        self._fh, self.record = fh, record

    @classmethod
    @contextlib.contextmanager
    def hold(cls, root: Path) -> Iterator["ServeLock"]:
        root.mkdir(parents=True, exist_ok=True)
        path = root / LOCK_FILE
        with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AlreadyServing(_held_message(path, _read(fh))) from None
            stale = _read(fh)
            if stale is not None:
                sweeping = stale.watchdog.process() if stale.watchdog else None
                if sweeping is not None:  # the old watchdog is still cleaning up after the kill: let it finish
                    psutil.wait_procs([sweeping], timeout=30)
                killed = kill_recorded(stale.owned())
                log.warning("serve: cleaned up the lock of a killed `sluice serve` (pid %d)%s", stale.serve.pid,
                            f"; stopped its leftover processes {killed}" if killed else "")
            lock = cls(fh, ServeRecord(serve=ProcessRef.of(os.getpid()),
                                       started=datetime.now(timezone.utc).isoformat(timespec="seconds")))
            lock.save()
            try:
                yield lock
            finally:
                fh.truncate(0)  # a clean exit leaves an empty, unlocked file

    def update(self, **fields) -> None:
        self.record = self.record.model_copy(update=fields)
        self.save()

    def save(self) -> None:
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(self.record.model_dump_json(indent=2))
        self._fh.flush()
        os.fsync(self._fh.fileno())


def _read(fh: IO[str]) -> ServeRecord | None:
    fh.seek(0)
    text = fh.read()
    with contextlib.suppress(ValidationError, json.JSONDecodeError):
        return ServeRecord.model_validate_json(text) if text.strip() else None
    return None


def _held_message(path: Path, record: ServeRecord | None) -> str:
    if record is None:
        return f"another `sluice serve` is starting on {path.parent} (lock {path})"
    ui = f", Prefect UI {record.server.ui_url}" if record.server else ""
    return (f"another `sluice serve` (pid {record.serve.pid}, since {record.started}{ui}) already serves "
            f"{path.parent}; stop it first (kill {record.serve.pid})")


def serve(config_path: Path, cron: str | None, interval: float | None, name: str = "sluice-incremental") -> None:
    """Serve the incremental flow on a schedule until SIGTERM or SIGINT (one run at a time)."""
    from pipeline.config import load_config

    # Until Prefect's runner installs its own graceful handler, SIGTERM unwinds like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with ServeLock.hold(Path(load_config(config_path).out)) as lock:
        lock.update(watchdog=start_watchdog())
        _serve_locked(lock, config_path, cron, interval, name)


def _serve_locked(lock: ServeLock, config_path: Path, cron: str | None, interval: float | None, name: str) -> None:
    """Prefect and the flows are imported only here, so a refused second serve answers at once."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.incremental import incremental_flow

    def run() -> None:
        incremental_flow.serve(name=name, cron=cron, interval=interval, limit=1,
                               parameters={"config_path": str(config_path.resolve())})

    if os.environ.get("PREFECT_API_URL"):
        run()
        return
    with local_prefect_server() as server, temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        lock.update(server=server)
        os.environ["PREFECT_API_URL"] = server.api_url  # the runs served start in subprocesses
        run()

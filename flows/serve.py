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
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator

import psutil
from pydantic import BaseModel, ValidationError

from flows.processes import ProcessRef, kill_recorded, spawn, start_watchdog, stop_group

log = logging.getLogger("sluice")

LOCK_FILE = ".serve.lock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer(BaseModel):
    """A `prefect server start` this command owns: its API, and what stops it (process group = pid)."""

    api_url: str
    port: int
    process: ProcessRef

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


@contextlib.contextmanager
def local_prefect_server(port: int | None = None, timeout: float = 120) -> Iterator[LocalServer]:
    """A `prefect server start` bound to 127.0.0.1 whose UI uses its own API, healthy before this yields.

    Without PREFECT_SERVER_UI_API_URL the UI asks for http://127.0.0.1:4200/api whatever the port.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    proc = spawn([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                 env={**os.environ, "PREFECT_SERVER_UI_API_URL": url},
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(proc, url, timeout)
        log.info("local Prefect server: %s (UI at http://127.0.0.1:%d)", url, port)
        yield LocalServer(api_url=url, port=port, process=ProcessRef.of(proc.pid))
    finally:
        stop_group(proc)


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode} before it was healthy")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"prefect server on {url} not healthy after {timeout:.0f} s")
        time.sleep(0.5)


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

"""Prefect API servers that Sluice starts itself: bound to 127.0.0.1, dying with the command.

- `EphemeralServer`: the server Prefect would start at the first flow call when no API URL is set
  (the same uvicorn app, no UI, the database in PREFECT_HOME), started as Sluice's own child.
  Prefect's own starter (`prefect.server.api.server.SubprocessASGIServer`) imports the whole server
  package into the calling process to launch a child that imports it again: ~70 MB and ~3 s of
  imports in every `sluice` command, for a process that only talks to the API.
- `local_prefect_server`: a full `prefect server start` (scheduler, UI) for `sluice serve`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel

from flows.processes import ProcessRef, spawn, stop_group

log = logging.getLogger("sluice")

PORT_IN_USE = 3  # uvicorn's exit code when it cannot bind


class LocalServer(BaseModel):
    """A `prefect server start` this command owns: its API, and what stops it (process group = pid)."""

    api_url: str
    port: int
    process: ProcessRef

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> None:
    """Return once `url`/health answers 200; raise if `proc` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Prefect's API server exited with code {proc.returncode} before it was healthy")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prefect's API server on {url} not healthy after {timeout:.0f} s")
        time.sleep(0.1)


class EphemeralServer:
    """Prefect's ephemeral API server as a child of this process: `start()` returns at once, so Ray
    can start meanwhile; `use()` waits for it and points this process (and its children) at it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        from prefect.settings import get_current_settings

        import prefect

        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", **get_current_settings().to_environment_variables(exclude_unset=True)}
        self.proc = spawn([sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
                           "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                           "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                          env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def use(self) -> None:
        """Wait until healthy (starting again on another port if this one was taken meanwhile), then
        set PREFECT_API_URL here, where Prefect's settings read it, and for every child."""
        from prefect.context import refresh_global_settings_context
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        assert self.proc is not None, "start() first"
        timeout = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        for attempt in range(3):
            try:
                wait_healthy(self.proc, self.url, timeout)
                break
            except RuntimeError:
                if self.proc.returncode != PORT_IN_USE or attempt == 2:
                    raise  # a port taken three times running is not a race: say so rather than go on
                self.start()
        os.environ["PREFECT_API_URL"] = self.url
        os.environ.setdefault("PREFECT_UI_URL", "")  # it serves no UI: no "View at" link to a page that is not there
        refresh_global_settings_context()
        log.info("Prefect API (ephemeral, this command's own): %s", self.url)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=5)
            self.proc = None


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
        wait_healthy(proc, url, timeout)
        log.info("local Prefect server: %s (UI at http://127.0.0.1:%d)", url, port)
        yield LocalServer(api_url=url, port=port, process=ProcessRef.of(proc.pid))
    finally:
        stop_group(proc)

"""`sluice serve`: the incremental flow as a scheduled Prefect deployment, served from this process.

Prefect's ephemeral server schedules nothing, so with no PREFECT_API_URL set a local
`prefect server start` is launched on 127.0.0.1 for the lifetime of the command and stopped on exit.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

log = logging.getLogger("sluice")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_prefect_server(port: int | None = None, timeout: float = 120) -> Iterator[str]:
    """A `prefect server start` bound to 127.0.0.1, healthy before this yields its API URL."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with code {proc.returncode} before it was healthy")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server on {url} not healthy after {timeout:.0f} s")
            time.sleep(0.5)
        log.info("local Prefect server: %s (UI at http://127.0.0.1:%d)", url, port)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def serve(config_path: Path, cron: str | None, interval: float | None, name: str = "sluice-incremental") -> None:
    """Serve the incremental flow on a schedule until interrupted (one run at a time)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.incremental import incremental_flow

    def run() -> None:
        incremental_flow.serve(name=name, cron=cron, interval=interval, limit=1,
                               parameters={"config_path": str(config_path.resolve())})

    if os.environ.get("PREFECT_API_URL"):
        run()
        return
    with local_prefect_server() as url, temporary_settings(updates={PREFECT_API_URL: url}):
        os.environ["PREFECT_API_URL"] = url  # the runs served start in subprocesses
        run()

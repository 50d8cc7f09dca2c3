"""Shared fixtures: one Ray cluster per session, one Prefect test harness, the shared real data."""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

# Keep Prefect's and Ray's state out of the user's home, before either is imported.
_STATE = Path(tempfile.mkdtemp(prefix="sluice-test-"))
os.environ.setdefault("PREFECT_HOME", str(_STATE / "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session", autouse=True)
def no_prefect_or_ray_process_left():
    """The suite leaves no Prefect server, Ray daemon or Sluice watchdog behind (issue 14).

    Looks at this pytest's own descendants and at what tests recorded (tests/proctrack.py), never at
    the rest of the machine; first set up, so torn down after every other session fixture.
    """
    import psutil

    from flows.processes import ProcessRef, kill_recorded
    from proctrack import RECORDED, alive_after

    yield
    ours = ("prefect", "uvicorn", "ray", "flows.")
    mine = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(word in " ".join(proc.cmdline()) for word in ours):
                mine.append(ProcessRef(pid=proc.pid, create_time=proc.create_time()))
    left = alive_after(mine + RECORDED, 60)
    kill_recorded(mine + RECORDED)
    assert not left, f"the test suite left these processes behind: {left}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; missing it fails loudly in CI and skips only on a developer's machine."""
    if not (SHARED / "MANIFEST.md").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data missing at {SHARED}: CI must have it")
        pytest.skip(f"shared data missing at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs, no dashboard) shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(_STATE / "ray"), configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness (a real temporary server + database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> Path:
    """The bad-input matrix: malformed JSON, invalid UTF-8, UTF-16, empty, 20 MB, truncated gzip, no text."""
    d = tmp_path_factory.mktemp("bad")
    good = "A perfectly fine document about rivers and the sea."
    lines = [json.dumps({"id": "ok-1", "text": good}).encode(),
             b'{"id": "broken", "text": "no closing brace"',
             b'{"id": "latin", "text": "caf\xe9 au lait"}',
             json.dumps({"id": "notext", "body": "wrong field"}).encode(),
             json.dumps({"id": "empty", "text": " \n\t "}).encode(),
             json.dumps({"id": "huge", "text": "x" * 20_000_000}).encode(),
             json.dumps({"id": "ok-2", "text": good + " Second."}).encode()]
    (d / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (d / "utf16.txt").write_bytes("Grüße aus Köln, ein UTF-16 Dokument.".encode("utf-16"))
    whole = gzip.compress(b"\n".join(json.dumps({"id": f"gz-{i}", "text": f"{good} {i}"}).encode()
                                     for i in range(50)))
    (d / "cut.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])
    return d

"""Nothing Sluice starts outlives it: parent-death signal, the watchdog, the serve lock (issue 14)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from flows.processes import ProcessRef, kill_recorded
from flows.prefect_server import LocalServer
from flows.serve import AlreadyServing, ServeLock, ServeRecord
from pipeline.democorpus import generate_corpus
from proctrack import Recorder, alive_after, listening

ROOT = Path(__file__).resolve().parent.parent
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, text=True, **kwargs)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def test_a_spawned_child_dies_with_its_parent_killed_by_sigkill():
    parent = python(f"""
        import sys, time
        from flows.processes import spawn
        child = spawn({SLEEPER!r})
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    try:
        child = ProcessRef.of(int(parent.stdout.readline()))
        assert os.getpgid(child.pid) == child.pid  # a process group of its own
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert alive_after([child], 10) == []
    finally:
        kill_group(parent.pid)


def test_the_watchdog_sweeps_what_others_started_for_a_killed_command():
    """A grandchild in a session of its own, like Prefect's flow runs and Ray's agents: no signal reaches it."""
    parent = python(f"""
        import subprocess, time
        from flows.processes import start_watchdog
        start_watchdog()
        orphan = subprocess.Popen({SLEEPER!r}, start_new_session=True)
        print(orphan.pid, flush=True)
        time.sleep(600)
    """)
    try:
        orphan = ProcessRef.of(int(parent.stdout.readline()))
        time.sleep(2.5)  # the watchdog records descendants once a second
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert alive_after([orphan], 30) == []
    finally:
        kill_group(parent.pid)


def test_the_embedded_cluster_starts_no_monitor_nor_log_monitor_and_runs_tasks():
    """Neither does anything for a fixed-size cluster whose logs stay off the driver: ~90 MB each."""
    child = python("""
        import json, ray
        from ray._private import ray_constants
        from pipeline.config import RayConfig
        from pipeline.runtime import start_ray
        start_ray(RayConfig(num_cpus=1))
        started = ray._private.worker._global_node.all_processes
        doubled = ray.get(ray.remote(lambda x: 2 * x).remote(21))
        print(json.dumps({"doubled": doubled, "started": sorted(started),
                          "skipped": [ray_constants.PROCESS_TYPE_MONITOR, ray_constants.PROCESS_TYPE_LOG_MONITOR]}))
    """, env={**os.environ, "RAY_ADDRESS": ""})
    out, _ = child.communicate(timeout=180)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["doubled"] == 42
    assert "gcs_server" in result["started"] and "raylet" in result["started"]
    assert not set(result["skipped"]) & set(result["started"])


def test_a_second_holder_of_the_serve_lock_is_refused(tmp_path):
    with ServeLock.hold(tmp_path) as lock:
        with pytest.raises(AlreadyServing, match=f"pid {os.getpid()}"):
            with ServeLock.hold(tmp_path):
                pass
        assert lock.record.serve.pid == os.getpid()
    assert (tmp_path / ".serve.lock").read_text() == ""  # a clean exit leaves no record behind


def test_a_stale_lock_has_its_leftover_server_killed(tmp_path):
    """A killed `sluice serve` whose server survived (pdeathsig is Linux-only): the next serve stops it."""
    leftover = subprocess.Popen(SLEEPER, process_group=0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = ServeRecord(serve=ProcessRef(pid=dead.pid, create_time=0.0), started="earlier",
                        server=LocalServer(api_url="http://127.0.0.1:1/api", port=1,
                                           process=ProcessRef.of(leftover.pid)))
    (tmp_path / ".serve.lock").write_text(stale.model_dump_json())
    try:
        with ServeLock.hold(tmp_path) as lock:
            assert stale.server.process.process() is None
            assert lock.record.serve.pid == os.getpid()
    finally:
        leftover.kill()
        leftover.wait()


@pytest.mark.slow
def test_sigkill_of_sluice_run_mid_stage_leaves_no_process(tmp_path):
    generate_corpus(tmp_path / "corpus", n_docs=400, seed=5)
    out = tmp_path / "run"
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"out": str(out), "inputs": [{"path": str(tmp_path / "corpus" / "web")}],
                                        "ray": {"num_cpus": 2}}))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(cfg_file)], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recorder = Recorder(proc.pid)
    try:
        deadline = time.monotonic() + 300
        while not any((out / "stages").glob(".*.tmp-*")):  # a stage is writing its output
            assert proc.poll() is None, "sluice run ended before it could be killed mid-stage"
            assert time.monotonic() < deadline, "no stage started within 300 s"
            time.sleep(0.05)
        recorder.snapshot()
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
        proc.wait()
    finally:
        started = recorder.stop()
    try:
        commands = " ".join(recorder.commands.values())
        assert "uvicorn" in commands and "raylet" in commands  # the ephemeral Prefect server and Ray were seen
        assert alive_after(started, 60) == []
        assert recorder.ports and not any(listening(p) for p in recorder.ports)
    finally:
        kill_recorded(started)
        kill_group(proc.pid)

"""Faults on the full pipeline (curate + shards) over mixed real input: nothing lost, nothing changed.

The reference runs in this process on 2 Ray CPUs; the faulty runs are subprocesses on 1 CPU, killed
with SIGKILL at several points and resumed, and must end byte-identical to the reference.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import chaos
from pipeline.config import parse_config
from pipeline.summary import load_summary

ROOT = Path(__file__).resolve().parent.parent


def pipeline_config(shared: Path, out: Path, **extra) -> dict:
    return {
        "out": str(out),
        "inputs": [{"path": str(shared / "cc-web-docs"), "source": "cc", "url_field": "metadata.url"},
                   {"path": str(shared / "warc-samples" / "*.warc.gz"), "source": "warc"},
                   {"path": str(shared / "sms-spam" / "SMSSpamCollection.tsv"), "text_field": "SMS", "id_field": None}],
        "ingest": {"piece_bytes": 256 * 1024},  # several pieces per large file, so the chaos has places to hit
        "tokenize": {"vocab_size": 2000, "train_sample_docs": 2000},
        "shard": {"tokens_per_shard": 100_000},
        **extra,
    }


def digests(run: Path) -> dict[str, str]:
    files = [p for sub in ("kept", "rejected", "shards") for p in sorted((run / sub).glob("*")) if p.is_file()]
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def reference(shared_data, tmp_path_factory, ray_cluster, prefect_harness) -> Path:
    from flows.pipeline import pipeline_flow

    out = tmp_path_factory.mktemp("faults") / "reference"
    pipeline_flow(parse_config(pipeline_config(shared_data, out)))
    return out


def test_full_pipeline_loses_nothing(reference):
    summary = load_summary(reference)
    assert summary.inputs == summary.kept + summary.rejected > 6000
    reasons = summary.rejected_by_reason
    assert reasons["exact_duplicate"] > 0 and reasons["warc_no_body"] > 0 and reasons["near_duplicate"] > 0
    assert any(r.startswith(("gopher", "c4", "fineweb")) for r in reasons)
    assert (reference / "shards" / "manifest.json").is_file()


def test_bad_input_matrix_through_the_full_pipeline_loses_nothing(bad_inputs, tmp_path, ray_cluster, prefect_harness):
    from flows.pipeline import pipeline_flow

    cfg = {"out": str(tmp_path / "run"), "inputs": [{"path": str(bad_inputs)}], "tokenize": {"vocab_size": 300}}
    summary = pipeline_flow(parse_config(cfg))["summary"]
    rejected = pq.read_table(tmp_path / "run" / "rejected")
    assert summary.inputs == summary.kept + rejected.num_rows
    assert pc.all(pc.is_valid(rejected["reason"])).as_py() and pc.all(pc.is_valid(rejected["stage"])).as_py()
    assert {"malformed_json", "missing_text", "truncated", "empty", "too_long"} <= set(rejected["reason"].to_pylist())


def test_chaos_kills_at_seeded_commit_points_then_resume_is_byte_identical(shared_data, reference, tmp_path):
    """SIGKILL the whole run (1 CPU) at a seeded list of commit points, each resuming the last; then finish.

    The points cover every place a commit can be cut: a file written but not renamed, a folder
    fsynced but without its marker, with its marker but not renamed, and renamed just before the
    caller records it; the n-th occurrence of each (pieces, dedup stages, final rows, shards).
    """
    out = tmp_path / "killed"
    cfg_file = tmp_path / "one-cpu.yaml"
    cfg_file.write_text(yaml.safe_dump(pipeline_config(shared_data, out, ray={"num_cpus": 1, "dashboard": False})))
    cmd = [sys.executable, "-m", "flows.cli", "run", str(cfg_file)]
    rng = random.Random(20261201)
    kills = [(point, rng.randint(1, 4)) for point in rng.sample(chaos.POINTS, len(chaos.POINTS))]
    for point, nth in kills:
        plan = tmp_path / f"chaos-{point}.json"
        plan.write_text(json.dumps({"point": point, "nth": nth}))
        env = {**os.environ, "RAY_ADDRESS": "", "SLUICE_CHAOS": str(plan)}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, start_new_session=True, timeout=600,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert proc.returncode == -signal.SIGKILL, f"the run was not killed at {point} #{nth}"
    assert not (out / "summary.json").exists()
    finished = {p: p.stat().st_ino for p in (out / "pieces").rglob("_SUCCESS.json")}
    assert finished, "no piece finished before the kills"
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert all(p.stat().st_ino == inode for p, inode in finished.items())  # finished pieces were not redone
    assert digests(out) == digests(reference)
    assert load_summary(out) == load_summary(reference)


def _kill_one_worker(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker seen running one of the run's tasks (by the name in its process title)."""
    while not stop.is_set() and not killed:
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if cmd.startswith("ray::") and any(op in cmd for op in ("_run_piece", "_apply")):
                os.kill(p.info["pid"], signal.SIGKILL)
                killed.append(p.info["pid"])
                return
        time.sleep(0.005)


def test_killing_a_ray_worker_mid_stage_changes_nothing(shared_data, reference, tmp_path):
    from flows.pipeline import pipeline_flow

    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_worker, args=(stop, killed), daemon=True)
    killer.start()
    try:
        pipeline_flow(parse_config(pipeline_config(shared_data, tmp_path / "run")))
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray worker was caught running a stage"
    assert digests(tmp_path / "run") == digests(reference)

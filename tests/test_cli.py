"""The `sluice` CLI's own behaviour: clear errors before any work, help on every command."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline.rundir import atomic_write_json

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def text(result) -> str:
    """The output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.mark.parametrize("command", ["run", "demo", "validate", "summary", "dedup", "tokenize", "inspect",
                                     "train", "report", "serve", "quality train"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0 and "Usage" in text(result)


def test_validate_names_the_key_and_reason(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"dedup": {"fuzzy": {"treshold": 0.9}}, "inputs": [{"path": str(tmp_path / "x")}]}))
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "dedup.fuzzy.treshold: unknown key" in text(result) and "inputs.0.path" in text(result)


def test_validate_accepts_a_good_config(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"inputs": [{"path": str(tmp_path)}], "out": str(tmp_path / "run")}))
    result = runner.invoke(app, ["validate", str(good)])
    assert result.exit_code == 0 and "1 inputs" in text(result)


def test_run_without_inputs_says_so():
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2 and "no inputs" in text(result)


def test_serve_needs_exactly_one_schedule(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"inputs": [{"path": str(tmp_path)}]}))
    result = runner.invoke(app, ["serve", str(cfg)])
    assert result.exit_code == 2 and "exactly one of --cron or --interval" in text(result)


def test_summary_prints_a_reconciled_ledger(tmp_path):
    atomic_write_json(tmp_path / "summary.json", {
        "inputs": 5, "kept": 3, "rejected": 2, "rejected_by_reason": {"empty": 2}, "reconciled": True,
        "stages": [{"stage": "clean", "in": 5, "kept": 3, "rejected": 2, "rejected_by_reason": {"empty": 2}}]})
    result = runner.invoke(app, ["summary", str(tmp_path)])
    assert result.exit_code == 0 and "reconciled" in text(result) and "empty 2" in text(result)
    missing = runner.invoke(app, ["summary", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no summary.json" in text(missing)


def test_inspect_refuses_a_folder_without_manifest(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json" in text(result)


def test_start_services_brings_up_prefect_beside_ray_with_one_thread_workers():
    """Prefect's ephemeral server starts beside Ray (flows/startup.py), not at the first flow call:
    in a fresh process with no Prefect API configured, both answer before any flow has run, and a
    flow then runs against that server (its runs are in its database), while the command itself
    never imports Prefect's server package; a Ray task, holding one CPU, gets one polars thread
    (pipeline.runtime.WORKER_ENV)."""
    code = textwrap.dedent("""
        import os, sys, httpx, ray
        from flows.startup import start_services
        from pipeline.config import RayConfig
        start_services(RayConfig(num_cpus=2))
        url = os.environ["PREFECT_API_URL"]
        health = httpx.get(url + "/health").status_code
        from prefect import flow
        flow_run = flow(lambda: __import__("prefect.runtime").runtime.flow_run.id, name="probe")()
        found = httpx.get(url + f"/flow_runs/{flow_run}").json()
        threads = ray.get(ray.remote(lambda: __import__("polars").thread_pool_size()).remote())
        print(ray.is_initialized(), url.startswith("http://127.0.0.1:"), health,
              found["name"] is not None and found["id"] == flow_run, "prefect.server.api.server" in sys.modules, threads)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.stdout.split()[-6:] == ["True", "True", "200", "True", "False", "1"], done.stderr[-2000:]

"""`sluice serve` as a user meets it: scheduled runs through a real `flow.serve` and a local
`prefect server start`, its UI in headless Chromium, one serve per run root, and nothing left
behind by a SIGKILL or a SIGTERM (issue 14).

The tests share one served root and run in file order: the SIGKILL comes after the others used it.
"""
from __future__ import annotations

import contextlib
import gzip
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from flows.processes import kill_recorded
from flows.serve import LOCK_FILE, ServeRecord
from pipeline.democorpus import generate_corpus
from proctrack import Recorder, alive_after, listening
from browser import chromium

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # ceilings for a loaded 2-core machine
RUN_CEILING = 600  # seconds a scheduled run may take before the test gives up


def wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"sluice serve exited early while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def batches(root: Path) -> list[dict]:
    state = root / "incremental.json"
    return json.loads(state.read_text())["batches"] if state.is_file() else []


def lock_record(root: Path) -> ServeRecord | None:
    text = (root / LOCK_FILE).read_text() if (root / LOCK_FILE).is_file() else ""
    return ServeRecord.model_validate_json(text) if text.strip() else None


def fresh_article(tmp_path: Path) -> str:
    """An English article no earlier batch has seen: from a corpus with another seed."""
    other = generate_corpus(tmp_path / "other", n_docs=100, seed=11)
    path = sorted((tmp_path / "other" / "web").glob("*.jsonl.gz"))[0]
    for line in gzip.decompress(path.read_bytes()).splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if other.kinds.get(doc["id"]) == "article" and other.langs.get(doc["id"]) == "en":
                return doc["text"]
    raise AssertionError("no English article in the second corpus")


def near_copy(text: str) -> str:
    words = text.split(" ")
    words[len(words) // 2] = "remarkably"
    return " ".join(words)


@dataclass
class Served:
    proc: subprocess.Popen
    recorder: Recorder
    root: Path
    cfg_file: Path
    incoming: Path
    first_file: Path
    stdout: Path
    stderr: Path


def start_serve(cfg_file: Path, tmp_path: Path, tag: str) -> tuple[subprocess.Popen, Recorder, Path, Path]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    stdout, stderr = tmp_path / f"{tag}.out", tmp_path / f"{tag}.err"
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(cfg_file), "--interval", "5"],
                            cwd=ROOT, env=env, start_new_session=True,
                            stdout=open(stdout, "w"), stderr=open(stderr, "w"))
    return proc, Recorder(proc.pid), stdout, stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("serve")
    generate_corpus(tmp_path / "corpus", n_docs=150, seed=3)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    first = sorted((tmp_path / "corpus" / "web").glob("*.jsonl.gz"))[0]
    shutil.copy(first, incoming / first.name)
    root = tmp_path / "root"
    cfg = {"out": str(root), "inputs": [{"path": str(incoming), "source": "web"}],
           "ray": {"num_cpus": 2, "dashboard": False},
           "tokenize": {"vocab_size": 1000}, "dedup": {"fuzzy": {"threshold": 0.7}}}
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    proc, recorder, stdout, stderr = start_serve(cfg_file, tmp_path, "serve")
    try:
        wait_for(lambda: len(batches(root)) == 1, RUN_CEILING, proc, "the first scheduled run")
        yield Served(proc, recorder, root, cfg_file, incoming, incoming / first.name, stdout, stderr)
    finally:
        kill_recorded(recorder.stop())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def page_text(url: str) -> str:
    """The text of a page as headless Chromium renders it, scripts run and API answers in."""
    with tempfile.TemporaryDirectory(prefix="sluice-chromium-") as profile:
        dom = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--virtual-time-budget=20000", "--dump-dom", url],
            capture_output=True, text=True, timeout=180, check=True).stdout
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def completed_runs(api_url: str, deployment_id: str) -> list[dict]:
    request = urllib.request.Request(f"{api_url}/flow_runs/filter", method="POST",
                                     headers={"content-type": "application/json"},
                                     data=json.dumps({"flow_runs": {"deployment_id": {"any_": [deployment_id]},
                                                                    "state": {"type": {"any_": ["COMPLETED"]}}}}).encode())
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (CI installs it in .ci/run)")
def test_the_printed_ui_link_shows_the_deployment_its_schedule_and_a_run(served):
    server = lock_record(served.root).server
    with urllib.request.urlopen(f"{server.ui_url}/ui-settings", timeout=30) as r:
        assert json.load(r)["api_url"] == server.api_url  # the UI asks its own server, not :4200
    page = re.search(r"Prefect UI: (http://\S+/deployments/deployment/([0-9a-f-]+))", served.stdout.read_text())
    assert page and page.group(1).startswith(server.ui_url), served.stdout.read_text()
    text = page_text(page.group(1))
    assert "sluice-incremental" in text and "Every 5 seconds" in text, text[:2000]
    assert "Can't connect" not in text and "Oops" not in text
    wait_for(lambda: completed_runs(server.api_url, page.group(2)), 60, served.proc, "the first run's Completed state")
    run = completed_runs(server.api_url, page.group(2))[0]  # the scheduled run that made batch 1
    run_page = page_text(f"{server.ui_url}/runs/flow-run/{run['id']}")
    assert run["name"] in run_page and "Completed" in run_page and "sluice-incremental" in run_page, run_page[:2000]


def test_a_second_serve_on_the_same_root_is_refused(served):
    second = subprocess.run([sys.executable, "-m", "flows.cli", "serve", str(served.cfg_file), "--interval", "5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    said = " ".join(second.stdout.split())
    assert second.returncode == 2 and f"(pid {served.proc.pid}," in said and "already serves" in said, said
    assert served.proc.poll() is None and lock_record(served.root).serve.pid == served.proc.pid


def test_two_scheduled_runs_process_only_new_files(served, tmp_path):
    root, incoming = served.root, served.incoming
    kept = pq.read_table(root / "batches" / "00001" / "kept")
    long_en = kept.filter(pc.and_(pc.equal(kept["lang"], "en"), pc.greater(pc.utf8_length(kept["text"]), 2000)))
    original = long_en.slice(0, 1).to_pylist()[0]
    late = incoming / "late.jsonl.gz"
    records = [{"id": "late-copy", "text": near_copy(original["text"])}, {"id": "late-new", "text": fresh_article(tmp_path)}]
    late.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in records).encode()))
    wait_for(lambda: len(batches(root)) == 2, RUN_CEILING, served.proc, "a second run with the new file")
    first_batch, second_batch = batches(root)
    assert first_batch["files"] == [str(served.first_file)]
    assert second_batch["files"] == [str(late)]  # the old file was not processed again
    rejected = pq.read_table(root / "batches" / "00002" / "rejected").to_pylist()
    assert [(r["id"], r["reason"], r["duplicate_of"]) for r in rejected] == [
        ("late-copy", "near_duplicate", original["id"])]
    assert pq.read_table(root / "batches" / "00002" / "kept")["id"].to_pylist() == ["late-new"]
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    assert manifest["version"] == 2 and len(manifest["versions"]) == 2
    assert manifest["docs"] == kept.num_rows + 1


def test_sigkill_of_serve_leaves_no_process(served):
    record = lock_record(served.root)
    served.recorder.snapshot()
    os.kill(served.proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
    served.proc.wait()
    started = served.recorder.stop()
    assert {record.server.process.pid, record.watchdog.pid} <= {r.pid for r in started}
    assert alive_after(started, 60) == []
    assert not listening(record.server.port)
    with contextlib.suppress(ProcessLookupError):  # the group the test gave it is empty too
        os.killpg(served.proc.pid, 0)
        pytest.fail("a process is left in the process group of the killed sluice serve")


def test_a_restart_cleans_the_stale_lock_and_stops_on_sigterm(served, tmp_path):
    stale = lock_record(served.root)
    assert stale is not None and stale.serve.process() is None  # the killed serve's record is still there
    proc, recorder, stdout, stderr = start_serve(served.cfg_file, tmp_path, "restart")
    try:
        wait_for(lambda: (r := lock_record(served.root)) is not None and r.server is not None
                 and r.serve.pid == proc.pid, RUN_CEILING, proc, "the restarted serve's server")
        record = lock_record(served.root)
        said = " ".join((stdout.read_text() + stderr.read_text()).split())
        assert f"cleaned up the lock of a killed `sluice serve` (pid {stale.serve.pid})" in said, said[-3000:]
        recorder.snapshot()
        proc.send_signal(signal.SIGTERM)  # what a supervisor sends
        assert proc.wait(timeout=120) in (0, 128 + signal.SIGTERM)  # Prefect's runner, or Sluice before it started
        started = recorder.stop()
        assert alive_after(started, 60) == []
        assert not listening(record.server.port)
        assert lock_record(served.root) is None
    finally:
        kill_recorded(recorder.stop())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

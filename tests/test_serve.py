"""Scheduled incremental runs through a real `flow.serve` and a local `prefect server start`."""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.democorpus import generate_corpus

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"sluice serve exited early while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def batches(root: Path) -> list[dict]:
    state = root / "incremental.json"
    return json.loads(state.read_text())["batches"] if state.is_file() else []


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


@pytest.mark.slow
def test_two_scheduled_runs_process_only_new_files(tmp_path):
    corpus = generate_corpus(tmp_path / "corpus", n_docs=150, seed=3)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    first = sorted((tmp_path / "corpus" / "web").glob("*.jsonl.gz"))[0]
    shutil.copy(first, incoming / first.name)
    fresh = fresh_article(tmp_path)
    root = tmp_path / "root"
    cfg = {"out": str(root), "inputs": [{"path": str(incoming), "source": "web"}],
           "ray": {"num_cpus": 2, "dashboard": False}, "output": {"partitions": 2},
           "tokenize": {"vocab_size": 1000}, "dedup": {"fuzzy": {"threshold": 0.7}}}
    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(cfg_file), "--interval", "5"],
                            cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))
    try:
        wait_for(lambda: len(batches(root)) == 1, 300, proc, "the first scheduled run")
        kept = pq.read_table(root / "batches" / "00001" / "kept")
        long_en = kept.filter(pc.and_(pc.equal(kept["lang"], "en"), pc.greater(pc.utf8_length(kept["text"]), 2000)))
        original = long_en.slice(0, 1).to_pylist()[0]
        late = incoming / "late.jsonl.gz"
        records = [{"id": "late-copy", "text": near_copy(original["text"])}, {"id": "late-new", "text": fresh}]
        late.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in records).encode()))
        wait_for(lambda: len(batches(root)) == 2, 300, proc, "a second run with the new file")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first_batch, second_batch = batches(root)
    assert first_batch["files"] == [str(incoming / first.name)]
    assert second_batch["files"] == [str(late)]  # the old file was not processed again
    rejected = pq.read_table(root / "batches" / "00002" / "rejected").to_pylist()
    assert [(r["id"], r["reason"], r["duplicate_of"]) for r in rejected] == [
        ("late-copy", "near_duplicate", original["id"])]
    assert pq.read_table(root / "batches" / "00002" / "kept")["id"].to_pylist() == ["late-new"]
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    assert manifest["version"] == 2 and len(manifest["versions"]) == 2
    assert manifest["docs"] == kept.num_rows + 1
    assert corpus.n_records == 150

"""The curate flow end to end on real Ray and real Prefect: nothing lost, deterministic, resumable."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import ConfigError, parse_config
from pipeline.rundir import RunDir
from pipeline.summary import load_summary

ROOT = Path(__file__).resolve().parent.parent
SPINE_ONLY = {"quality": {"langid": {"enabled": False}, "rules": {"enabled": False}, "classifier": {"enabled": False}},
              "dedup": {"fuzzy": {"enabled": False}}, "tokenize": {"enabled": False}}


def config(inputs: list[dict], out: Path, **extra) -> dict:
    return {"out": str(out), "inputs": inputs, **SPINE_ONLY, **extra}


def run_curate(cfg: dict) -> dict:
    from flows.curate import curate

    return curate(parse_config(cfg))


def tree_digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every file under kept/ and rejected/."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for sub in ("kept", "rejected") for p in sorted((run_dir / sub).glob("*.parquet"))}


def ledger(run_dir: Path) -> dict[str, tuple[str, str]]:
    rows = pq.read_table(run_dir / "rejected").select(["id", "reason", "detail"]).to_pylist()
    return {r["id"]: (r["reason"], r["detail"]) for r in rows}


def test_missing_path_stops_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="inputs.0.path: input path does not exist"):
        parse_config(config([{"path": str(tmp_path / "missing.jsonl")}], tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_bad_input_matrix_loses_nothing(bad_inputs, tmp_path, ray_cluster, prefect_harness):
    out = tmp_path / "run"
    summary = run_curate(config([{"path": str(bad_inputs)}], out))
    assert summary.inputs == summary.kept + summary.rejected
    reasons = {k: v[0] for k, v in ledger(out).items()}
    assert reasons["empty"] == "empty" and "too_long" in reasons.values()
    assert "malformed_json" in reasons.values() and "missing_text" in reasons.values()
    assert "truncated" in reasons.values()
    details = {v[0]: v[1] for v in ledger(out).values()}
    assert "mixed.jsonl:2" in details["malformed_json"] and "mixed.jsonl:4" in details["missing_text"]
    assert "mixed.jsonl:6" in details["too_long"]  # rejected while read: its 20 MB never became one string
    assert "cut.jsonl.gz" in details["truncated"]
    kept = pq.read_table(out / "kept")
    texts = dict(zip(kept["id"].to_pylist(), kept["text"].to_pylist()))
    assert texts["latin"] == "café au lait"  # invalid UTF-8 decoded by detection, not lost
    assert any("Grüße aus Köln" in t for t in texts.values())  # UTF-16 with BOM
    assert {"ok-1", "ok-2"} <= texts.keys()
    assert sum(1 for i in texts if i.startswith("gz-")) > 0  # records before the truncation survive
    assert load_summary(out) == summary


def test_a_run_that_rejects_everything_still_reconciles(tmp_path, ray_cluster, prefect_harness):
    (tmp_path / "blank.jsonl").write_text("".join(json.dumps({"id": f"b{i}", "text": " "}) + "\n" for i in range(3)))
    cfg = config([{"path": str(tmp_path / "blank.jsonl")}], tmp_path / "run")
    cfg["dedup"] = {"fuzzy": {"enabled": True}}
    summary = run_curate(cfg)
    assert (summary.inputs, summary.kept, summary.rejected_by_reason) == (3, 0, {"empty": 3})
    assert [(s.stage, s.inputs) for s in summary.stages] == [
        ("ingest", 3), ("clean", 3), ("duplicate_id", 0), ("exact_dedup", 0), ("fuzzy_dedup", 0)]


def _shared_inputs(shared: Path) -> list[dict]:
    return [{"path": str(shared / "cc-web-docs"), "source": "cc"},
            {"path": str(shared / "sms-spam" / "SMSSpamCollection.tsv"), "text_field": "SMS", "id_field": None}]


def test_tasks_in_flight_do_not_change_output_and_stages_leave_no_scratch(shared_data, tmp_path, ray_cluster,
                                                                         prefect_harness, monkeypatch):
    """One task at a time against eight: which task finishes first must not reach the bytes (letters
    are read in name order, decisions sorted by row)."""
    import flows.curate
    import pipeline.runtime

    digests = []
    for i, in_flight in enumerate([1, 8]):
        for module in (pipeline.runtime, flows.curate):
            monkeypatch.setattr(module, "default_in_flight", lambda n=in_flight: n)
        run_curate(config(_shared_inputs(shared_data), tmp_path / f"run{i}"))
        digests.append(tree_digest(tmp_path / f"run{i}"))
    assert digests[0] == digests[1] and len(digests[0]) >= 5
    summary = load_summary(tmp_path / "run0")
    assert summary.rejected_by_reason["exact_duplicate"] >= 403  # the SMS set's repeated copies
    stages = list((tmp_path / "run0" / "stages").iterdir())
    assert len(stages) == 3 and not any(RunDir.exchange(s).exists() for s in stages)  # mailboxes go with their stage


def test_killed_run_resumes_on_one_cpu_and_matches(shared_data, tmp_path, ray_cluster, prefect_harness):
    reference = tmp_path / "reference"
    run_curate(config(_shared_inputs(shared_data), reference))

    out = tmp_path / "resumed"
    cfg_file = tmp_path / "one-cpu.yaml"
    cfg_file.write_text(yaml.safe_dump(config(_shared_inputs(shared_data), out,
                                              ray={"num_cpus": 1, "dashboard": False})))
    cmd = [sys.executable, "-m", "flows.cli", "run", str(cfg_file)]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "pieces" / "read" / "piece-00000" / "_SUCCESS.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never finished its first piece"
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    ingest_marker = marker.read_bytes()

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert marker.read_bytes() == ingest_marker  # the finished piece was skipped, not redone
    assert "skipped" in done.stdout + done.stderr
    assert tree_digest(out) == tree_digest(reference)
    assert load_summary(out) == load_summary(reference)


def test_a_changed_rule_reruns_from_the_rules_on_and_skips_ingest_and_clean(tmp_path, ray_cluster, prefect_harness):
    text = ("The river runs past the old mill and the small town, where the people gather every morning to "
            "talk about the weather, the harvest and the news from the city. It is a quiet place to live in "
            "the summer, and the children swim in the clear water near the bridge while their parents work. "
            "In the evening the whole village walks along the bank and watches the sun go down over the hills.")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"{text} Day {i}."}) + "\n"
                                              for i in range(40)))
    cfg = config([{"path": str(tmp_path / "a.jsonl")}], tmp_path / "run",
                 quality={"langid": {"enabled": True}, "rules": {"enabled": True}})
    run_curate(cfg)
    markers = {p: p.read_bytes() for p in (tmp_path / "run").rglob("_SUCCESS.json")}
    cfg["quality"]["rules"]["params"] = {"gopher.word_count.min": 10_000}  # every document now too short
    summary = run_curate(cfg)
    assert summary.rejected_by_reason == {"gopher.word_count": 40}
    changed = {p.relative_to(tmp_path / "run").parts[:2] for p, old in markers.items() if p.read_bytes() != old}
    assert changed == {("pieces", "judge"), ("stages", "duplicate_id"), ("stages", "exact_dedup"), ("stages", "final")}


def test_reused_ids_in_two_sources_never_share_a_fate_through_sluice_run(tmp_path):
    """(a,"1",T), (a,"2",near copy of T), (b,"2",unrelated): only (a,"2") is a near duplicate."""
    words = ("the harbour town woke slowly while fishing boats came back with the tide and the market "
             "stalls opened one by one under a grey sky that promised rain before noon").split()
    text = " ".join(words * 3)
    near = text.rsplit(" ", 1)[0] + " tomorrow"
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "1", "text": text}) + "\n"
                                      + json.dumps({"id": "2", "text": near}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "2", "text": "An unrelated note about trains, "
                                                  "timetables and the night service to the coast."}) + "\n")
    cfg = config([{"path": str(tmp_path / "a.jsonl")}, {"path": str(tmp_path / "b.jsonl")}], tmp_path / "run",
                 dedup={"fuzzy": {"enabled": True}})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(tmp_path / "c.yaml")], cwd=ROOT,
                          env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rejected = pq.read_table(tmp_path / "run" / "rejected").to_pylist()
    assert [(r["source"], r["id"], r["reason"], r["duplicate_of_source"], r["duplicate_of"]) for r in rejected] == [
        ("a", "2", "near_duplicate", "a", "1")]
    kept = pq.read_table(tmp_path / "run" / "kept")
    assert sorted(zip(kept["source"].to_pylist(), kept["id"].to_pylist())) == [("a", "1"), ("b", "2")]


def test_youtube_repeated_ids_are_rejected_and_every_other_row_judged_by_its_own_text(
        shared_data, tmp_path, ray_cluster, prefect_harness):
    """Two YouTube exports repeat a comment id (3 ids): each later record is a `duplicate_id` naming the
    first's file and line; exact dedup decides every other row by its own cleaned text, the keeper of
    each text being its smallest (source, id)."""
    files = sorted((shared_data / "youtube-spam").glob("*.csv"))
    inputs = [{"path": str(f), "text_field": "CONTENT", "id_field": "COMMENT_ID"} for f in files]
    run_curate(config(inputs, tmp_path / "run"))
    cleaned = [r for f in sorted((tmp_path / "run" / "pieces" / "read").glob("*/kept.parquet"))
               for r in pq.read_table(f).to_pylist()]  # ingest + clean output, in input order
    first_origin: dict[tuple[str, str], str] = {}
    for r in cleaned:
        first_origin.setdefault((r["source"], r["id"]), r["origin"])
    rejected = pq.read_table(tmp_path / "run" / "rejected").to_pylist()
    repeats = {(r["source"], r["id"]): r["detail"] for r in rejected if r["reason"] == "duplicate_id"}
    assert len(repeats) == 3
    for key, detail in repeats.items():
        assert detail.endswith(first_origin[key]) and ".csv:" in first_origin[key]
    rows = [(r["source"], r["id"], r["text"]) for r in cleaned if r["origin"] == first_origin[(r["source"], r["id"])]]
    keeper: dict[str, tuple[str, str]] = {}
    for source, doc_id, text in sorted(rows):
        keeper.setdefault(text, (source, doc_id))
    expected = {(s, i): keeper[t] for s, i, t in rows if keeper[t] != (s, i)}
    found = {(r["source"], r["id"]): (r["duplicate_of_source"], r["duplicate_of"]) for r in rejected
             if r["reason"] == "exact_duplicate"}
    assert found == expected and expected

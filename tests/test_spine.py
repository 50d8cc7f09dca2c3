"""The spine without Ray: config validation, ledger algebra, clean, atomic run folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from pydantic import BaseModel

from pipeline.config import CleanConfig, ConfigError, SluiceConfig, load_config, parse_config
from flows.curate import plan_curate
from pipeline.ledger import LedgerMismatch, StageCount, rejected_rows
from pipeline.rundir import RunDir, RunLocked, atomic_dir, read_marker, safe_join
from pipeline.schema import DOC_SCHEMA, REJECTED_SCHEMA
from pipeline.stage import PlanError
from pipeline.summary import RunSummary, build_summary
from stages import clean

ROOT = Path(__file__).resolve().parent.parent


def docs(texts: list[str], source: str = "s") -> pa.Table:
    n = len(texts)
    return pa.Table.from_pydict({"id": [f"d{i:03d}" for i in range(n)], "text": texts, "source": [source] * n,
                                 "url": [None] * n, "meta": [None] * n, "origin": [None] * n},
                                schema=DOC_SCHEMA)


# -- config -------------------------------------------------------------------------------------

def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ConfigError, match=r"dedup\.fuzzy\.treshold: unknown key"):
        parse_config({"dedup": {"fuzzy": {"treshold": 0.9}}})


def test_wrong_type_and_range_are_named():
    with pytest.raises(ConfigError) as err:
        parse_config({"dedup": {"fuzzy": {"threshold": 1.5, "num_perm": "many"}}})
    assert "dedup.fuzzy.threshold" in str(err.value) and "dedup.fuzzy.num_perm" in str(err.value)


def test_missing_input_path_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"inputs\.0\.path: input path does not exist: .*nope"):
        parse_config({"inputs": [{"path": str(tmp_path / "nope")}]})


def test_bands_and_rows_must_come_together():
    with pytest.raises(ConfigError, match="set both bands and rows"):
        parse_config({"dedup": {"fuzzy": {"bands": 8}}})


def test_broken_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name != "inputs":
            keys |= _keys(ann, f"{prefix}{name}.")
    return keys


def _yaml_keys(data, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in data.items():
        keys.add(prefix + k)
        if isinstance(v, dict) and k != "params":
            keys |= _yaml_keys(v, f"{prefix}{k}.")
    return keys


def test_demo_yaml_documents_every_key():
    data = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    assert _keys(SluiceConfig) == _yaml_keys(data)
    lines = (ROOT / "examples" / "demo.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("inputs:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("ray:"))
    body = lines[: start + 1] + lines[end:]  # the input examples repeat InputSpec's keys
    for line in body:
        if line.strip() and not line.lstrip().startswith("#") and not line.split("#")[0].rstrip().endswith(":"):
            assert "#" in line, f"undocumented key in demo.yaml: {line.strip()}"


# -- ledger -------------------------------------------------------------------------------------

def test_rejected_rows_keep_typed_annotations():
    tagged = docs(["c"]).append_column("lang", pa.array(["de"])).append_column("lang_score", pa.array([0.4]))
    rejected = rejected_rows(tagged, "langid", "language", "why")
    assert rejected.schema == REJECTED_SCHEMA
    assert rejected.select(["lang", "lang_score", "quality_score", "reason"]).to_pylist() == [
        {"lang": "de", "lang_score": 0.4, "quality_score": None, "reason": "language"}]


def test_summary_refuses_a_broken_chain_and_round_trips():
    a = StageCount.of("ingest", 10, 8, {"malformed_json": 2})
    b = StageCount.of("clean", 7, 7, {})
    with pytest.raises(LedgerMismatch, match="clean"):
        build_summary([a, b])
    with pytest.raises(LedgerMismatch):
        StageCount.of("x", 5, 3, {"empty": 1}).check()
    good = build_summary([a, StageCount.of("clean", 8, 6, {"empty": 2})])
    assert (good.inputs, good.kept, good.rejected) == (10, 6, 4)
    assert '"in": 10' in good.to_json()
    assert RunSummary.model_validate_json(good.to_json()) == good
    assert (a + StageCount.of("ingest", 5, 5, {})).inputs == 15


# -- clean --------------------------------------------------------------------------------------

def test_clean_normalises_and_rejects_empty():
    out = clean.process(docs(["  Cafe\u0301\t\tau  lait\r\n\n\n\nfin\x07 ", "\u200b \n\t", "ok"]), CleanConfig())
    assert out.kept["text"].to_pylist() == ["Caf\u00e9 au lait\n\nfin", "ok"]
    assert out.rejected["id"].to_pylist() == ["d001"] and out.rejected["reason"].to_pylist() == ["empty"]


@pytest.mark.parametrize("form", ["NFC", "NFKC"])
def test_clean_normalises_exactly_as_arrow_even_characters_newer_than_pythons_unicode(form):
    """Python's quick check only clears rows; characters it does not know still reach Arrow's
    normaliser (Unicode 16's outlined letters fold under NFKC; Kirat Rai vowels compose under NFC)."""
    texts = ["\U0001ccd6 outlined", "\U00016d67\U00016d67 kirat", "Cafe\u0301", "\ufb01ne", "plain ascii", "d\u00e9j\u00e0"]
    got = clean.clean_text(pa.array(texts), CleanConfig(unicode_form=form, collapse_whitespace=False))
    assert got.to_pylist() == pc.utf8_normalize(pa.array(texts), form).to_pylist()
    assert got[0].as_py() != texts[0] if form == "NFKC" else got[1].as_py() != texts[1]  # the case that needs Arrow


def test_clean_leaves_right_spacing_alone_and_fixes_the_rest():
    texts = ["a b\nc", "a  b \n c", "a\tb\u00a0c", "a\n\n\n\nb", " \n x \n "]
    got = clean.clean_text(pa.array(texts), CleanConfig())
    assert got.to_pylist() == ["a b\nc", "a b\nc", "a b\u00a0c", "a\n\nb", "x"]  # RE2's \s is ASCII: NBSP stays


# -- run directory ------------------------------------------------------------------------------

def test_uncommitted_folder_is_invisible_and_commit_is_atomic(tmp_path):
    final = RunDir(tmp_path).stage_path("clean")
    with pytest.raises(RuntimeError):
        with atomic_dir(final, {"fingerprint": "fp"}) as tmp:
            (tmp / "kept.parquet").write_bytes(b"half")
            raise RuntimeError("killed mid-stage")
    assert not final.exists() and not list(final.parent.glob(".clean.tmp-*"))
    marker: dict = {}
    with atomic_dir(final, marker) as tmp:
        (tmp / "kept.parquet").write_bytes(b"whole")
        assert read_marker(tmp, "fp") is None  # half-built: a rerun must not mistake it for output
        marker["fingerprint"] = "fp"
    assert read_marker(final, "fp") == {"fingerprint": "fp"} and read_marker(final, "other") is None
    with atomic_dir(final, {"fingerprint": "new"}) as tmp:  # replacing keeps the old one until the rename
        (tmp / "kept.parquet").write_bytes(b"newer")
    assert (final / "kept.parquet").read_bytes() == b"newer" and not list(final.parent.glob(".clean.*"))


def test_a_second_writer_of_a_run_fails_at_once_naming_the_holder(tmp_path):
    code = ("import sys, time; from pipeline.rundir import RunDir\n"
            "with RunDir(sys.argv[1]).lock():\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"in use by another Sluice run \\(pid {holder.pid}\\)"):
            with RunDir(tmp_path).lock():
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunDir(tmp_path).lock():  # the holder died: its lock died with it
        with RunDir(tmp_path).lock():  # and one process may nest its own flows
            pass


def test_a_stage_reading_a_column_no_earlier_stage_adds_fails_when_planned(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "1", "text": "x"}\n')
    cfg = parse_config({"inputs": [{"path": str(tmp_path / "a.jsonl")}], "out": str(tmp_path / "run"),
                        "quality": {"langid": {"enabled": False}}})
    with pytest.raises(PlanError, match="stage 'rules' reads \\['lang'\\]"):
        plan_curate(cfg)
    assert not (tmp_path / "run").exists()


def test_safe_join_refuses_escapes(tmp_path):
    assert safe_join(tmp_path, "a/b.arrow") == (tmp_path / "a" / "b.arrow").resolve()
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(ValueError, match="escapes"):
            safe_join(tmp_path, bad)


def test_every_row_local_stage_takes_an_empty_batch():
    """A piece's batch can be empty (everything before was rejected): no stage may choke or loop on it."""
    from pipeline.config import QualityConfig
    from pipeline.schema import KEPT_SCHEMA
    from stages import langid, quality, rules

    q = QualityConfig()
    empty = pa.Table.from_batches([], KEPT_SCHEMA)  # zero chunks, as a filter of everything leaves it
    for stage in (clean.build(CleanConfig()), langid.build(q.langid), rules.build(q.rules), quality.build(q.classifier)):
        out = stage.process(empty)
        assert out.kept.num_rows == out.rejected.num_rows == 0, stage.name

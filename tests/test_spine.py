"""The spine without Ray: config validation, ledger algebra, clean, atomic run folders."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from pydantic import BaseModel

from pipeline.config import CleanConfig, ConfigError, SluiceConfig, load_config, parse_config
from pipeline.ledger import LedgerMismatch, StageCount, StageResult, combine, rejected_rows, split
from pipeline.rundir import RunDir, safe_join
from pipeline.schema import DOC_SCHEMA, REJECTED_SCHEMA
from pipeline.summary import build_summary
from stages import clean

ROOT = Path(__file__).resolve().parent.parent


def docs(texts: list[str], source: str = "s") -> pa.Table:
    n = len(texts)
    return pa.Table.from_pydict({"id": [f"d{i:03d}" for i in range(n)], "text": texts, "source": [source] * n,
                                 "url": [None] * n, "meta": [None] * n}, schema=DOC_SCHEMA)


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

def test_combine_split_roundtrip_keeps_extra_columns():
    kept = docs(["a", "b"]).append_column("lang", pa.array(["en", "de"]))
    rejected = rejected_rows(docs(["c"]), "x", "empty", "why")
    back = split(combine(StageResult(kept, rejected)))
    assert back.kept.equals(kept)
    assert back.rejected.schema == REJECTED_SCHEMA and back.rejected["reason"].to_pylist() == ["empty"]


def test_summary_refuses_a_broken_chain():
    a = StageCount("ingest", 10, 8, {"malformed_json": 2})
    b = StageCount("clean", 7, 7, {})
    with pytest.raises(LedgerMismatch, match="clean"):
        build_summary([a, b])
    with pytest.raises(LedgerMismatch):
        StageCount("x", 5, 3, {"empty": 1}).check()
    good = build_summary([a, StageCount("clean", 8, 6, {"empty": 2})])
    assert (good["inputs"], good["kept"], good["rejected"]) == (10, 6, 4)


# -- clean --------------------------------------------------------------------------------------

def test_clean_normalises_and_rejects_empty():
    out = clean.process(docs(["  Cafe\u0301\t\tau  lait\r\n\n\n\nfin\x07 ", "\u200b \n\t", "ok"]), CleanConfig())
    assert out.kept["text"].to_pylist() == ["Caf\u00e9 au lait\n\nfin", "ok"]
    assert out.rejected["id"].to_pylist() == ["d001"] and out.rejected["reason"].to_pylist() == ["empty"]


# -- run directory ------------------------------------------------------------------------------

def test_uncommitted_stage_is_invisible_and_commit_is_atomic(tmp_path):
    run = RunDir(tmp_path)
    tmp = run.begin("clean")
    (tmp / "kept").mkdir()
    assert run.finished("clean", "fp") is None  # half-built: a rerun must not mistake it for output
    run.commit("clean", tmp, {"fingerprint": "fp"})
    assert run.finished("clean", "fp") == {"fingerprint": "fp"}
    assert run.finished("clean", "other") is None
    assert not list(run.stages.glob(".clean.tmp-*"))


def test_safe_join_refuses_escapes(tmp_path):
    assert safe_join(tmp_path, "a/b.arrow") == (tmp_path / "a" / "b.arrow").resolve()
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(ValueError, match="escapes"):
            safe_join(tmp_path, bad)

"""Names that become paths are checked before any work; Ray's token auth is asked for, never assumed."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import RayConfig
from pipeline.runtime import RayAuthError, choose_auth_mode

runner = CliRunner()


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", "..", ".hidden", "nul\x00byte", "tab\there", "back\\slash", ""])
@pytest.mark.parametrize("key", ["train.run_name", "inputs.0.source"])
def test_validate_rejects_a_name_that_could_leave_its_folder(tmp_path, key, name):
    data = {"inputs": [{"path": str(tmp_path)}], "out": str(tmp_path / "run")}
    section, field = key.split(".", 1)
    if section == "train":
        data["train"] = {"run_name": name}
    else:
        data["inputs"][0]["source"] = name
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 2, result.output
    assert key in " ".join(result.output.split())


@pytest.mark.parametrize("name", ["train", "run-2026.12_a", "web crawl", "données"])
def test_validate_accepts_plain_names(tmp_path, name):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"inputs": [{"path": str(tmp_path), "source": name}],
                                      "train": {"run_name": name}}))
    assert runner.invoke(app, ["validate", str(config)]).exit_code == 0


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    """A user with no Ray token anywhere and no auth settings; Ray's token cache reset afterwards."""
    from ray._raylet import AuthenticationTokenLoader

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    yield tmp_path
    AuthenticationTokenLoader.instance().reset_cache()  # next lookup re-reads the real environment


def test_joining_a_cluster_without_a_token_says_what_to_set(no_token):
    with pytest.raises(RayAuthError, match=r"~/.ray/auth_token.*RAY_AUTH_TOKEN.*allow_unauthenticated"):
        choose_auth_mode(RayConfig(), remote=True)
    assert choose_auth_mode(RayConfig(allow_unauthenticated=True), remote=True) == "disabled"


@pytest.mark.parametrize("where", ["home", "env", "path"])
def test_joining_a_cluster_uses_the_token_wherever_ray_looks(no_token, monkeypatch, where):
    token = "0123456789abcdef" * 4
    if where == "home":
        (no_token / ".ray").mkdir()
        (no_token / ".ray" / "auth_token").write_text(token)
    elif where == "env":
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    else:
        (no_token / "tok").write_text(token)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(no_token / "tok"))
    assert choose_auth_mode(RayConfig(), remote=True) == "token"


def test_the_embedded_cluster_always_asks_for_token_auth(no_token, monkeypatch):
    assert choose_auth_mode(RayConfig(), remote=False) == "token"  # Ray writes a fresh token if none exists
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(RayAuthError, match="RAY_AUTH_MODE=disabled.*allow_unauthenticated"):
        choose_auth_mode(RayConfig(), remote=False)
    assert choose_auth_mode(RayConfig(allow_unauthenticated=True), remote=False) == "disabled"
    monkeypatch.setenv("RAY_AUTH_MODE", "tokn")
    with pytest.raises(RayAuthError, match="not a Ray auth mode"):
        choose_auth_mode(RayConfig(allow_unauthenticated=True), remote=False)

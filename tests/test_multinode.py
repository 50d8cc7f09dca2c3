"""Multi-node, as a user does it: `ray start --head`, a second node joining it, then
`RAY_ADDRESS=HOST:PORT sluice run` with nothing else set, and the same bytes as the embedded cluster.

The two nodes run on this machine with one CPU and a temp dir each, started the way a user starts
them: the token sits in ~/.ray/auth_token (HOME is a fresh folder here) and `sluice` gets no
RAY_AUTH_MODE, which is exactly the case that used to fail after 30 s of InvalidAuthToken warnings.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
CLEAN_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def user_env(home: Path) -> dict[str, str]:
    """A user's shell: their HOME, this checkout importable, no Ray address or auth settings."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    # No drain on SIGTERM: `ray start --block` then stops at once instead of after 30 s.
    return env | {"HOME": str(home), "PYTHONPATH": str(ROOT), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sluice(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every file under kept/ and rejected/."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for sub in ("kept", "rejected") for p in sorted((run_dir / sub).rglob("*")) if p.is_file()}


@contextlib.contextmanager
def ray_node(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`ray start ARGS --block` in a session of its own; stopped, with everything it spawned, on exit.

    Killing by session (never `ray stop`, which stops every Ray on the machine) leaves other users'
    clusters alone; `--block` keeps the node's processes under the one we started.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen([RAY, "start", *args, "--block"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        for p in session_processes(proc.pid):  # whatever ignored the SIGTERM
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait()
        psutil.wait_procs(session_processes(proc.pid), timeout=10)


def session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


WAIT_FOR_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 90
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    assert time.monotonic() < deadline, ray.nodes()
    time.sleep(0.5)
"""


@contextlib.contextmanager
def two_node_cluster(home: Path, logs: Path) -> Iterator[str]:
    """A head and a worker node, one CPU each; yields the head's address once both are alive."""
    env = user_env(home)
    # `ray start --head` turns token auth on by itself when ~/.ray/auth_token exists; joining nodes (like
    # any `ray.init(address=...)`) need RAY_AUTH_MODE=token, as Ray's docs say. Sluice sets it itself.
    token_mode = {"RAY_AUTH_MODE": "token"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Short temp dirs: Ray's Unix sockets live under them and their paths are limited to 107 bytes.
    head_tmp, worker_tmp = (tempfile.mkdtemp(prefix=f"sl-{n}-", dir="/tmp") for n in ("h", "w"))
    sessions: list[int] = []
    try:
        with ray_node(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                       "--include-dashboard", "false", "--temp-dir", head_tmp], env, logs / "head.log") as head, \
             ray_node(["--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                       "--temp-dir", worker_tmp], env | token_mode, logs / "worker.log") as worker:
            sessions += [head.pid, worker.pid]
            ready = subprocess.run([sys.executable, "-c", WAIT_FOR_NODES, address, "2"], timeout=180,
                                   env=env | token_mode, capture_output=True, text=True)
            assert ready.returncode == 0, ready.stderr[-3000:] + (logs / "head.log").read_text()[-2000:]
            yield address
    finally:
        for d in (head_tmp, worker_tmp):
            shutil.rmtree(d, ignore_errors=True)
    assert not [p for sid in sessions for p in session_processes(sid)], "a Ray process outlived the cluster"


def write_corpus(shared_data: Path, path: Path, n_docs: int = 240, seed: int = 0) -> None:
    """Real web documents, some exact and some edited near copies so both dedups have work to do."""
    rng = random.Random(seed)
    with gzip.open(shared_data / "cc-web-docs" / "dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz", "rt") as fh:
        texts = [t for t in (json.loads(line)["text"] for line in fh) if len(t.split()) >= 50][:n_docs]
    rows = [{"id": f"doc-{i:04d}", "text": t} for i, t in enumerate(texts)]
    for i, t in enumerate(rng.sample(texts, 30)):
        words = t.split()
        for _ in range(len(words) // 50):
            words[rng.randrange(len(words))] = rng.choice(["river", "lamp", "orbit"])
        rows.append({"id": f"near-{i:03d}", "text": " ".join(words)})
    rows += [{"id": f"exact-{i:03d}", "text": t} for i, t in enumerate(rng.sample(texts, 10))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def user_home(tmp_path) -> Path:
    """A HOME whose ~/.ray/auth_token holds a token, as `ray get-auth-token --generate` leaves it."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    return home


@pytest.mark.slow
@pytest.mark.timeout(1500)  # two CLI runs and a cluster start: about 3 minutes on a quiet 2-core machine
def test_run_through_ray_address_matches_the_embedded_cluster(shared_data, user_home, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(shared_data, corpus)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "inputs": [{"path": str(corpus)}], "tokenize": {"enabled": False},
        "ray": {"dashboard": False, "num_cpus": 2},
    }))
    env = user_env(user_home)

    embedded = sluice(["run", str(config), "--out", str(tmp_path / "embedded")], env)
    assert embedded.returncode == 0, embedded.stdout + embedded.stderr

    with two_node_cluster(user_home, tmp_path) as address:
        # The run directory is at the same path on both "nodes": the shared storage a cluster needs.
        remote = sluice(["run", str(config), "--out", str(tmp_path / "remote")], env | {"RAY_ADDRESS": address})
    assert remote.returncode == 0, remote.stdout + remote.stderr
    assert "InvalidAuthToken" not in remote.stdout + remote.stderr

    reference = digest(tmp_path / "embedded")
    assert reference and any(k.startswith("rejected/") for k in reference)
    assert digest(tmp_path / "remote") == reference
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("embedded", "remote")]
    assert summaries[0] == summaries[1]
    assert summaries[0]["rejected_by_reason"].get("exact_duplicate") and summaries[0]["rejected_by_reason"].get("near_duplicate")


def test_ray_address_without_a_token_fails_at_once_saying_what_to_set(tmp_path):
    """No token anywhere: a clear error before any connection attempt, not 30 s of retries."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "1", "text": "one document"}) + "\n")
    home = tmp_path / "empty-home"
    home.mkdir()
    env = user_env(home) | {"RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
    result = sluice(["run", "--input", str(corpus), "--out", str(tmp_path / "out")], env)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output
    assert "no Ray auth token found" in output and "~/.ray/auth_token" in output and "RAY_AUTH_TOKEN" in output
    assert "Failed to connect" not in output

"""The run directory: atomic, resumable stage outputs.

    RUN/stages/<NN-name>/{kept,rejected}/part-00000.parquet   one folder per stage
    RUN/stages/<NN-name>/_SUCCESS.json                          fingerprint + counts, written last
    RUN/kept/, RUN/rejected/                                     the run's final view (hard links)
    RUN/summary.json                                             per-stage ledger, reconciled

A stage is built in a temporary sibling folder and renamed into place when complete, so a killed
run leaves only folders a rerun ignores. A finished stage is skipped when its fingerprint (hash of
its config, its inputs and its upstream's fingerprint) still matches.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import xxhash

MARKER = "_SUCCESS.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def file_digest(path: str | Path) -> str:
    """A fast content hash of a whole file (xxh3-128): what tells a changed input from a seen one."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def safe_join(root: Path, relative: str) -> Path:
    """Join a path read from a manifest to its root, refusing anything that leaves the root."""
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"path {relative!r} escapes its root {root}")
    return target


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.stages = self.root / "stages"

    def stage_path(self, name: str) -> Path:
        return self.stages / name

    def finished(self, name: str, fingerprint: str) -> dict | None:
        """The stage's marker if it finished with this fingerprint, else None."""
        marker = self.stage_path(name) / MARKER
        if not marker.is_file():
            return None
        data = json.loads(marker.read_text())
        return data if data.get("fingerprint") == fingerprint else None

    def begin(self, name: str) -> Path:
        """A fresh temporary folder to build stage `name` in."""
        self.stages.mkdir(parents=True, exist_ok=True)
        for stale in self.stages.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.stages / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        return tmp

    def commit(self, name: str, tmp: Path, marker: dict) -> Path:
        """Write the marker last, then move the finished folder into place."""
        atomic_write_json(tmp / MARKER, marker)
        final = self.stage_path(name)
        if final.exists():
            trash = self.stages / f".{name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def publish(self, stage_names: list[str]) -> None:
        """Expose the last stage's kept rows and every stage's rejected rows at the run's top level."""
        for sub in ("kept", "rejected"):
            tmp = self.root / f".{sub}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            sources = stage_names[-1:] if sub == "kept" else stage_names
            for stage in sources:
                for f in sorted((self.stage_path(stage) / sub).glob("*.parquet")):
                    name = f.name if sub == "kept" else f"{stage}-{f.name}"
                    os.link(f, tmp / name)
            final = self.root / sub
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)

"""The run directory: the one place that knows its layout, and how its parts are committed.

    RUN/pieces/<segment>/piece-NNNNN/   a row-local segment's output for one input piece:
                                        kept.parquet, rejected.parquet, _SUCCESS.json (written last)
    RUN/stages/<stage>/                 a shuffle stage (dedup): decisions/piece-NNNNN.parquet, its indexes
    RUN/stages/final/{kept,rejected}/   every piece with the decisions applied, part-NNNNN.parquet
    RUN/kept/, RUN/rejected/            the run's published view of stages/final (hard links)
    RUN/config.json                     the effective config of the last run (what the report shows)
    RUN/summary.json, report.html, run_info.json, shards/, train/
    RUN/.lock                           held by the one flow that writes this run

Everything is built in a temporary sibling, fsynced, and renamed into place, so a killed run leaves
only folders a rerun ignores, and a power loss cannot leave a marker pointing at unwritten bytes. A
finished part is skipped when the fingerprint in its marker still matches.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import xxhash

from pipeline import chaos

MARKER = "_SUCCESS.json"
PIECE_FILE = "piece-{:05d}.parquet"
PART_FILE = "part-{:05d}.parquet"


class RunLocked(RuntimeError):
    """Another flow is writing this run directory."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk: what a rename then publishes is really there."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(Path(folder) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write (streaming, by any writer), fsynced and renamed onto
    `path` when the block ends; an error leaves `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    chaos.reached("write.before_rename")
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; an older one is moved aside first, never deleted before."""
    trash = None
    if final.exists():
        trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path, marker: dict | None = None) -> Iterator[Path]:
    """Build `final` in a temporary sibling; on success fsync it, write `marker` last and rename it in.

    Temporary siblings left by a killed earlier attempt are removed first (the run lock guarantees
    no live writer owns them).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        chaos.reached("dir.before_marker")
        if marker is not None:
            atomic_write_json(tmp / MARKER, marker)
        chaos.reached("dir.before_rename")
        replace_dir(tmp, final)
        chaos.reached("dir.after_rename")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def read_marker(folder: Path, fingerprint: str) -> dict | None:
    """The folder's marker if it finished with this fingerprint, else None."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    data = json.loads(marker.read_text())
    return data if data.get("fingerprint") == fingerprint else None


_HELD: dict[Path, int] = {}  # run roots this process has locked, with their nesting depth


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.stages = self.root / "stages"
        self.kept = self.root / "kept"
        self.rejected = self.root / "rejected"
        self.summary_file = self.root / "summary.json"
        self.config_file = self.root / "config.json"
        self.report_file = self.root / "report.html"
        self.run_info_file = self.root / "run_info.json"
        self.shards = self.root / "shards"
        self.train = self.root / "train"
        self.final = self.stages / "final"

    def segment_piece(self, segment: str, piece: int) -> Path:
        return self.root / "pieces" / segment / f"piece-{piece:05d}"

    def stage_path(self, name: str) -> Path:
        return self.stages / name

    @staticmethod
    def decisions_file(stage_dir: Path, piece: int) -> Path:
        return stage_dir / "decisions" / PIECE_FILE.format(piece)

    @staticmethod
    def exchange(stage_dir: Path) -> Path:
        """A shuffle stage's mailboxes while it runs (`pipeline.mailbox`), removed when it ends."""
        return stage_dir / ".exchange"

    @staticmethod
    def part_file(folder: Path, piece: int) -> Path:
        return folder / PART_FILE.format(piece)

    def kept_files(self) -> list[Path]:
        return sorted(self.kept.glob("*.parquet"))

    def add_stage_seconds(self, seconds: dict[str, float]) -> None:
        """Merge stages' wall seconds into run_info.json (started by curate; a later step adds its own)."""
        info = json.loads(self.run_info_file.read_text()) if self.run_info_file.is_file() else {}
        info.setdefault("stage_seconds", {}).update({k: round(v, 3) for k, v in seconds.items()})
        atomic_write_json(self.run_info_file, info)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the run directory by this process; a second run fails at once, naming the holder."""
        key = self.root.resolve()
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                raise RunLocked(f"run directory {self.root} is in use by another Sluice run ({holder}); "
                                "wait for it or choose another --out") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}\n")
            fh.flush()
            _HELD[key] = 1
            try:
                yield
            finally:
                del _HELD[key]
                fcntl.flock(fh, fcntl.LOCK_UN)

    def publish(self) -> None:
        """Expose stages/final's kept and rejected rows at the run's top level (hard links, no copy)."""
        for sub, final in (("kept", self.kept), ("rejected", self.rejected)):
            with atomic_dir(final) as tmp:
                for f in sorted((self.final / sub).glob("*.parquet")):
                    os.link(f, tmp / f.name)

"""State of scheduled incremental runs: which input files a run root has already curated.

A file is new when its path was never processed or its size or content hash changed. The state is
written (atomically) only after a batch has been curated and sharded, so a killed scheduled run is
simply redone by the next one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.readers import InputFile
from pipeline.rundir import atomic_write_json, file_digest

STATE_FILE = "incremental.json"


@dataclass
class IncrementalState:
    root: Path
    files: dict[str, dict] = field(default_factory=dict)  # path -> {size, hash, batch}
    batches: list[dict] = field(default_factory=list)  # [{batch, dir, files}]
    _fresh: dict[str, dict] = field(default_factory=dict, repr=False)  # what new_files measured

    @classmethod
    def load(cls, root: str | Path) -> "IncrementalState":
        path = Path(root) / STATE_FILE
        data = json.loads(path.read_text()) if path.is_file() else {}
        return cls(Path(root), data.get("files", {}), data.get("batches", []))

    def new_files(self, files: list[InputFile]) -> list[InputFile]:
        """The files not processed before; their size and hash are kept for `record`, not measured twice."""
        fresh = []
        for f in files:
            now = {"size": Path(f.path).stat().st_size, "hash": file_digest(f.path)}
            seen = self.files.get(f.path)
            if seen is None or (seen["size"], seen["hash"]) != (now["size"], now["hash"]):
                self._fresh[f.path] = now
                fresh.append(f)
        return fresh

    @property
    def last_batch_dir(self) -> Path | None:
        return self.root / self.batches[-1]["dir"] if self.batches else None

    def next_batch_dir(self) -> Path:
        return self.root / "batches" / f"{len(self.batches) + 1:05d}"

    def record(self, batch_dir: Path, files: list[InputFile]) -> None:
        number = len(self.batches) + 1
        for f in files:
            self.files[f.path] = {**self._fresh[f.path], "batch": number}
        self.batches.append({"batch": number, "dir": str(batch_dir.relative_to(self.root)),
                             "files": sorted(f.path for f in files)})
        atomic_write_json(self.root / STATE_FILE, {"files": self.files, "batches": self.batches})

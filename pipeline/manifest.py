"""The shard manifest (`SHARDS/manifest.json`): one typed model for its writer, loader, CLI and report.

    {"format": "sluice-shards/1", "version": 2, "fingerprint": ..., "config_hash": ...,
     "tokenizer": {...}, "dtype": "uint16", "docs": ..., "tokens": ..., "sources": {source: tokens},
     "versions": [{"version": 1, "fingerprint": ..., "config_hash": ..., "shards": [file, ...]}, ...],
     "shards": [{"file": "shard-00000.arrow", "version": 1, "docs": ..., "tokens": ..., "bytes": ...,
                 "dtype": "uint16", "sha256": ..., "sources": {source: tokens}}, ...]}

The JSON keys are those Sluice has always written, so existing shard folders load unchanged. Every
model forbids unknown keys (`Section`), so a manifest of the wrong shape fails loudly, naming the file,
instead of reading as empty. The manifest holds no paths outside its folder and no clock: equal
inputs give equal bytes. `file` entries are relative to the folder; open them with `shard_path`, which
refuses any that leave it.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from pipeline.config import Section
from pipeline.rundir import atomic_write_json, safe_join

MANIFEST = "manifest.json"
FORMAT = "sluice-shards/1"


class ShardError(RuntimeError):
    """A shard folder, manifest or shard that is missing, malformed, truncated or altered; names the file."""


class ShardEntry(Section):
    """One shard file: its counts and checksum, and the manifest version that added it."""
    file: str
    version: int
    docs: int
    tokens: int
    bytes: int
    dtype: str
    sha256: str
    sources: dict[str, int]  # tokens per source


class TokenizerInfo(Section):
    """The tokenizer that made the shards, stored beside them as `file` with these bytes."""
    file: str
    sha256: str
    vocab_size: int
    eod_token: str | None
    eod_id: int | None
    trained: bool


class ManifestVersion(Section):
    """One append: the fingerprint of the batch it added and the shards it wrote."""
    version: int
    fingerprint: str
    config_hash: str
    shards: list[str]


class ShardManifest(Section):
    """A shard folder: totals over all shards, every version in order, every shard in stream order."""
    format: Literal["sluice-shards/1"]
    version: int
    fingerprint: str
    config_hash: str
    tokenizer: TokenizerInfo
    dtype: str
    docs: int
    tokens: int
    sources: dict[str, int]
    versions: list[ManifestVersion]
    shards: list[ShardEntry]

    @classmethod
    def first(cls, entries: list[ShardEntry], *, fingerprint: str, config_hash: str, tokenizer: TokenizerInfo,
              dtype: str) -> ShardManifest:
        """Version 1 of a folder: `entries` and nothing before them."""
        return cls(format=FORMAT, version=1, fingerprint=fingerprint, config_hash=config_hash, tokenizer=tokenizer,
                   dtype=dtype, **totals(entries),
                   versions=[version_entry(1, fingerprint, config_hash, entries)], shards=entries)

    def extend(self, entries: list[ShardEntry], *, fingerprint: str, config_hash: str) -> ShardManifest:
        """The next version: earlier shards kept as they are, `entries` appended, totals over all of them."""
        version = self.version + 1
        shards = self.shards + entries
        versions = self.versions + [version_entry(version, fingerprint, config_hash, entries)]
        return self.model_copy(update={"version": version, "fingerprint": manifest_fingerprint(versions),
                                       "config_hash": config_hash, **totals(shards), "versions": versions,
                                       "shards": shards})

    def holds(self, fingerprint: str) -> bool:
        """Whether a batch with this fingerprint is already one of the folder's versions."""
        return any(v.fingerprint == fingerprint for v in self.versions)

    def has_ancestor(self, version: int | None, fingerprint: str) -> bool:
        """Whether `fingerprint` named this folder at `version`, before later versions were appended."""
        return (isinstance(version, int) and 1 <= version < len(self.versions)
                and manifest_fingerprint(self.versions[:version]) == fingerprint)


def totals(entries: list[ShardEntry]) -> dict:
    """Documents, tokens and tokens per source over shard entries."""
    sources: Counter[str] = Counter()
    for e in entries:
        sources.update(e.sources)
    return {"docs": sum(e.docs for e in entries), "tokens": sum(e.tokens for e in entries),
            "sources": dict(sorted(sources.items()))}


def version_entry(version: int, fingerprint: str, config_hash: str, entries: list[ShardEntry]) -> ManifestVersion:
    return ManifestVersion(version=version, fingerprint=fingerprint, config_hash=config_hash,
                           shards=[e.file for e in entries])


def manifest_fingerprint(versions: list[ManifestVersion]) -> str:
    """Identity of the whole folder: version 1's fingerprint, then a hash chained over every version's."""
    if len(versions) == 1:
        return versions[0].fingerprint
    return hashlib.sha256("\n".join(v.fingerprint for v in versions).encode()).hexdigest()[:16]


def shard_path(shard_dir: str | Path, file: str) -> Path:
    """A manifest `file` joined to its folder; a path that leaves the folder is refused (ValueError)."""
    return safe_join(Path(shard_dir), file)


def write_manifest(shard_dir: str | Path, manifest: ShardManifest) -> None:
    """Atomically, keys sorted, two-space indent: the same manifest always has the same bytes."""
    atomic_write_json(Path(shard_dir) / MANIFEST, manifest.model_dump(mode="json"))


def read_manifest(shard_dir: str | Path) -> ShardManifest:
    """The folder's manifest, validated; ShardError naming the file when missing or malformed."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"no {MANIFEST} in {shard_dir}: not a finished shard folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ShardError(f"{path}: unknown format {found!r}, expected {FORMAT!r}")
    try:
        return ShardManifest.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ShardError(f"{path}: malformed manifest: {problems}") from None

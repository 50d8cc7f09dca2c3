"""Fingerprints: what a piece of output depends on, hashed, so a rerun redoes exactly what changed.

A fingerprint covers the config keys a stage reads, the content (not the path) of every model file
it loads, the package version and the source code of the modules that compute it.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import BaseModel


def _package_version() -> str:
    try:
        return version("sluice")
    except PackageNotFoundError:
        return "unknown"


PACKAGE_VERSION = _package_version()


def _plain(value):
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def digest(*parts) -> str:
    """A short stable hash of JSON-able parts (pydantic models are dumped first)."""
    text = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def code_digest(*modules: str) -> str:
    """The package version and the source of these modules (a package: every .py file under it)."""
    h = hashlib.sha256(PACKAGE_VERSION.encode())
    for name in modules:
        module = importlib.import_module(name)
        path = Path(module.__file__)
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]

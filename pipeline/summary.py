"""The run summary: per-stage ledger lines chained together and reconciled end to end."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pipeline.ledger import LedgerMismatch, StageCount


def build_summary(counts: list[StageCount]) -> dict:
    """Check every stage and the chain between them; return the summary.json content."""
    for prev, cur in zip(counts, counts[1:]):
        if cur.inputs != prev.kept:
            raise LedgerMismatch(f"stage {cur.stage!r} read {cur.inputs} rows but {prev.stage!r} kept {prev.kept}")
    for c in counts:
        c.check()
    by_reason: Counter[str] = Counter()
    for c in counts:
        by_reason.update(c.rejected)
    inputs = counts[0].inputs if counts else 0
    kept = counts[-1].kept if counts else 0
    rejected = sum(by_reason.values())
    if inputs != kept + rejected:
        raise LedgerMismatch(f"run: {inputs} inputs != {kept} kept + {rejected} rejected")
    return {
        "inputs": inputs,
        "kept": kept,
        "rejected": rejected,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "reconciled": True,
        "stages": [c.to_dict() for c in counts],
    }


def load_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no summary.json in {run_dir}: is it a finished Sluice run directory?")
    return json.loads(path.read_text())

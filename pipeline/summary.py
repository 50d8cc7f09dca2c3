"""The run summary (`RUN/summary.json`): per-stage ledger lines chained together and reconciled.

`RunSummary` is the one type the curate flow writes and the CLI, the report and the tests read.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.config import Section
from pipeline.ledger import LedgerMismatch, StageCount
from pipeline.rundir import RunDir


class RunSummary(Section):
    inputs: int
    kept: int
    rejected: int
    rejected_by_reason: dict[str, int]
    reconciled: bool
    stages: list[StageCount]

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"


def build_summary(counts: list[StageCount]) -> RunSummary:
    """Check every stage and the chain between them; return the summary."""
    for prev, cur in zip(counts, counts[1:]):
        if cur.inputs != prev.kept:
            raise LedgerMismatch(f"stage {cur.stage!r} read {cur.inputs} rows but {prev.stage!r} kept {prev.kept}")
    for c in counts:
        c.check()
    by_reason: Counter[str] = Counter()
    for c in counts:
        by_reason.update(c.rejected_by_reason)
    inputs = counts[0].inputs if counts else 0
    kept = counts[-1].kept if counts else 0
    rejected = sum(by_reason.values())
    if inputs != kept + rejected:
        raise LedgerMismatch(f"run: {inputs} inputs != {kept} kept + {rejected} rejected")
    return RunSummary(inputs=inputs, kept=kept, rejected=rejected, rejected_by_reason=dict(sorted(by_reason.items())),
                      reconciled=True, stages=counts)


def load_summary(run_dir: str | Path) -> RunSummary:
    path = RunDir(run_dir).summary_file
    if not path.is_file():
        raise FileNotFoundError(f"no summary.json in {run_dir}: is it a finished Sluice run directory?")
    return RunSummary.model_validate_json(path.read_text())

"""The ledger: every stage splits its input into kept and rejected rows, and the counts must reconcile.

A stage's pure function returns a `StageResult`; `StageCount` is its line of the run summary, the one
typed record that the runner writes into markers, the summary and the report read back.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
from pydantic import ConfigDict, Field

from pipeline.config import Section
from pipeline.schema import LEDGER_COLUMNS, REJECTED_SCHEMA, conform


class LedgerMismatch(RuntimeError):
    """Raised when a stage's inputs do not equal its kept plus rejected rows."""


@dataclass
class StageResult:
    kept: pa.Table
    rejected: pa.Table

    def __post_init__(self) -> None:
        self.rejected = conform(self.rejected, REJECTED_SCHEMA, extras=None)


def rejected_rows(
    docs: pa.Table,
    stage: str,
    reason: str | list[str] | pa.Array,
    detail: str | list[str | None] | pa.Array | None = None,
    duplicate_of: list[str | None] | pa.Array | None = None,
    cluster_id: list[str | None] | pa.Array | None = None,
    duplicate_of_source: list[str | None] | pa.Array | None = None,
) -> pa.Table:
    """Turn document rows (annotations kept) into rejected rows carrying a reason code (scalar or per row)."""
    n = docs.num_rows

    def col(value):
        if value is None or isinstance(value, str):
            return pa.array([value] * n, pa.string())
        return value if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array(value, pa.string())

    values = dict(zip(["stage", "reason", "detail", "duplicate_of", "cluster_id", "duplicate_of_source"],
                      [stage, reason, detail, duplicate_of, cluster_id, duplicate_of_source]))
    base = docs.drop_columns([c for c in LEDGER_COLUMNS if c in docs.column_names])
    for name in LEDGER_COLUMNS:
        base = base.append_column(name, col(values[name]).cast(pa.string()))
    return conform(base, REJECTED_SCHEMA, extras=None)


class StageCount(Section):
    """One stage's line of the run summary: documents in, kept, and rejected by reason."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    stage: str
    inputs: int = Field(alias="in")
    kept: int
    rejected: int = 0
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, stage: str, inputs: int, kept: int, reasons: dict[str, int]) -> "StageCount":
        return cls(stage=stage, inputs=inputs, kept=kept, rejected=sum(reasons.values()),
                   rejected_by_reason=dict(sorted(reasons.items())))

    def check(self) -> None:
        if self.inputs != self.kept + self.rejected or self.rejected != sum(self.rejected_by_reason.values()):
            raise LedgerMismatch(
                f"stage {self.stage!r}: {self.inputs} in != {self.kept} kept + {self.rejected} rejected")

    def __add__(self, other: "StageCount") -> "StageCount":
        """Counts of the same stage over two pieces of input."""
        reasons = Counter(self.rejected_by_reason)
        reasons.update(other.rejected_by_reason)
        return StageCount.of(self.stage, self.inputs + other.inputs, self.kept + other.kept, dict(reasons))


def count_reasons(reasons: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    return dict(Counter(reasons.to_pylist()))


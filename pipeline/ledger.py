"""The ledger: every stage splits its input into kept and rejected rows, and the counts must reconcile.

A stage's pure function returns a `StageResult`. To move through Ray Data as one dataset the two
halves travel as one table whose ledger columns are null on kept rows (`combine` / `split`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import DOC_SCHEMA, LEDGER_COLUMNS, LEDGER_FIELDS, REJECTED_SCHEMA


class LedgerMismatch(RuntimeError):
    """Raised when a stage's inputs do not equal its kept plus rejected rows."""


@dataclass
class StageResult:
    kept: pa.Table
    rejected: pa.Table

    def __post_init__(self) -> None:
        self.rejected = conform_rejected(self.rejected)


def rejected_rows(
    docs: pa.Table,
    stage: str,
    reason: str | list[str] | pa.Array,
    detail: str | list[str | None] | pa.Array | None = None,
    duplicate_of: list[str | None] | pa.Array | None = None,
    cluster_id: list[str | None] | pa.Array | None = None,
) -> pa.Table:
    """Turn document rows into rejected rows carrying a reason code (scalar or per row)."""
    n = docs.num_rows

    def col(value, typ=pa.string()):
        if value is None or isinstance(value, str):
            return pa.array([value] * n, typ)
        return pa.array(value, typ) if not isinstance(value, (pa.Array, pa.ChunkedArray)) else value

    base = docs.select([f.name for f in DOC_SCHEMA]).cast(DOC_SCHEMA)
    for name, value in zip(LEDGER_COLUMNS, [stage, reason, detail, duplicate_of, cluster_id]):
        base = base.append_column(name, col(value))
    return base.cast(REJECTED_SCHEMA)


def conform_rejected(table: pa.Table) -> pa.Table:
    """Rejected rows in the exact ledger schema (extra stage columns dropped, missing ones null)."""
    cols = []
    for f in REJECTED_SCHEMA:
        if f.name in table.column_names:
            cols.append(table[f.name].cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=REJECTED_SCHEMA)


def combine(result: StageResult) -> pa.Table:
    """Kept and rejected rows as one table: kept rows have a null `reason`."""
    kept = result.kept
    for f in LEDGER_FIELDS:
        if f.name not in kept.column_names:
            kept = kept.append_column(f, pa.nulls(kept.num_rows, f.type))
    rejected = result.rejected
    for f in kept.schema:
        if f.name not in rejected.column_names:
            rejected = rejected.append_column(f, pa.nulls(rejected.num_rows, f.type))
    return pa.concat_tables([kept, rejected.select(kept.column_names).cast(kept.schema)])


def split(table: pa.Table) -> StageResult:
    """Inverse of `combine`."""
    is_rejected = pc.is_valid(table["reason"])
    kept = table.filter(pc.invert(is_rejected)).drop_columns(LEDGER_COLUMNS)
    return StageResult(kept=kept, rejected=table.filter(is_rejected))


@dataclass
class StageCount:
    """One stage's line of the run summary."""

    stage: str
    inputs: int
    kept: int
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def check(self) -> None:
        if self.inputs != self.kept + self.rejected_total:
            raise LedgerMismatch(
                f"stage {self.stage!r}: {self.inputs} in != {self.kept} kept + {self.rejected_total} rejected"
            )

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "in": self.inputs,
            "kept": self.kept,
            "rejected": self.rejected_total,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "StageCount":
        return cls(stage=d["stage"], inputs=d["in"], kept=d["kept"], rejected=dict(d["rejected_by_reason"]))


def count_reasons(reasons: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    return dict(Counter(reasons.to_pylist()))

"""The Arrow schemas every stage reads and writes: documents, their typed annotations, the ledger.

Annotations are real typed columns (null where the stage that fills them did not run), so reports
and users read `lang` or `quality_score` as values, never by parsing a `detail` string.
"""
from __future__ import annotations

import pyarrow as pa

DOC_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.large_string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("meta", pa.string()),  # JSON of whatever else the input carried
        pa.field("origin", pa.string()),  # where the record was read: "file:line", "file@offset", "file#row"
    ]
)

# Filled by the row-local stages that compute them (langid, quality); null elsewhere.
ANNOTATION_FIELDS = [
    pa.field("lang", pa.string()),
    pa.field("lang_score", pa.float64()),
    pa.field("quality_score", pa.float64()),
]
KEPT_SCHEMA = pa.schema(list(DOC_SCHEMA) + ANNOTATION_FIELDS)
SIGNAL_PREFIX = "signal."  # rule signals (rules in signals-only mode) travel as extra float64 columns

# Ledger columns: null on kept rows, filled on rejected rows.
LEDGER_FIELDS = [
    pa.field("stage", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
    pa.field("duplicate_of", pa.string()),
    pa.field("duplicate_of_source", pa.string()),
    pa.field("cluster_id", pa.string()),
]
LEDGER_COLUMNS = [f.name for f in LEDGER_FIELDS]
REJECTED_SCHEMA = pa.schema(list(KEPT_SCHEMA) + LEDGER_FIELDS)

# What a shuffle stage (dedup) returns for each row it rejects: the row's place in its piece and the
# ledger columns; the runner applies these to the pieces.
DECISION_SCHEMA = pa.schema([("_piece", pa.int32()), ("_row", pa.int32())]
                            + [f for f in LEDGER_FIELDS if f.name != "stage"])


def conform(table: pa.Table, schema: pa.Schema, extras: str | None = SIGNAL_PREFIX) -> pa.Table:
    """`table` in exactly `schema` (missing columns null, unknown ones dropped), plus any columns
    whose name starts with `extras`, sorted, so every batch of a run shares one schema."""
    cols = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    fields = list(schema)
    if extras:
        for name in sorted(c for c in table.column_names if c.startswith(extras)):
            cols.append(table[name].cast(pa.float64()))
            fields.append(pa.field(name, pa.float64()))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))

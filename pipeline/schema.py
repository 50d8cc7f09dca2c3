"""The one Arrow document schema every stage reads and writes, and the ledger's rejected-row schema."""
from __future__ import annotations

import pyarrow as pa

DOC_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.large_string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("meta", pa.string()),  # JSON of whatever else the input carried
        pa.field("origin", pa.string()),  # where the record was read: "rel:LINE", "rel@OFFSET" or "rel#ROW"
    ]
)

# Ledger columns: null on kept rows, filled on rejected rows.
LEDGER_FIELDS = [
    pa.field("stage", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
    pa.field("duplicate_of", pa.string()),
    pa.field("cluster_id", pa.string()),
]
LEDGER_COLUMNS = [f.name for f in LEDGER_FIELDS]
REJECTED_SCHEMA = pa.schema(list(DOC_SCHEMA) + LEDGER_FIELDS)


def empty_docs() -> pa.Table:
    return DOC_SCHEMA.empty_table()

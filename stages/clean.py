"""Clean: Unicode normalisation, control characters, whitespace runs; empty after cleaning is rejected.

Vectorised with Arrow compute kernels over the whole batch. Each rewrite runs only on the rows that
need it: most documents need none of them, and a kernel's cost is in the rows it rewrites while
finding them is a cheap scan (20,000 real documents cleaned in 0.69 s rather than 2.00 s, one probe).
"""
from __future__ import annotations

import functools
import sys
import unicodedata
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import CleanConfig
from pipeline.fingerprint import code_digest, digest
from pipeline.ledger import StageResult, rejected_rows
from pipeline.stage import RowStage

STAGE = "clean"
# C0/C1 controls except tab and newline, plus zero-width and BOM characters.
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}]"
# Whitespace other than newline (RE2's \s is ASCII: tab, form feed, carriage return, space): a run of
# two or more, or a single one that is not a space, becomes one space. A lone space, already right,
# is not matched, so the rewrite touches only the rows that change.
SPACES = r"[^\S\n]{2,}|[^\S\n ]"
AROUND_NEWLINE = r" \n ?|\n "  # a space either side of a line break goes; a bare line break is left


def _rewrite(text: pa.Array, rows: pa.BooleanArray, rewrite: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """`text` with `rewrite` applied to the rows marked in `rows` only."""
    if not pc.any(rows).as_py():
        return text
    return pc.replace_with_mask(text, rows, rewrite(text.filter(rows)))


def _replace(text: pa.Array, pattern: str, replacement: str) -> pa.Array:
    """`replace_substring_regex` on the rows the pattern matches."""
    return _rewrite(text, pc.match_substring_regex(text, pattern),
                    lambda rows: pc.replace_substring_regex(rows, pattern, replacement))


@functools.cache
def _unknown_to_python() -> str:
    """An RE2 class of the code points this Python's Unicode database has not assigned (once per process)."""
    ranges, start = [], None
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp)) == "Cn":
            start = cp if start is None else start
        elif start is not None:
            ranges.append((start, cp - 1))
            start = None
    if start is not None:
        ranges.append((start, sys.maxunicode))
    return "[" + "".join(rf"\x{{{lo:x}}}-\x{{{hi:x}}}" for lo, hi in ranges) + "]"


def _normalize(text: pa.Array, form: str) -> pa.Array:
    """Arrow's `utf8_normalize` on the rows that may change. ASCII never does; Python's quick check
    clears most of the rest. Its Unicode database may be older than Arrow's, but by Unicode's
    normalisation stability policy a text normalised under an older version stays so under later
    ones when all its characters were assigned then, so rows with a character Python does not know
    go to Arrow too: the output is exactly Arrow's."""
    candidates = pc.invert(pc.string_is_ascii(text))
    if not pc.any(candidates).as_py():
        return text
    checked = [not unicodedata.is_normalized(form, s) for s in text.filter(candidates).to_pylist()]
    rows = pc.replace_with_mask(candidates, candidates, pa.array(checked))
    rows = pc.or_(rows, pc.and_(candidates, pc.match_substring_regex(text, _unknown_to_python())))
    return _rewrite(text, rows, lambda changing: pc.utf8_normalize(changing, form))


def clean_text(text: pa.Array | pa.ChunkedArray, cfg: CleanConfig) -> pa.Array:
    text = pc.fill_null(text, "")
    text = _normalize(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text, cfg.unicode_form)
    if cfg.strip_control:
        text = _replace(text, "\r\n?", "\n")
        text = _replace(text, CONTROL, "")
    if cfg.collapse_whitespace:
        text = _replace(text, SPACES, " ")
        text = _replace(text, AROUND_NEWLINE, "\n")
        text = _replace(text, r"\n{3,}", "\n\n")  # at most one blank line
    return pc.utf8_trim_whitespace(text)


def process(batch: pa.Table, cfg: CleanConfig) -> StageResult:
    text = clean_text(batch["text"], cfg)
    batch = batch.set_column(batch.schema.get_field_index("text"), "text", text.cast(pa.large_string()))
    empty = pc.equal(pc.utf8_length(batch["text"]), 0)
    return StageResult(
        kept=batch.filter(pc.invert(empty)),
        rejected=rejected_rows(batch.filter(empty), STAGE, "empty", "no text left after cleaning"),
    )


def build(cfg: CleanConfig) -> RowStage:
    return RowStage(STAGE, functools.partial(process, cfg=cfg), digest(cfg, code_digest(__name__)))

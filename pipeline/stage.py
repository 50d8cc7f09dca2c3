"""Running a curate plan: row-local stages fused per input piece, shuffle stages on small columns.

Row-local stages (ingest, clean, langid, rules, quality) are pure batch functions. They run one
after the other on each batch of one input piece, inside one Ray task, with no shuffle between
them; a piece's output is a pure function of the piece, so the bytes never depend on worker count.
They are grouped into segments, each persisted per piece with its own marker: a rerun skips the
pieces (and segments) that finished, and a changed rule reruns only the segments from its own on.

Shuffle stages (duplicate ids, exact and fuzzy dedup) read only the small columns they declare,
from every piece, and return decisions (which rows to reject, and why). The decisions are applied
to the texts by one streaming pass over the pieces, which writes the run's final kept and rejected
rows, one file per piece, in input order.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipeline.fingerprint import digest
from pipeline.ledger import LedgerMismatch, StageCount, StageResult, rejected_rows
from pipeline.mailbox import BOX, Parts, deliver, post
from pipeline.progress import Progress
from pipeline.readers.pieces import Piece, count_records, read_piece
from pipeline.rundir import RunDir, atomic_dir, read_marker
from pipeline.runtime import map_in_order, release_freed_memory, releasing_memory
from pipeline.schema import DECISION_SCHEMA, DOC_SCHEMA, KEPT_SCHEMA, REJECTED_SCHEMA, conform

log = logging.getLogger("sluice")

INGEST = "ingest"
# Seconds the row-local pass spends writing each segment's files and reading an earlier segment's
# back: kept apart so a stage's seconds are its own work (run_info.json's stage_seconds).
SEGMENT_IO = "segment io"
KEPT_FILE, REJECTED_FILE = "kept.parquet", "rejected.parquet"
DECIDED = "decided"  # the mailbox (in the stage's exchange) of its decisions, a box per piece


class PlanError(ValueError):
    """A plan whose stages cannot run in this order (a stage reads a column no earlier stage adds)."""


@dataclass(frozen=True)
class RowStage:
    """A row-local stage: a pure function over a batch, the columns it reads and adds, its fingerprint."""

    name: str
    process: Callable[[pa.Table], StageResult]
    fingerprint: str
    reads: frozenset[str] = frozenset({"text"})
    adds: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ShuffleStage:
    """A stage that must see every piece: `build(workdir)` returns a function of the rows (`Parts`) and
    a scratch folder for its mailboxes, which posts its decisions there (`post_decisions`); `workdir`
    keeps what else it writes (an index)."""

    name: str
    build: Callable[[Path], Callable[[Parts, Path], None]]
    fingerprint: str
    reads: frozenset[str]  # loaded for it (an annotation no stage filled arrives as nulls)
    requires: frozenset[str]  # of those, the ones an earlier stage must fill for it to make sense


@dataclass(frozen=True)
class Reader:
    """Ingest: the first stage of the first segment, turning a piece of an input file into rows."""

    html_extractor: str
    max_chars: int
    fingerprint: str


@dataclass(frozen=True)
class Segment:
    """Row-local stages persisted together per piece (the first segment starts with the reader)."""

    name: str
    stages: tuple[RowStage, ...]


@dataclass
class Plan:
    pieces: list[Piece]
    piece_fingerprints: list[str]  # each piece's identity: file content hash and range
    reader: Reader
    segments: list[Segment]
    shuffles: list[ShuffleStage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.check_columns()

    def check_columns(self) -> None:
        """Fail when the plan is built, not mid-run, if a stage reads what no earlier stage adds."""
        available = set(DOC_SCHEMA.names)
        for stage in [s for seg in self.segments for s in seg.stages] + self.shuffles:
            missing = set(getattr(stage, "requires", stage.reads)) - available
            if missing:
                raise PlanError(f"stage {stage.name!r} reads {sorted(missing)}, which no earlier stage adds: "
                                "enable the stage that adds it or reorder")
            available |= getattr(stage, "adds", frozenset())

    def stage_names(self) -> list[str]:
        return [INGEST] + [s.name for seg in self.segments for s in seg.stages] + [s.name for s in self.shuffles]

    def segment_fingerprints(self, piece: int) -> list[str]:
        """Chained: a segment's output depends on everything before it."""
        out, prev = [], self.piece_fingerprints[piece] + self.reader.fingerprint
        for seg in self.segments:
            prev = digest(prev, seg.name, [s.fingerprint for s in seg.stages])
            out.append(prev)
        return out

    def shuffle_fingerprints(self) -> list[str]:
        out, prev = [], digest([self.segment_fingerprints(i)[-1] for i in range(len(self.pieces))])
        for s in self.shuffles:
            prev = digest(prev, s.name, s.fingerprint)
            out.append(prev)
        return out


# ---------------------------------------------------------------------------------------------
# the row-local pass, one Ray task per piece


class _Counts:
    """Per-stage counts of one segment over one piece."""

    def __init__(self, names: list[str]):
        self.inputs = Counter({n: 0 for n in names})
        self.kept = Counter({n: 0 for n in names})
        self.reasons: dict[str, Counter[str]] = {n: Counter() for n in names}
        self.seconds: Counter[str] = Counter()

    def add(self, name: str, result: StageResult, inputs: int) -> None:
        self.inputs[name] += inputs
        self.kept[name] += result.kept.num_rows
        self.reasons[name].update(result.rejected["reason"].to_pylist())

    def tick(self, name: str, since: float) -> float:
        """Charge the time since `since` to `name` (a stage, or SEGMENT_IO); return now."""
        now = time.perf_counter()
        self.seconds[name] += now - since
        return now

    def lines(self) -> list[StageCount]:
        return [StageCount.of(n, self.inputs[n], self.kept[n], dict(self.reasons[n])) for n in self.inputs]


def _reader_batches(piece: Piece, reader: Reader) -> Iterator[StageResult]:
    """Ingest's batches; its count is checked against the records counted without parsing."""
    expected, seen = count_records(piece), 0
    for result in read_piece(piece, reader.html_extractor, reader.max_chars):
        seen += result.kept.num_rows + result.rejected.num_rows
        yield result
    if seen != expected:
        raise LedgerMismatch(f"ingest of {piece.file.path} (piece {piece.index}, bytes {piece.start}-"
                             f"{piece.end or 'end'}): the reader returned {seen} records but the file holds {expected}")


def _kept_batches(path: Path) -> Iterator[StageResult]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2048):
        yield StageResult(kept=pa.Table.from_batches([batch]), rejected=REJECTED_SCHEMA.empty_table())


def _write_segment(batches: Iterator[StageResult], lead: str | None, stages: tuple[RowStage, ...],
                   folder: Path) -> _Counts:
    """Run the stages over every batch, streaming kept and rejected rows to the segment's files.

    `lead` names the stage that produced the batches (ingest), whose own rejections count too.
    """
    counts = _Counts(([lead] if lead else []) + [s.name for s in stages])
    writers: dict[str, pq.ParquetWriter] = {}
    clock = time.perf_counter()

    def write(name: str, table: pa.Table) -> None:
        if name not in writers:
            writers[name] = pq.ParquetWriter(folder / name, table.schema, compression="zstd")
        writers[name].write_table(table)

    try:
        for result in batches:
            clock = counts.tick(lead or SEGMENT_IO, clock)  # reading: ingest's work, or the earlier segment's file
            if lead:
                counts.add(lead, result, result.kept.num_rows + result.rejected.num_rows)
            rejected, kept = [result.rejected], result.kept
            for stage in stages:
                out = stage.process(kept)
                counts.add(stage.name, out, kept.num_rows)
                clock = counts.tick(stage.name, clock)
                rejected.append(out.rejected)
                kept = out.kept
            write(KEPT_FILE, conform(kept, KEPT_SCHEMA))
            write(REJECTED_FILE, pa.concat_tables(rejected))
            clock = counts.tick(SEGMENT_IO, clock)
    finally:
        for writer in writers.values():
            writer.close()
    for name, schema in ((KEPT_FILE, KEPT_SCHEMA), (REJECTED_FILE, REJECTED_SCHEMA)):
        if name not in writers:
            pq.write_table(schema.empty_table(), folder / name, compression="zstd")
    return counts


def _finished_counts(run: RunDir, plan: Plan, index: int) -> list[dict] | None:
    """A piece's counts when every segment of it finished with today's fingerprints, else None."""
    lines = []
    for segment, fingerprint in zip(plan.segments, plan.segment_fingerprints(index)):
        done = read_marker(run.segment_piece(segment.name, index), fingerprint)
        if done is None:
            return None
        lines += done["counts"]
    return lines


@ray.remote(num_cpus=1)
@releasing_memory
def _run_piece(root: str, plan: Plan, index: int) -> tuple[list[dict], dict[str, float]]:
    """Every segment of one piece (skipping finished ones); returns the per-stage counts and the
    seconds each stage took here (timings stay out of markers, which must not change on a rerun)."""
    run, piece = RunDir(root), plan.pieces[index]
    lines: list[dict] = []
    seconds: Counter[str] = Counter()
    previous: Path | None = None
    for segment, fingerprint in zip(plan.segments, plan.segment_fingerprints(index)):
        folder = run.segment_piece(segment.name, index)
        done = read_marker(folder, fingerprint)
        if done is None:
            marker: dict = {}
            with atomic_dir(folder, marker) as tmp:
                if previous is None:
                    batches, lead = _reader_batches(piece, plan.reader), INGEST
                else:
                    batches, lead = _kept_batches(previous / KEPT_FILE), None
                counts = _write_segment(batches, lead, segment.stages, tmp)
                marker.update(fingerprint=fingerprint,
                              counts=[c.model_dump(by_alias=True) for c in counts.lines()])
            seconds.update(counts.seconds)
            done = marker
        lines += done["counts"]
        previous = folder
    return lines, dict(seconds)


def run_row_local(run: RunDir, plan: Plan, max_in_flight: int) -> tuple[list[StageCount], dict[str, float]]:
    """The fused row-local pass over every piece; returns each stage's count summed over pieces, and
    the seconds each stage spent in the pieces run now (summed over workers).

    Pieces that finished earlier are counted from their markers without a task; the rest run as
    Ray tasks, at most `max_in_flight` at a time, so memory stays flat however many pieces there are.
    """
    totals: dict[str, StageCount] = {}
    seconds: Counter[str] = Counter()

    def add(lines: list[dict]) -> None:
        for line in lines:
            count = StageCount.model_validate(line)
            totals[count.stage] = totals[count.stage] + count if count.stage in totals else count

    todo = []
    for i in range(len(plan.pieces)):
        lines = _finished_counts(run, plan, i)
        if lines is None:
            todo.append(i)
        else:
            add(lines)
    if len(todo) < len(plan.pieces):
        log.info("row-local stages: %d of %d pieces finished earlier, skipped",
                 len(plan.pieces) - len(todo), len(plan.pieces))
    progress = Progress("row-local stages", total_items=len(todo),
                        total_bytes=sum(_piece_bytes(plan.pieces[i]) for i in todo), unit="pieces")
    ref, pending = ray.put(plan), {}
    for i in todo + [None] * max_in_flight:
        if i is not None:
            pending[_run_piece.remote(str(run.root), ref, i)] = i
        if pending and (i is None or len(pending) >= max_in_flight):
            ready, _ = ray.wait(list(pending), num_returns=1)
            lines, spent = ray.get(ready[0])
            add(lines)
            seconds.update(spent)
            progress.advance(1, _piece_bytes(plan.pieces[pending.pop(ready[0])]))
    progress.close()
    row_local = plan.stage_names()[: 1 + sum(len(s.stages) for s in plan.segments)]
    return [totals.get(name, StageCount.of(name, 0, 0, {})) for name in row_local], dict(seconds)


def _piece_bytes(piece: Piece) -> int:
    """Bytes of input a piece covers, for progress (a Parquet file counts once, at its first piece)."""
    size = os.path.getsize(piece.file.path)
    if piece.file.format == "parquet":
        return size if piece.start == 0 else 0
    return max(0, min(size if piece.end is None else piece.end, size) - piece.start)


# ---------------------------------------------------------------------------------------------
# shuffle stages: small columns in, decisions out


@dataclass(frozen=True)
class PieceRows:
    """What a shuffle stage reads, as `Parts`: each piece's kept rows (the declared columns only, so
    texts stay out of shuffles unless a stage reads them) with their row key (`_piece`, `_row`) and
    file (`_file`), minus the rows earlier shuffle stages rejected."""

    root: str
    segment: str
    columns: tuple[str, ...]
    earlier: tuple[str, ...]  # the earlier shuffle stages' folders
    count: int
    rows: int  # the rows the stage reads in all (what the earlier stages kept)

    def read(self, part: int) -> pa.Table:
        path = RunDir(self.root).segment_piece(self.segment, part) / KEPT_FILE
        table = pq.read_table(path, columns=list(self.columns))
        table = table.append_column("_piece", pa.array([part] * table.num_rows, pa.int32())) \
            .append_column("_row", pa.array(range(table.num_rows), pa.int32())) \
            .append_column("_file", pa.array([str(path)] * table.num_rows, pa.string()))
        for stage_dir in self.earlier:
            decided = RunDir.decisions_file(Path(stage_dir), part)
            if decided.is_file():
                gone = pq.read_table(decided, columns=["_row"])["_row"]
                table = table.filter(pc.invert(pc.is_in(table["_row"], gone)))
        return table


def post_decisions(decisions: pa.Table, scratch: Path, sender: str) -> int:
    """A shuffle stage's output: decisions (DECISION_SCHEMA) posted to the box of their piece."""
    table = conform(decisions, DECISION_SCHEMA, extras=None)
    return post(table.append_column(BOX, pc.cast(table["_piece"], pa.string())), scratch / DECIDED, sender)


def _write_decisions(letters: pa.Table, box: str, folder: str) -> dict[str, int]:
    """One piece's decisions, sorted by row, as the stage's decisions file; returns its reason counts."""
    table = conform(letters, DECISION_SCHEMA, extras=None).sort_by("_row")
    target = RunDir.decisions_file(Path(folder), int(box))
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target, compression="zstd")
    return dict(Counter(table["reason"].to_pylist()))


def run_shuffle(run: RunDir, plan: Plan, index: int, inputs: int) -> StageCount:
    """Run (or skip) shuffle stage `index`: decisions per piece under stages/<name>/decisions/."""
    stage = plan.shuffles[index]
    fingerprint = plan.shuffle_fingerprints()[index]
    folder = run.stage_path(stage.name)
    done = read_marker(folder, fingerprint)
    if done:
        log.info("stage %s: finished earlier, skipped", stage.name)
        return StageCount.model_validate(done["count"])
    earlier = tuple(str(run.stage_path(s.name)) for s in plan.shuffles[:index])
    wanted = tuple(c for c in KEPT_SCHEMA.names if c in stage.reads | {"source", "id"})
    rows = PieceRows(str(run.root), plan.segments[-1].name, wanted, earlier, len(plan.pieces), inputs)
    marker: dict = {}
    with atomic_dir(folder, marker) as tmp:
        scratch = RunDir.exchange(tmp)
        stage.build(tmp)(rows, scratch)
        reasons: Counter[str] = Counter()
        for counted in deliver(scratch / DECIDED, functools.partial(_write_decisions, folder=str(tmp))):
            reasons.update(counted)
        shutil.rmtree(scratch, ignore_errors=True)
        count = StageCount.of(stage.name, inputs, inputs - sum(reasons.values()), dict(reasons))
        count.check()
        marker.update(fingerprint=fingerprint, count=count.model_dump(by_alias=True))
    release_freed_memory()  # the stage's planning (and union-find on the driver) left freed heap here
    log.info("stage %s: %d in, %d kept, %d rejected", stage.name, count.inputs, count.kept, count.rejected)
    return count


# ---------------------------------------------------------------------------------------------
# applying the decisions: the run's final rows


def _apply(root: str, plan: Plan, index: int, folder: str) -> None:
    run = RunDir(root)
    kept = pq.read_table(run.segment_piece(plan.segments[-1].name, index) / KEPT_FILE)
    rejected = [pq.read_table(run.segment_piece(seg.name, index) / REJECTED_FILE) for seg in plan.segments]
    dropped = pa.array([], pa.int32())
    for stage in plan.shuffles:
        decided = RunDir.decisions_file(run.stage_path(stage.name), index)
        if not decided.is_file():
            continue
        d = pq.read_table(decided)
        rows = kept.take(d["_row"])
        rejected.append(rejected_rows(rows, stage.name, d["reason"], d["detail"], d["duplicate_of"],
                                      d["cluster_id"], d["duplicate_of_source"]))
        dropped = pa.concat_arrays([dropped, d["_row"].combine_chunks()])
    if len(pc.unique(dropped)) != len(dropped) or (len(dropped) and pc.max(dropped).as_py() >= kept.num_rows):
        raise LedgerMismatch(f"piece {index}: the dedup decisions name a row twice or a row the piece lacks, "
                             "so a document would end in two places or none")
    mask = pc.invert(pc.is_in(pa.array(range(kept.num_rows), pa.int32()), dropped))
    out = Path(folder)
    pq.write_table(kept.filter(mask), RunDir.part_file(out / "kept", index), compression="zstd")
    pq.write_table(conform(pa.concat_tables(rejected), REJECTED_SCHEMA, extras=None),
                   RunDir.part_file(out / "rejected", index), compression="zstd")


def run_final(run: RunDir, plan: Plan, max_in_flight: int) -> None:
    """stages/final: the decisions applied to every piece (skipped when finished), then published."""
    fingerprint = digest(plan.shuffle_fingerprints(), [plan.segment_fingerprints(i)[-1] for i in
                                                       range(len(plan.pieces))])
    if read_marker(run.final, fingerprint) is None:
        marker: dict = {"fingerprint": fingerprint}
        with atomic_dir(run.final, marker) as tmp:
            (tmp / "kept").mkdir()
            (tmp / "rejected").mkdir()
            apply = functools.partial(_apply, str(run.root), plan, folder=str(tmp))
            for _ in map_in_order(apply, range(len(plan.pieces)), max_in_flight):
                pass  # each task writes its piece's files; a failure raises here
    run.publish()

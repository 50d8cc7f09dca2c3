"""The `curate` flow: the row-local pass over every input piece, the dedup stages, the final rows.

One Prefect task for the fused row-local pass, one per shuffle stage, one that applies their
decisions; every part skips what finished earlier with the same fingerprint, so a rerun after a
kill resumes where the last run stopped. The run directory is locked for the whole flow.
"""
from __future__ import annotations

import logging
import time
from functools import partial

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from flows.retry import retry_transient
from pipeline.config import SluiceConfig
from pipeline.ledger import StageCount
from pipeline.readers import expand_inputs, get_extractor
from pipeline.rundir import RunDir, atomic_write_bytes, atomic_write_json
from pipeline.runtime import dashboard_url, default_in_flight, start_ray
from pipeline.stage import Plan, Segment, ShuffleStage, run_final, run_row_local, run_shuffle
from pipeline.summary import RunSummary, build_summary
from quality.report import headline_markdown, write_report
from stages import clean, duplicate_ids, exact_dedup, fuzzy_dedup, ingest, langid, quality, rules

log = logging.getLogger("sluice")
ROW_LOCAL_WALL = "row-local pass"  # wall seconds of the fused pass; its stages' own seconds are work seconds
RETRY = dict(cache_policy=NONE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)


def _shuffle(module, cfg: SluiceConfig) -> ShuffleStage:
    """A dedup stage; its `quality_score` matters only when the keeper policy ranks by it."""
    reads = frozenset(module.READS)
    requires = reads if cfg.dedup.keep == "quality" else reads - {"quality_score"}
    return ShuffleStage(module.STAGE, partial(module.build, cfg), module.fingerprint(cfg), reads, requires)


def plan_curate(cfg: SluiceConfig, only: list[str] | None = None) -> Plan:
    """The whole curate plan, checked before any Ray work: inputs resolved and split into pieces,
    models found, rule names known, and every stage's columns added by an earlier one.

    `only` restricts the run to these input file paths (scheduled runs take only new files).
    """
    files = expand_inputs(cfg.inputs)
    if only is not None:
        wanted = set(only)
        files = [f for f in files if f.path in wanted]
    get_extractor(cfg.ingest.html_extractor)  # a missing optional extractor fails here, not inside Ray
    pieces, identities = ingest.pieces(files, cfg.ingest)
    q = cfg.quality
    judge = [build(section) for enabled, build, section in (
        (q.langid.enabled, langid.build, q.langid), (q.rules.enabled, rules.build, q.rules),
        (q.classifier.enabled, quality.build, q.classifier)) if enabled]
    segments = [Segment("read", (clean.build(cfg.clean),))] + ([Segment("judge", tuple(judge))] if judge else [])
    shuffles = [_shuffle(duplicate_ids, cfg)]
    if cfg.dedup.exact.enabled:
        shuffles.append(_shuffle(exact_dedup, cfg))
    if cfg.dedup.fuzzy.enabled:
        shuffles.append(_shuffle(fuzzy_dedup, cfg))
    return Plan(pieces, identities, ingest.build(cfg.ingest), segments, shuffles)


@task(task_run_name="row-local stages", **RETRY)
def row_local_task(run: RunDir, plan: Plan) -> tuple[list[StageCount], dict[str, float]]:
    return run_row_local(run, plan, default_in_flight())


@task(task_run_name="{name}", **RETRY)
def shuffle_task(run: RunDir, plan: Plan, index: int, inputs: int, name: str) -> StageCount:
    return run_shuffle(run, plan, index, inputs)


@task(task_run_name="apply decisions", **RETRY)
def final_task(run: RunDir, plan: Plan) -> None:
    run_final(run, plan, default_in_flight())


def summary_markdown(summary: RunSummary) -> str:
    lines = ["| stage | in | kept | rejected | by reason |", "|---|---:|---:|---:|---|"]
    for s in summary.stages:
        reasons = ", ".join(f"{k}: {v}" for k, v in s.rejected_by_reason.items()) or "-"
        lines.append(f"| {s.stage} | {s.inputs} | {s.kept} | {s.rejected} | {reasons} |")
    lines.append(f"\n**inputs {summary.inputs} = kept {summary.kept} + rejected {summary.rejected}**")
    return "\n".join(lines)


@flow(name="curate", log_prints=True)
def curate(cfg: SluiceConfig, only: list[str] | None = None) -> RunSummary:
    """Raw inputs to curated Parquet with a reconciled ledger: RUN/kept, RUN/rejected, RUN/summary.json."""
    plan = plan_curate(cfg, only)
    start_ray(cfg.ray)
    run = RunDir(cfg.out)
    with run.lock():
        atomic_write_json(run.config_file, cfg.model_dump(mode="json"))
        started = time.perf_counter()
        counts, seconds = row_local_task(run, plan)
        seconds[ROW_LOCAL_WALL] = time.perf_counter() - started
        for i, stage in enumerate(plan.shuffles):
            started = time.perf_counter()
            counts.append(shuffle_task(run, plan, i, counts[-1].kept, stage.name))
            seconds[stage.name] = time.perf_counter() - started
        started = time.perf_counter()
        final_task(run, plan)
        seconds["apply decisions"] = time.perf_counter() - started
        summary = build_summary(counts)
        atomic_write_bytes(run.summary_file, summary.to_json().encode())
        create_markdown_artifact(summary_markdown(summary), key="curate-ledger",
                                 description=f"Ledger of run {run.root.resolve()}")
        write_report(run.root)
        create_markdown_artifact(headline_markdown(run.root), key="curate-report",
                                 description="Data-quality headline and the report's path")
        atomic_write_json(run.run_info_file, run_info(seconds))
    return summary


def run_info(seconds: dict[str, float]) -> dict:
    """What is particular to this run rather than to its data (kept apart from summary.json, which is
    deterministic): where to look at it, and how long each stage took (row-local stages: seconds of
    work summed over workers, for the pieces this run processed, and the pass's wall seconds under
    ROW_LOCAL_WALL; others: wall seconds)."""
    from prefect.runtime import flow_run

    ui = flow_run.ui_url  # only meaningful with a Prefect server that has a UI
    return {"prefect_flow_run": flow_run.id, "prefect_flow_run_url": ui if ui and ui.startswith("http") else None,
            "artifacts": ["curate-ledger", "curate-report"], "report": "report.html", "ray_dashboard": dashboard_url(),
            "stage_seconds": {k: round(v, 3) for k, v in seconds.items()}}

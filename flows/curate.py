"""The `curate` flow: one Prefect task per stage, each running its Ray Data work from the flow's process.

Stages run in a fixed order over the run directory; a finished stage whose fingerprint still matches
is skipped, so a rerun after a kill resumes where the last run stopped.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from flows.retry import retry_transient
from pipeline.config import SluiceConfig
from pipeline.ledger import StageCount
from pipeline.readers import expand_inputs, get_extractor
from pipeline.rundir import RunDir, atomic_write_json
from pipeline.runtime import start_ray
from pipeline.stage import Build, read_stage, run_stage
from pipeline.summary import build_summary
from quality.report import headline_markdown, write_report
from stages import clean, exact_dedup, fuzzy_dedup, ingest, langid, quality, rules

log = logging.getLogger("sluice")


@dataclass
class StagePlan:
    name: str
    build: Build
    config_key: str  # what of the config (and inputs) this stage's output depends on


def plan_stages(cfg: SluiceConfig, only: list[str] | None = None) -> list[StagePlan]:
    """The enabled curate stages in order. Input paths are resolved here, before any Ray work.

    `only` restricts the run to these input file paths (scheduled runs take only new files).
    """
    files = expand_inputs(cfg.inputs)
    if only is not None:
        wanted = set(only)
        files = [f for f in files if f.path in wanted]
    get_extractor(cfg.ingest.html_extractor)  # a missing optional extractor fails here, not inside Ray
    q = cfg.quality
    plans = [
        StagePlan(ingest.STAGE, ingest.build(files, cfg.ingest),
                  ingest.inputs_fingerprint(files) + cfg.section_hash("ingest")),
        StagePlan(clean.STAGE, clean.build(cfg.clean), cfg.section_hash("clean")),
    ]
    if q.langid.enabled:
        plans.append(StagePlan(langid.STAGE, langid.build(q.langid), cfg.section_hash("quality.langid")))
    if q.rules.enabled:
        plans.append(StagePlan(rules.STAGE, rules.build(q.rules), cfg.section_hash("quality.rules")))
    if cfg.dedup.exact.enabled:
        plans.append(StagePlan(exact_dedup.STAGE, exact_dedup.build, cfg.section_hash("dedup.exact")))
    if cfg.dedup.fuzzy.enabled:
        plans.append(StagePlan(fuzzy_dedup.STAGE, fuzzy_dedup.build, cfg.section_hash("dedup.fuzzy")))
    if q.classifier.enabled:
        plans.append(StagePlan(quality.STAGE, quality.build(q.classifier), cfg.section_hash("quality.classifier")))
    return plans


def _chain(prev: str, key: str, name: str) -> str:
    return hashlib.sha256(f"{prev}|{name}|{key}".encode()).hexdigest()[:16]


@task(cache_policy=NONE, task_run_name="{plan.name}", retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_transient)
def run_stage_task(run: RunDir, plan: StagePlan, fingerprint: str, upstream: str | None,
                   cfg: SluiceConfig, expected: int | None) -> StageCount:
    return run_stage(run, plan.name, fingerprint, plan.build,
                     (lambda: read_stage(run, upstream)) if upstream else (lambda: None),
                     cfg, expected)


def summary_markdown(summary: dict) -> str:
    lines = ["| stage | in | kept | rejected | by reason |", "|---|---:|---:|---:|---|"]
    for s in summary["stages"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in s["rejected_by_reason"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['in']} | {s['kept']} | {s['rejected']} | {reasons} |")
    lines.append(f"\n**inputs {summary['inputs']} = kept {summary['kept']} + rejected {summary['rejected']}**")
    return "\n".join(lines)


@flow(name="curate", log_prints=True)
def curate(cfg: SluiceConfig, only: list[str] | None = None) -> dict:
    """Raw inputs to curated Parquet with a reconciled ledger: RUN/kept, RUN/rejected, RUN/summary.json."""
    plans = plan_stages(cfg, only)
    start_ray(cfg.ray)
    run = RunDir(cfg.out)
    counts: list[StageCount] = []
    fingerprint, upstream = "", None
    for plan in plans:
        fingerprint = _chain(fingerprint, plan.config_key, plan.name)
        expected = counts[-1].kept if counts else None
        counts.append(run_stage_task(run, plan, fingerprint, upstream, cfg, expected))
        upstream = plan.name
    run.publish([p.name for p in plans])
    summary = build_summary(counts)
    atomic_write_json(run.root / "summary.json", summary)
    create_markdown_artifact(summary_markdown(summary), key="curate-ledger",
                             description=f"Ledger of run {Path(cfg.out).resolve()}")
    write_report(run.root)
    create_markdown_artifact(headline_markdown(run.root), key="curate-report",
                             description="Data-quality headline and the report's path")
    atomic_write_json(run.root / "run_info.json", run_links())
    return summary


def run_links() -> dict:
    """Where to look at this run beyond its files (kept apart from summary.json, which is deterministic)."""
    from prefect.runtime import flow_run

    from pipeline.runtime import dashboard_url

    ui = flow_run.ui_url  # only meaningful with a Prefect server that has a UI
    return {"prefect_flow_run": flow_run.id, "prefect_flow_run_url": ui if ui and ui.startswith("http") else None, "artifacts": ["curate-ledger", "curate-report"],
            "report": "report.html", "ray_dashboard": dashboard_url()}

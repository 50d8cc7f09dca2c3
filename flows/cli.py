"""The `sluice` command line: validate configs, run flows, and look at what a run produced."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from pipeline.config import ConfigError, SluiceConfig, load_config
from pipeline.readers import InputError
from pipeline.rundir import RunDir, RunLocked
from pipeline.stage import PlanError
from pipeline.summary import RunSummary, load_summary

app = typer.Typer(help="Sluice: raw text to a trained Mixture-of-Experts model.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()


def _setup_logging(verbose: bool) -> None:
    """Rich log lines in a terminal; plain timestamped lines, one per record and never wrapped, when
    the output goes to a file or a scheduler's log."""
    if console.is_terminal:
        logging.basicConfig(level=logging.WARNING, format="%(message)s",
                            handlers=[RichHandler(console=console, show_path=False)])
    else:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("sluice").setLevel(logging.DEBUG if verbose else logging.INFO)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _load(config: Optional[Path], **overrides) -> SluiceConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        _fail(str(err))


def print_summary(summary: RunSummary, title: str = "Ledger") -> None:
    table = Table(title=title)
    for col, justify in [("stage", "left"), ("in", "right"), ("kept", "right"), ("rejected", "right"),
                         ("rejected by reason", "left")]:
        table.add_column(col, justify=justify)
    for s in summary.stages:
        reasons = ", ".join(f"{k} {v}" for k, v in s.rejected_by_reason.items())
        table.add_row(s.stage, str(s.inputs), str(s.kept), str(s.rejected), reasons)
    console.print(table)
    ok = "[green]reconciled[/]" if summary.inputs == summary.kept + summary.rejected else "[red]MISMATCH[/]"
    console.print(f"inputs {summary.inputs} = kept {summary.kept} + rejected {summary.rejected}: {ok}")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    _setup_logging(verbose)


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="YAML config to check")]) -> None:
    """Check a config file (keys, types, input paths) without running anything."""
    cfg = _load(config)
    console.print(f"[green]ok[/]: {config} ({len(cfg.inputs)} inputs, output {cfg.out})")


DashboardOption = Annotated[Optional[bool], typer.Option(
    "--dashboard/--no-dashboard", help="start Ray's dashboard to watch the run (default: `ray.dashboard`, off)")]


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config; omit to use the defaults")] = None,
    input: Annotated[Optional[list[str]], typer.Option("--input", "-i", help="input file/folder/glob (repeatable)")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="run directory")] = None,
    dashboard: DashboardOption = None,
) -> None:
    """Run the pipeline on a config, or on the defaults over the given --input paths."""
    inputs = [{"path": p} for p in input] if input else None
    cfg = _load(config, inputs=inputs, out=out)
    if not cfg.inputs:
        _fail("no inputs: give a config with `inputs:` or at least one --input PATH")
    _run_pipeline(cfg, dashboard)


def _start_services(cfg: SluiceConfig, dashboard: bool | None = None) -> None:
    """Start (or join) Ray once, with Prefect's API beside it, before any flow runs: a missing auth
    token stops here, not in a stage (see flows/startup.py). `dashboard` overrides `ray.dashboard`."""
    from flows.startup import start_services
    from pipeline.runtime import RayAuthError

    ray_config = cfg.ray if dashboard is None else cfg.ray.model_copy(update={"dashboard": dashboard})
    try:
        start_services(ray_config)
    except RayAuthError as err:
        _fail(str(err))


def _run_pipeline(cfg: SluiceConfig, dashboard: bool | None = None) -> dict:
    from flows.pipeline import pipeline_flow

    _start_services(cfg, dashboard)
    try:
        result = pipeline_flow(cfg)
    except (InputError, ConfigError, RunLocked, PlanError) as err:
        _fail(str(err))
    print_summary(result["summary"])
    out = Path(cfg.out).resolve()
    console.print(f"run directory: [bold]{out}[/]  report: {out / 'report.html'}  links: {out / 'run_info.json'}")
    if "train" in result:
        t = result["train"]
        val = f", val loss {t['val_loss']:.3f}" if t.get("val_loss") is not None else ""
        console.print(f"trained {t['steps']} steps: loss {t['loss_first']:.3f} -> {t['loss']:.3f}{val}; "
                      f"metrics in {Path(cfg.out).resolve() / 'train' / 'metrics.jsonl'}")
    return result


@app.command()
def demo(
    docs: Annotated[int, typer.Option(help="documents to generate")] = 3000,
    out: Annotated[str, typer.Option(help="run directory")] = "runs/demo",
    config: Annotated[Path, typer.Option(help="config for everything but the inputs")] = Path("examples/demo.yaml"),
    seed: Annotated[int, typer.Option(help="corpus seed")] = 0,
) -> None:
    """Generate a corpus (several sources and formats, with duplicates, boilerplate and junk) and run on it."""
    from pipeline.democorpus import generate_corpus

    corpus_dir = Path(out).with_name(Path(out).name + "-corpus")
    info = generate_corpus(corpus_dir, n_docs=docs, seed=seed)
    console.print(f"generated {info.n_records} records in {corpus_dir}")
    _run_pipeline(_load(config, inputs=info.inputs, out=out))


@app.command()
def summary(run_dir: Annotated[Path, typer.Argument(help="a finished run directory")]) -> None:
    """Print a run's ledger: per stage, documents in, kept, and rejected by reason."""
    try:
        print_summary(load_summary(run_dir), title=f"Ledger of {run_dir}")
    except FileNotFoundError as err:
        _fail(str(err))


@app.command()
def dedup(
    inputs: Annotated[list[str], typer.Argument(help="input files, folders or globs")],
    out: Annotated[str, typer.Option("--out", "-o", help="run directory")],
    threshold: Annotated[Optional[float], typer.Option(help="Jaccard threshold")] = None,
    num_perm: Annotated[Optional[int], typer.Option(help="MinHash permutations")] = None,
    ngram: Annotated[Optional[int], typer.Option(help="shingle size")] = None,
    dashboard: DashboardOption = None,
) -> None:
    """Ingest + exact + fuzzy dedup alone: kept/, rejected/ (duplicate_of, cluster_id), summary.json."""
    from flows.curate import curate
    from stages.fuzzy_dedup import configure

    cfg = _load(None, inputs=[{"path": p} for p in inputs], out=out,
                quality={"langid": {"enabled": False}, "rules": {"enabled": False}, "classifier": {"enabled": False}})
    try:
        cfg = configure(cfg, threshold=threshold, num_perm=num_perm, ngram=ngram)
        _start_services(cfg, dashboard)
        print_summary(curate(cfg))
    except (InputError, ValueError) as err:
        _fail(str(err))


@app.command()
def tokenize(
    run_dir: Annotated[Path, typer.Argument(help="a curated run directory")],
    tokenizer: Annotated[Optional[Path], typer.Option(help="a tokenizer.json; default: train a BPE")] = None,
    config: Annotated[Optional[Path], typer.Option(help="config for the tokenize/shard settings")] = None,
) -> None:
    """Tokenize a curated run's kept documents into Arrow shards with a manifest (RUN_DIR/shards)."""
    from flows.tokenize import tokenize_flow

    cfg = _load(config)
    _start_services(cfg)
    try:
        shard_dir = tokenize_flow(cfg, str(run_dir), str(tokenizer) if tokenizer else None)
    except FileNotFoundError as err:
        _fail(str(err))
    _print_shards(Path(shard_dir))


def _print_shards(shard_dir: Path) -> None:
    """Decoded samples hold arbitrary text: never let Rich read it as markup."""
    from stages.shard import inspect_shards

    console.print(inspect_shards(shard_dir), markup=False, highlight=False)


@app.command()
def inspect(shard_dir: Annotated[Path, typer.Argument(help="a shard folder with manifest.json")]) -> None:
    """Show a shard folder: manifest summary, token histogram, and a few samples decoded to text."""
    from pipeline.manifest import ShardError

    try:
        _print_shards(shard_dir)
    except (ShardError, ValueError) as err:
        _fail(str(err))


@app.command()
def train(config: Annotated[Path, typer.Argument(help="config with a `train:` section")],
          shards: Annotated[Optional[Path], typer.Option(help="shard folder; default: OUT/shards")] = None) -> None:
    """Train the MoE model with Ray Train on a shard folder; metrics go to OUT/train/metrics.jsonl."""
    from flows.train import train_flow

    cfg = _load(config)
    _start_services(cfg)
    final = train_flow(cfg, str(shards or RunDir(cfg.out).shards), cfg.out)
    for k, v in final.items():
        console.print(f"{k}: {v}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a finished run directory")]) -> None:
    """Write RUN_DIR/report.html: one self-contained page with the funnel, reasons, languages and samples."""
    from quality.report import write_report

    try:
        console.print(f"wrote {write_report(run_dir)}")
    except FileNotFoundError as err:
        _fail(str(err))


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="config whose inputs are watched; `out` is the run root")],
    cron: Annotated[Optional[str], typer.Option(help='cron schedule, e.g. "0 2 * * *"')] = None,
    interval: Annotated[Optional[float], typer.Option(help="or: seconds between runs")] = None,
    name: Annotated[str, typer.Option(help="deployment name")] = "sluice-incremental",
) -> None:
    """Serve scheduled incremental runs: each curates only new input files, against all curated so far."""
    from flows.serve import AlreadyServing, serve as serve_flow

    if (cron is None) == (interval is None):
        _fail("give exactly one of --cron or --interval")
    _load(config)  # a broken config stops here, not in every scheduled run
    try:
        serve_flow(config, cron=cron, interval=interval, name=name)
    except AlreadyServing as err:
        _fail(str(err))


quality_app = typer.Typer(help="Quality classifiers.", no_args_is_help=True)
app.add_typer(quality_app, name="quality")


@quality_app.command("train")
def quality_train(
    positive: Annotated[list[Path], typer.Option(help="files of good text (repeatable)")],
    negative: Annotated[list[Path], typer.Option(help="files of bad text (repeatable)")],
    out: Annotated[Path, typer.Option(help="where to write the fastText model")],
) -> None:
    """Train a fastText quality classifier; print precision, recall, F1 and ROC AUC on a held-out split."""
    from quality.classifier import train_classifier

    metrics = train_classifier(positive, negative, out)
    for k, v in metrics.model_dump().items():
        console.print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


@quality_app.command("train-default")
def quality_train_default(
    data: Annotated[Path, typer.Option(help="the shared real-data folder")] = Path("../shared/data"),
    out: Annotated[Path, typer.Option(help="model path; MODEL_CARD.md and sidecars go beside it")] =
        Path("quality/models/sluice-quality-en.ftz"),
) -> None:
    """Rebuild the shipped classifier from ../shared/data; print held-out precision, recall, F1, ROC AUC."""
    from quality.default_model import train_default

    result = train_default(data, out)
    m = result["metrics"]
    console.print(f"held-out: precision {m['precision']:.4f} recall {m['recall']:.4f} F1 {m['f1']:.4f} "
                  f"ROC AUC {m['roc_auc']:.4f} (test {m['test']}); at 0.8: {m['at_threshold']}")
    console.print(f"keeps at 0.8: {result['keep']}")
    console.print(f"wrote {out} and {out.with_name('MODEL_CARD.md')}")


if __name__ == "__main__":
    sys.exit(app())

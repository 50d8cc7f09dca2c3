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
from pipeline.summary import load_summary

app = typer.Typer(help="Sluice: raw text to a trained Mixture-of-Experts model.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    logging.getLogger("sluice").setLevel(logging.DEBUG if verbose else logging.INFO)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _load(config: Optional[Path], **overrides) -> SluiceConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        _fail(str(err))


def print_summary(summary: dict, title: str = "Ledger") -> None:
    table = Table(title=title)
    for col, justify in [("stage", "left"), ("in", "right"), ("kept", "right"), ("rejected", "right"),
                         ("rejected by reason", "left")]:
        table.add_column(col, justify=justify)
    for s in summary["stages"]:
        reasons = ", ".join(f"{k} {v}" for k, v in s["rejected_by_reason"].items())
        table.add_row(s["stage"], str(s["in"]), str(s["kept"]), str(s["rejected"]), reasons)
    console.print(table)
    ok = "[green]reconciled[/]" if summary["inputs"] == summary["kept"] + summary["rejected"] else "[red]MISMATCH[/]"
    console.print(f"inputs {summary['inputs']} = kept {summary['kept']} + rejected {summary['rejected']}: {ok}")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    _setup_logging(verbose)


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="YAML config to check")]) -> None:
    """Check a config file (keys, types, input paths) without running anything."""
    cfg = _load(config)
    console.print(f"[green]ok[/]: {config} ({len(cfg.inputs)} inputs, output {cfg.out})")


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config; omit to use the defaults")] = None,
    input: Annotated[Optional[list[str]], typer.Option("--input", "-i", help="input file/folder/glob (repeatable)")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="run directory")] = None,
) -> None:
    """Run the pipeline on a config, or on the defaults over the given --input paths."""
    inputs = [{"path": p} for p in input] if input else None
    cfg = _load(config, inputs=inputs, out=out)
    if not cfg.inputs:
        _fail("no inputs: give a config with `inputs:` or at least one --input PATH")
    _run_curate(cfg)


def _run_curate(cfg: SluiceConfig) -> dict:
    from flows.curate import curate

    try:
        summary = curate(cfg)
    except InputError as err:
        _fail(str(err))
    print_summary(summary)
    console.print(f"run directory: [bold]{Path(cfg.out).resolve()}[/]")
    return summary


@app.command()
def summary(run_dir: Annotated[Path, typer.Argument(help="a finished run directory")]) -> None:
    """Print a run's ledger: per stage, documents in, kept, and rejected by reason."""
    try:
        print_summary(load_summary(run_dir), title=f"Ledger of {run_dir}")
    except FileNotFoundError as err:
        _fail(str(err))


if __name__ == "__main__":
    sys.exit(app())

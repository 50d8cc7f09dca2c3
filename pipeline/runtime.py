"""The Ray runtime: an embedded local cluster by default, an existing one via RAY_ADDRESS or `ray.address`."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import ray
from ray.data.context import ShuffleStrategy

from pipeline.config import RayConfig

log = logging.getLogger("sluice")

PROJECT_PACKAGES = ("pipeline", "stages", "quality", "flows")
TOKEN_PATH = Path.home() / ".ray" / "auth_token"


def _runtime_env() -> dict:
    """Ship the project's own packages to a remote cluster's workers."""
    root = Path(__file__).resolve().parent.parent
    return {"py_modules": [str(root / p) for p in PROJECT_PACKAGES]}


def start_ray(cfg: RayConfig | None = None) -> str | None:
    """Connect to (or start) Ray once per process; return the dashboard URL, if any."""
    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return dashboard_url()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    if address:
        ray.init(address=address, runtime_env=_runtime_env(), **common)
    else:
        ray.init(
            address="local",  # never attach silently to some other cluster on this machine
            num_cpus=cfg.num_cpus,
            include_dashboard=cfg.dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=cfg.dashboard_port,
            **common,
        )
    configure_data_context()
    url = dashboard_url()
    if url:
        log.info("Ray dashboard: %s (auth token in %s)", url, TOKEN_PATH)
    return url


def configure_data_context() -> None:
    """Quiet, deterministic Ray Data defaults shared by every stage.

    Groupbys use the sort-based shuffle: Ray's default hash shuffle parks aggregator actors on the
    CPUs, which on a small machine starves the very tasks that feed them.
    """
    ctx = ray.data.DataContext.get_current()
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    ctx.enable_progress_bars = os.environ.get("SLUICE_PROGRESS", "1") == "1"
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True


def dashboard_url() -> str | None:
    """The dashboard of the cluster this process is connected to, if it has one."""
    url = ray._private.worker.global_worker.node.address_info.get("webui_url")  # noqa: SLF001 (no public API)
    return f"http://{url}" if url else None

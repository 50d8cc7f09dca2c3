"""The Ray runtime: an embedded local cluster by default, an existing one via RAY_ADDRESS or `ray.address`.

Ray is started once per process, by flows/ (the CLI and each flow entry point); stages and the rest of
pipeline/ assume it is up.

Token auth is chosen and checked here rather than left to Ray's defaults, because Ray 2.60's defaults
differ by path: `ray.init()` of a new local cluster turns token auth on, `ray start --head` turns it on
only when a token already exists, and `ray.init(address=...)` never turns it on, so a driver pointed at
an authenticated cluster retries for 30 s and ends in a misleading ConnectionError. Sluice asks for
token auth on every path and fails at once, saying what to set, when it cannot have it.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator, ParamSpec, TypeVar

import pyarrow as pa
import ray

from pipeline.config import RayConfig

log = logging.getLogger("sluice")

PROJECT_PACKAGES = ("pipeline", "stages", "quality", "flows")
TOKEN_PATH = Path.home() / ".ray" / "auth_token"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_HELP = ("put the cluster's token in ~/.ray/auth_token (the file `ray start --head` read it from), "
              "or set RAY_AUTH_TOKEN to the token, or RAY_AUTH_TOKEN_PATH to a file holding it")
OPT_OUT = "set `ray.allow_unauthenticated: true` in the config to accept a cluster without token auth"


class RayAuthError(RuntimeError):
    """Ray's token auth cannot be set up as the config asks; the message says what to set."""


# A Ray task reserves one CPU, so the Rust thread pools inside it (polars; tokenizers' rayon) get one
# thread, as Ray already does for OpenMP: two tasks on two cores then run two threads, not four
# competing ones. The driver keeps its pools (BPE training there uses every core). (MALLOC_ARENA_MAX=2
# was tried too: ~60 MB less per idle worker, but `sluice tokenize` 15 % slower.)
WORKER_ENV = {"POLARS_MAX_THREADS": "1", "RAYON_NUM_THREADS": "1"}


P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS: Arrow's allocator (mimalloc) and glibc's `malloc_trim`.

    Both keep what a process frees for reuse, so after one burst of allocation (BPE training on the
    driver, a worker's largest piece) the process would carry that high-water mark through the rest
    of the run, and an idle worker would hold its last task's peak.
    """
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def releasing_memory(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, then `release_freed_memory()`: for the body of a Ray task, so the worker that ran it
    goes back to idle without its peak (`sluice dedup` at 100k documents: ~50 MB less per idle
    worker, one probe)."""

    @functools.wraps(fn)
    def released(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            release_freed_memory()

    return released


def default_in_flight() -> int:
    """Ray tasks in flight: two per CPU of the cluster, enough to keep every CPU busy while a result
    is collected, few enough that the results waiting in the object store stay bounded."""
    return 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))


def task_name(fn: Callable) -> str:
    """A task's name for the dashboard and the worker's process title: the function's, through partials."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", "task")


def map_in_order(fn: Callable[[T], R], items: Iterable[T], in_flight: int | None = None,
                 name: str | None = None) -> Iterator[R]:
    """`fn(item)` for each item as a one-CPU Ray task, at most `in_flight` (default
    `default_in_flight()`) submitted at a time; the results in item order, so whatever consumes them
    stays deterministic whatever the worker count.

    For coarse work items (a piece to tokenize or finish, a shard to write) plain tasks, not a
    Ray Data pipeline: Ray Data's executor and its resource budget left a CPU idle often enough to
    cost ~15 % of the tokenize pass at 100k documents (one probe, 31 s against 37 s).
    """
    remote = ray.remote(num_cpus=1)(releasing_memory(fn)).options(name=name or task_name(fn))
    limit = max(1, in_flight or default_in_flight())
    pending: deque[ray.ObjectRef] = deque()
    try:
        for item in items:
            if len(pending) >= limit:
                yield ray.get(pending.popleft())
            pending.append(remote.remote(item))
        while pending:
            yield ray.get(pending.popleft())
    finally:  # a consumer that stops early (an error, a closed generator) leaves no work running
        for ref in pending:
            ray.cancel(ref)


def _runtime_env(remote: bool) -> dict:
    """Every worker's thread settings; for a remote cluster also the project's own packages."""
    root = Path(__file__).resolve().parent.parent
    env: dict = {"env_vars": dict(WORKER_ENV)}
    if remote:
        env["py_modules"] = [str(root / p) for p in PROJECT_PACKAGES]
    return env


def token_available() -> bool:
    """Whether Ray would find a token, looked up by Ray's own loader (RAY_AUTH_TOKEN, then
    RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token) so the answer cannot drift from what Ray sends."""
    from ray._raylet import AuthenticationTokenLoader  # no public API for this in Ray 2.60

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # it caches its first answer, which may predate a token written since
    return loader.has_token(ignore_auth_mode=True)


def choose_auth_mode(cfg: RayConfig, remote: bool) -> str:
    """'token' or 'disabled', for an embedded cluster (`remote=False`) or for joining one.

    Token auth unless the user both turns it off (RAY_AUTH_MODE=disabled, or a remote cluster without a
    token to send) and opts out in the config; an embedded cluster gets a fresh token from Ray if none exists.
    """
    requested = os.environ.get(AUTH_MODE_ENV, "token").strip().lower()
    if requested not in ("token", "disabled"):
        raise RayAuthError(f"{AUTH_MODE_ENV}={requested!r} is not a Ray auth mode: use 'token' or unset it")
    if requested == "disabled":
        if not cfg.allow_unauthenticated:
            raise RayAuthError(f"{AUTH_MODE_ENV}=disabled turns Ray's token auth off, so anyone who can reach "
                               f"the cluster's ports can run code on it: unset it, or {OPT_OUT}")
        return "disabled"
    if remote and not token_available():
        if not cfg.allow_unauthenticated:
            raise RayAuthError(f"no Ray auth token found to join the cluster: {TOKEN_HELP}; "
                               f"or, for a cluster started without token auth, {OPT_OUT}")
        log.warning("no Ray auth token found; joining the cluster without token auth (ray.allow_unauthenticated)")
        return "disabled"
    return "token"


def _apply_auth_mode(mode: str) -> None:
    """Set the mode for this process and the Ray processes it starts. Ray reads RAY_AUTH_MODE into a
    process-wide config once, when it is imported, so that config is re-read after the change."""
    from ray._raylet import Config  # what Ray's own `_enable_token_auth` does; no public API

    os.environ[AUTH_MODE_ENV] = mode
    Config.initialize("")


def _check_auth_mode(mode: str) -> None:
    """Verify Ray took the mode asked for, rather than trusting that setting it sufficed."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if is_token_auth_enabled() != (mode == "token"):
        raise RayAuthError(f"Ray's token auth is {'on' if is_token_auth_enabled() else 'off'}, "
                           f"but Sluice asked for {mode!r}")


@contextlib.contextmanager
def _lean_head(keep_monitor: bool) -> Iterator[None]:
    """While a local head starts: without the log monitor, and without the autoscaler's monitor unless
    `keep_monitor`.

    Both do nothing for the embedded cluster, whose size is fixed and whose workers' output is not
    streamed to the driver (`log_to_driver=False`), yet each is a Python process of ~90 MB that also
    slows `ray.shutdown` (a tree of 2.05 GB at `sluice dedup`'s peak carried both). `ray start` has
    flags for them (`--no-monitor`, `--include-log-monitor`), `ray.init` none, so their `RayParams`
    defaults are changed for the duration. The monitor stays with the dashboard, whose cluster-status
    panel shows what the monitor publishes.
    """
    from ray._private import parameter  # noqa: SLF001 (no public API)

    original = parameter.RayParams.__init__

    def init(self, *args, **kwargs) -> None:
        kwargs.setdefault("include_log_monitor", False)
        kwargs.setdefault("no_monitor", not keep_monitor)
        original(self, *args, **kwargs)

    parameter.RayParams.__init__ = init
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original


def start_ray(cfg: RayConfig | None = None) -> str | None:
    """Connect to (or start) Ray once per process; return the dashboard URL, if any.

    Raises RayAuthError, before any connection attempt, when token auth cannot be had (see module doc).
    """
    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return dashboard_url()
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    remote = address not in (None, "local")
    mode = choose_auth_mode(cfg, remote)
    _apply_auth_mode(mode)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    if remote:
        ray.init(address=address, runtime_env=_runtime_env(remote), **common)
    else:
        with _lean_head(keep_monitor=cfg.dashboard):
            ray.init(
                address="local",  # never attach silently to some other cluster on this machine
                runtime_env=_runtime_env(remote),
                num_cpus=cfg.num_cpus,
                include_dashboard=cfg.dashboard,
                dashboard_host="127.0.0.1",
                dashboard_port=cfg.dashboard_port,
                **common,
            )
    _check_auth_mode(mode)
    url = dashboard_url()
    if url:
        log.info("Ray dashboard: %s (auth token in %s)", url, TOKEN_PATH)
    elif not remote:
        log.info("Ray dashboard off (`ray.dashboard: true` in the config, or --dashboard, to watch the run)")
    return url


def dashboard_url() -> str | None:
    """The dashboard of the cluster this process is connected to, if it has one."""
    url = ray._private.worker.global_worker.node.address_info.get("webui_url")  # noqa: SLF001 (no public API)
    return f"http://{url}" if url else None

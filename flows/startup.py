"""What every `sluice` command that runs a flow starts first: the watchdog, Ray, and Prefect's API.

Ray's local cluster and Prefect's ephemeral API server each take seconds to come up, and neither
needs the other, so they start side by side: Prefect's server in a thread while Ray starts here.
Left to itself, Prefect would start its server only at the first flow call, after Ray is up.
"""
from __future__ import annotations

import threading

from pipeline.config import RayConfig
from pipeline.runtime import start_ray


def _ephemeral_prefect_wanted() -> bool:
    """Prefect's own rule (`prefect.client.orchestration.get_client`): no API URL set, ephemeral allowed."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    return not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())


def _start_ephemeral_prefect(failure: list[BaseException]) -> None:
    """Start the ephemeral server Prefect would start at the first flow call (it is a per-process
    singleton, so that call then finds it running); a failure is kept for the caller to raise."""
    from prefect.server.api.server import SubprocessASGIServer

    try:
        SubprocessASGIServer().start()
    except BaseException as err:  # noqa: BLE001: re-raised in the main thread
        failure.append(err)


def start_services(ray_config: RayConfig) -> None:
    """Start the watchdog, then Ray and (when Prefect would use one) its ephemeral server side by side.

    Returns once both are up; raises what either raised, Ray's error first (pipeline.runtime.RayAuthError
    is the one a user can act on).
    """
    from flows.processes import start_watchdog

    start_watchdog()  # first, so whatever starts next goes when this process goes
    failure: list[BaseException] = []
    prefect = None
    if _ephemeral_prefect_wanted():
        prefect = threading.Thread(target=_start_ephemeral_prefect, args=(failure,), name="prefect-server", daemon=True)
        prefect.start()
    try:
        start_ray(ray_config)
    finally:
        if prefect is not None:
            prefect.join()
    if failure:
        raise failure[0]

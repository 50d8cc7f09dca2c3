"""What every `sluice` command that runs a flow starts first: the watchdog, Ray, and Prefect's API.

Ray's local cluster and Prefect's ephemeral API server each take seconds to come up, and neither
needs the other, so they start side by side: Prefect's server as a child process (see
flows/prefect_server.py) while Ray starts here. Left to itself, Prefect would start its server only
at the first flow call, after Ray is up.
"""
from __future__ import annotations

import atexit

from pipeline.config import RayConfig
from pipeline.runtime import start_ray


def _ephemeral_prefect_wanted() -> bool:
    """Prefect's own rule (`prefect.client.orchestration.get_client`): no API URL set, ephemeral allowed."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    return not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())


def start_services(ray_config: RayConfig) -> None:
    """Start the watchdog, then Ray and (when Prefect would use one) its ephemeral server side by side.

    Returns once both are up; raises what either raised, Ray's error first (pipeline.runtime.RayAuthError
    is the one a user can act on). The server stops when this process exits, however it exits.
    """
    from flows.prefect_server import EphemeralServer
    from flows.processes import start_watchdog

    start_watchdog()  # first, so whatever starts next goes when this process goes
    if not _ephemeral_prefect_wanted():
        start_ray(ray_config)
        return
    server = EphemeralServer()
    server.start()
    atexit.register(server.stop)
    try:
        start_ray(ray_config)
    except BaseException:
        server.stop()
        raise
    server.use()

"""Prefect flows and the `sluice` CLI: the top of the house. Nothing imports this package."""
import os

# Before prefect is imported: offline telemetry only logs errors, and the ephemeral server needs
# more than the default 20 s to start on a small machine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

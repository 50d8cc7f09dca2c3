"""Register the incremental flow as a deployment on a Prefect server's work pool.

For teams with a Prefect server: runs are then picked up by any worker of the pool.

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    prefect work-pool create sluice --type process
    python -m flows.deploy examples/demo.yaml --pool sluice --cron "0 2 * * *"
    prefect worker start --pool sluice

`sluice serve` is the same schedule without a server or a worker to run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from flows.incremental import incremental_flow

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="config whose inputs are watched; `out` is the run root")
    ap.add_argument("--pool", required=True, help="work pool name")
    ap.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: nightly at 02:00)")
    ap.add_argument("--name", default="sluice-incremental")
    args = ap.parse_args()
    incremental_flow.from_source(source=str(ROOT), entrypoint="flows/incremental.py:incremental_flow").deploy(
        name=args.name, work_pool_name=args.pool, cron=args.cron,
        parameters={"config_path": str(args.config.resolve())})


if __name__ == "__main__":
    main()

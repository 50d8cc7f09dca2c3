"""Which failures Prefect retries: transient infrastructure errors, never bad input or a broken ledger."""
from __future__ import annotations

import ray.exceptions

TRANSIENT = (ray.exceptions.RaySystemError, ray.exceptions.ObjectLostError, ray.exceptions.WorkerCrashedError,
             ray.exceptions.NodeDiedError, ray.exceptions.GetTimeoutError, ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, TRANSIENT):
            return True
        exc = exc.__cause__
    return False


def retry_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only what a second try can fix."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)

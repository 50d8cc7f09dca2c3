"""Fault injection for the chaos test: SIGKILL the whole run at a named commit point.

`SLUICE_CHAOS=FILE` names a JSON file {"point": NAME, "nth": N}: the N-th time any process of the run
(driver or Ray worker, which inherit the variable) reaches point NAME, it kills the run's session
leader's process group, as the OOM killer or a lost node would. The count lives in FILE.count, shared
by every process through a file lock. Without the variable, `reached` costs one dictionary lookup.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal

POINTS = ("write.before_rename", "dir.before_marker", "dir.before_rename", "dir.after_rename")


def reached(point: str) -> None:
    plan_file = os.environ.get("SLUICE_CHAOS")
    if not plan_file:
        return
    with open(plan_file) as fh:
        plan = json.load(fh)
    if plan["point"] != point:
        return
    with open(plan_file + ".count", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        seen = int(fh.read() or 0) + 1
        fh.seek(0)
        fh.truncate()
        fh.write(str(seen))
        fh.flush()
        os.fsync(fh.fileno())
    if seen == plan["nth"]:
        os.killpg(os.getsid(0), signal.SIGKILL)

"""Processes that cannot outlive the Sluice command that started them, even after a SIGKILL.

A scheduled service runs for months under a supervisor that restarts it; whatever a hard kill
leaves behind adds up with every restart. Two guarantees, because Sluice starts some processes
itself and others are started for it by Prefect (flow-run subprocesses, the ephemeral API server)
and Ray (raylet, GCS, agents, workers):

- `spawn`: a child Sluice starts gets its own process group (stopped as a whole) and, on Linux, a
  parent-death signal, so the kernel kills it the moment its parent dies, however it died.
- `start_watchdog`: a small separate process that records every descendant of the command (pid and
  start time, so a reused pid is never mistaken for one of ours) and, once the command is gone,
  kills those still alive together with their process groups. Ray's agents, for one, otherwise
  wait a minute for a dead GCS before they exit, and Prefect's ephemeral server never does.

Processes are matched by what was recorded (pid + start time, process group), never by name.

    python -m flows.processes PID      the watchdog of process PID (started by `start_watchdog`)
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Iterable

import psutil
from pydantic import BaseModel

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_WATCHDOG: subprocess.Popen | None = None


class ProcessRef(BaseModel):
    """A process as recorded: its pid and start time, which together never name another process."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> "ProcessRef":
        return cls(pid=pid, create_time=psutil.Process(pid).create_time())

    def process(self) -> psutil.Process | None:
        """The live process this names, or None when it is gone (or its pid now names another)."""
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.pid)
            if proc.create_time() == self.create_time and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        return None


def _die_with(parent: int) -> Callable[[], None]:
    """preexec_fn: the kernel sends SIGKILL to the child when `parent` dies.

    The signal follows the *thread* that forked the child, so spawn from a thread that lives as
    long as the child should (the main thread, in Sluice). A parent that died before the prctl
    took effect is caught by the getppid check.
    """
    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


def spawn(args: list[str], **popen_kwargs) -> subprocess.Popen:
    """Start a child in a new process group of its own that dies with this process."""
    return subprocess.Popen(args, process_group=0, preexec_fn=_die_with(os.getpid()), **popen_kwargs)


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever is left after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_recorded(refs: Iterable[ProcessRef], grace: float = 5) -> list[int]:
    """Stop the recorded processes still alive, and the groups they are in when a recorded process leads it.

    A group catches what was started after the last record. It outlives its leader, and is still
    ours then: Linux never hands out a pid that is in use as a process group id. A group led by
    anything else (the shell's job that ran `sluice run`) is left alone. SIGTERM first, SIGKILL after
    `grace` seconds. Returns the pids that were still alive.
    """
    refs = list(refs)
    alive = [p for p in (r.process() for r in refs) if p is not None]
    found = [p.pid for p in alive]
    groups = _groups(alive) & {r.pid for r in refs}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, sig)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        _, alive = psutil.wait_procs(alive, timeout=grace)
    return found


def _groups(procs: Iterable[psutil.Process]) -> set[int]:
    groups = set()
    for proc in procs:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(proc.pid))
    return groups


def start_watchdog() -> ProcessRef:
    """Start (once per process) the watchdog that sweeps this process's descendants after it dies.

    The watchdog runs in a session of its own, so a kill of this process's group spares it and it
    can still clean up; it exits as soon as it has.
    """
    global _WATCHDOG
    if _WATCHDOG is None or _WATCHDOG.poll() is not None:
        _WATCHDOG = subprocess.Popen([sys.executable, "-m", "flows.processes", str(os.getpid())],
                                     start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ProcessRef.of(_WATCHDOG.pid)


def watch(parent: int, every: float = 1.0) -> None:
    """Record `parent`'s descendants until it is gone, then kill those still alive."""
    me = os.getpid()
    seen: dict[int, ProcessRef] = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        watched = psutil.Process(parent)
        while os.getppid() == parent:
            for child in watched.children(recursive=True):
                if child.pid != me and child.pid not in seen:
                    with contextlib.suppress(psutil.Error):
                        seen[child.pid] = ProcessRef(pid=child.pid, create_time=child.create_time())
            alive = {pid: proc for pid, proc in ((pid, ref.process()) for pid, ref in seen.items()) if proc}
            leaders = _groups(alive.values())  # a dead leader still names its group's survivors
            seen = {pid: ref for pid, ref in seen.items() if pid in alive or pid in leaders}
            time.sleep(every)
    kill_recorded(seen.values())


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the command; the watchdog cleans after it
    watch(int(sys.argv[1]))

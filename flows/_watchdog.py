"""Stops every process a run started once the run's own process is gone, however it ended.

Prefect starts its temporary API server (uvicorn, ~220 MB) as a child of the ``eegmi``
process and stops it from an ``atexit`` hook; a run killed with ``kill -9`` or by a crash
never runs that hook, and the server lived on, reparented to PID 1. Dask's local workers and
the readers' child processes are in the same position.

``python -m flows._watchdog PID`` runs beside the run (started by :func:`start_watchdog`): it
notes every descendant of PID once a second and, when PID has gone, sends each one still
alive (the same process: its start time is checked, so a reused PID is never hit) SIGTERM,
then SIGKILL after :data:`GRACE_SECONDS`, and exits. Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_SECONDS = 1.0
GRACE_SECONDS = 3.0


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (field 4, ppid, comes first)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None  # field 22 of stat: start time in clock ticks


def descendants(root: int) -> dict[int, str]:
    """Every living descendant of ``root`` with its start time."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        start = _start_time(pid)
        if start is not None and pid != os.getpid():
            found[pid] = start
            pending.extend(children.get(pid, []))
    return found


def _signal_survivors(known: dict[int, str], signum: int) -> int:
    alive = 0
    for pid, start in known.items():
        if _start_time(pid) == start:
            alive += 1
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                alive -= 1
    return alive


def watch(parent: int) -> None:
    known: dict[int, str] = {}
    while os.getppid() == parent:
        known.update(descendants(parent))
        time.sleep(POLL_SECONDS)
    if not _signal_survivors(known, signal.SIGTERM):
        return
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline and any(_start_time(p) == s for p, s in known.items()):
        time.sleep(0.1)
    _signal_survivors(known, signal.SIGKILL)


def start_watchdog() -> subprocess.Popen | None:
    """Start the watchdog for this process (a no-op where there is no ``/proc``)."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "flows._watchdog", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: a Ctrl-C or a group kill aimed at the run must leave it to clean up.
        start_new_session=True,
    )


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watch(int(sys.argv[1]))

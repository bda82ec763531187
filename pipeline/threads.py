"""How many threads a run uses, so that runs sharing a machine share its cores fairly.

torch's CPU kernels run on OpenMP threads, which by default spin for a while after each parallel
region, waiting actively for the next one. That is what makes a run alone fast, and what made two
runs that each kept a thread per core 14–17× slower each on 2 cores (the spinning threads of one
run take the cores the other needs). So the policy never lets the runs of one machine hold more
threads than it has cores, and leaves OpenMP's waiting as it is:

- **a registry of running runs**: every ``eegmi`` run puts a small file in a per-user folder
  (:func:`registry_folder`) when it starts and removes it when it ends. An entry names the
  process and its start time, so the entry of a run that died (``kill -9``) is recognised and
  removed by the next run that looks, even after its process id was reused.
- **a fair share**: a run's torch (and MKL) threads are an equal part of the usable cores
  among the live runs, ``max(1, usable_cores // live_runs)``; one run alone on an idle machine
  gets every core. A run looks again at most every :data:`REFRESH_SECONDS` while it trains or
  encodes (:func:`keep_fair_share`, called once per step) and changes its thread count when the
  share changes: when a second run starts both drop to half, and when one ends the other grows
  back. Cores that other work (anything but the registered runs) kept busy since the last looks
  are left to it first (:class:`OtherWork`, from ``/proc/stat``: seconds old, where the 1-minute
  load average still counted a run that had ended and made a run alone take one thread).
- **overrides**: ``--threads N`` or a ``OMP_NUM_THREADS`` the user set fix the count for the
  whole run (the run still registers, so dynamic runs beside it make room for it).
- **parallel tasks**: tasks that run side by side in one process (one preprocessing task per
  source file) number the share chosen when the run started, each with one numpy BLAS thread
  (OpenBLAS), so tasks × threads never exceed that share. numpy's matrix products are small next
  to the per-file work, and one BLAS thread also makes a local run's frames bitwise equal to
  those of Dask workers (which hold BLAS to one thread too).

The registry folder belongs to one user (``<tmp>/eegmi-<uid>/runs``), so runs of different
users do not see each other's entries; each counts the other's threads as other work, so they
still end up sharing, over a few looks rather than at once. ``EEGMI_RUN_REGISTRY`` names
another folder, e.g. one that a group shares.

OpenMP and BLAS read the thread variables once, when the library is loaded, so
:func:`apply_thread_environment` must run before ``torch`` or ``numpy`` is imported; child
processes (Dask workers, Prefect's scheduled runs) inherit them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import InputError
from pipeline.files import atomic_write_bytes

THREAD_COUNT_VARIABLES: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
NUMPY_BLAS_VARIABLE = "OPENBLAS_NUM_THREADS"
# Set beside OMP_NUM_THREADS when the policy chose it, so that a child process (a scheduled run)
# knows the count is a fair share to keep up to date, not a number the user asked for.
AUTOMATIC_MARKER = "EEGMI_AUTOMATIC_THREADS"
REGISTRY_VARIABLE = "EEGMI_RUN_REGISTRY"
REFRESH_SECONDS = 0.5


def registry_folder(environ: Mapping[str, str] | None = None) -> Path:
    """Where this user's runs register: ``EEGMI_RUN_REGISTRY``, else ``<tmp>/eegmi-<uid>/runs``."""
    environ = os.environ if environ is None else environ
    if environ.get(REGISTRY_VARIABLE, "").strip():
        return Path(environ[REGISTRY_VARIABLE])
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"eegmi-{user}" / "runs"


def process_start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), None when it is gone.

    Two processes that share a pid one after the other differ here. Without ``/proc`` only
    whether the pid is alive can be told; it then returns ``"alive"``.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "alive"
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after the last ")"
    # start at field 3, and the start time is field 22.
    return stat.rsplit(")", 1)[1].split()[19]


class RunRegistry:
    """The runs alive on this machine, one file per process: ``<pid>-<start time>.json``.

    Each process writes and removes only its own file (written under a temporary name, then
    renamed), so no lock is needed; an entry whose process is gone, or whose pid now belongs to
    a process that started at another time, is ignored and removed by whoever lists the folder.
    """

    def __init__(self, folder: Path | None = None):
        self.folder = registry_folder() if folder is None else Path(folder)

    def entry(self, pid: int, start_time: str) -> Path:
        return self.folder / f"{pid}-{start_time}.json"

    def register(self, pid: int | None = None) -> Path | None:
        """Add process ``pid`` (default: this one). Returns its entry, or None when the folder
        cannot be written (the run then goes unseen by others, and still counts them)."""
        pid = os.getpid() if pid is None else pid
        start_time = process_start_time(pid)
        if start_time is None:
            return None
        entry = self.entry(pid, start_time)
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            record = {"pid": pid, "start_time": start_time, "started": datetime.now(UTC).isoformat()}
            atomic_write_bytes(entry, json.dumps(record).encode())
        except OSError:
            return None
        return entry

    def unregister(self, pid: int | None = None) -> None:
        pid = os.getpid() if pid is None else pid
        for entry in self._entries():
            if entry[0] == pid:
                entry[2].unlink(missing_ok=True)

    def live_runs(self, other_than: int | None = None) -> int:
        """Registered processes still alive, other than pid ``other_than`` (stale entries are
        removed on the way)."""
        return sum(pid != other_than for pid in self.live_pids())

    def live_pids(self) -> list[int]:
        """The registered processes still alive (stale entries are removed on the way)."""
        live = []
        for pid, start_time, path in self._entries():
            if process_start_time(pid) in (start_time, "alive"):
                live.append(pid)
            else:
                # In a folder others share (EEGMI_RUN_REGISTRY) their stale entries may stay.
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
        return live

    def _entries(self) -> list[tuple[int, str, Path]]:
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        entries = []
        for name in names:
            pid, _, rest = name.partition("-")
            if pid.isdigit() and rest.endswith(".json"):
                entries.append((int(pid), rest.removesuffix(".json"), self.folder / name))
        return entries


def fair_share(cores: int, live_runs: int, busy_cores: float = 0.0) -> int:
    """Threads for one of ``live_runs`` runs on ``cores`` cores of which other work keeps
    ``busy_cores`` busy: an equal part of the rest, at least one."""
    free = cores - math.floor(max(0.0, busy_cores) + 0.5)
    return max(1, free // max(1, live_runs))


def _cpu_ticks(pids: list[int]) -> tuple[int, int, dict[int, int]] | None:
    """Clock ticks the whole machine spent busy and in all (``/proc/stat``), and each process
    of ``pids`` ran (user + system); None without ``/proc``."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    busy = user + nice + system + irq + softirq + steal
    runs = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        runs[pid] = int(stat[11]) + int(stat[12])  # utime, stime (fields 14 and 15)
    return busy, busy + idle + iowait, runs


class OtherWork:
    """Cores of this process's share of the machine that work other than the registered runs
    keeps busy, measured from one look to the next (seconds ago, not the 1-minute load average,
    which still counts a run that ended a minute ago) and smoothed over a few looks.

    The runs' own threads are left out, spinning or not, so a run never yields to itself.
    """

    def __init__(
        self,
        cores: int,
        read: Callable[[list[int]], tuple[int, int, dict[int, int]] | None] = _cpu_ticks,
        weight: float = 0.5,
    ):
        self.cores = cores
        self._read = read
        self._weight = weight
        self._last: tuple[int, int, dict[int, int]] | None = None
        self.busy_cores = 0.0

    def update(self, run_pids: list[int]) -> float:
        ticks = self._read(run_pids)
        if ticks is None:
            return self.busy_cores
        last, self._last = self._last, ticks
        if last is None or ticks[1] <= last[1]:
            return self.busy_cores
        busy, total = ticks[0] - last[0], ticks[1] - last[1]
        # A run that registered since the last look counts as other work for one look.
        runs = sum(ticks[2][pid] - last[2][pid] for pid in ticks[2] if pid in last[2])
        # The fraction of the whole machine other work used, on this process's share of it.
        measured = max(0.0, busy - runs) / total * self.cores
        self.busy_cores = self._weight * measured + (1 - self._weight) * self.busy_cores
        return self.busy_cores


@dataclass(frozen=True)
class ThreadPolicy:
    """The threads one run starts with and why.

    Attributes
    ----------
    threads : int
        torch intra-op threads (and MKL's) at the start, and the number of parallel tasks in
        one process.
    source : str
        ``"--threads"``, ``"OMP_NUM_THREADS"`` or ``"automatic"`` (a fair share that follows
        the runs alive, see :class:`FairShare`).
    usable_cores : int
        Cores this process may run on (its CPU affinity).
    other_runs : int
        Other ``eegmi`` runs alive when the share was chosen (0 when the count was given).
    """

    threads: int
    source: str
    usable_cores: int
    other_runs: int

    @property
    def dynamic(self) -> bool:
        """Whether the run keeps its thread count at the fair share as runs come and go."""
        return self.source == "automatic"

    @property
    def parallel_tasks(self) -> int:
        """Tasks to run side by side in this process (each with one numpy BLAS thread)."""
        return self.threads

    def environment(self) -> dict[str, str]:
        """Variables to set before torch, numpy or a worker process starts."""
        variables = {name: str(self.threads) for name in THREAD_COUNT_VARIABLES}
        variables[NUMPY_BLAS_VARIABLE] = "1"
        if self.dynamic:
            variables[AUTOMATIC_MARKER] = str(self.threads)
        return variables

    def to_dict(self) -> dict:
        return {**asdict(self), "dynamic": self.dynamic}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _positive_count(value: object, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise InputError(where, f"{value!r} must be a positive whole number of threads")
    return int(text)


def _chosen_by_policy(environ: Mapping[str, str]) -> bool:
    """Whether ``OMP_NUM_THREADS`` is a share the policy set (inherited), not the user's number."""
    marker = environ.get(AUTOMATIC_MARKER, "").strip()
    return bool(marker) and marker == environ.get("OMP_NUM_THREADS", "").strip()


def choose_thread_policy(
    requested: int | None = None,
    environ: Mapping[str, str] | None = None,
    cores: int | None = None,
    other_runs: int | None = None,
    registry: RunRegistry | None = None,
) -> ThreadPolicy:
    """Decide the threads a run starts with.

    Parameters
    ----------
    requested : int, optional
        ``--threads``: used as given (even above the usable cores: the user knows the machine).
    environ : mapping, optional
        The environment (default ``os.environ``); a user's ``OMP_NUM_THREADS`` is used as given.
        One the policy set earlier in this process or a parent is the share chosen then.
    cores : int, optional
        Usable cores (default: this process's CPU affinity).
    other_runs : int, optional
        Other runs alive (default: the registry's live runs other than this process).
    registry : RunRegistry, optional
        Where runs register (default: :func:`registry_folder`).

    Raises
    ------
    InputError
        When ``requested`` or ``OMP_NUM_THREADS`` is not a positive whole number.
    """
    environ = os.environ if environ is None else environ
    cores = usable_cores() if cores is None else cores
    if requested is not None:
        return ThreadPolicy(_positive_count(requested, "--threads"), "--threads", cores, 0)
    inherited = _chosen_by_policy(environ)
    if environ.get("OMP_NUM_THREADS", "").strip() and not inherited:
        return ThreadPolicy(
            _positive_count(environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS"), "OMP_NUM_THREADS", cores, 0
        )
    if other_runs is None:
        registry = RunRegistry() if registry is None else registry
        other_runs = registry.live_runs(other_than=os.getpid())
    # A share chosen earlier in this run (or by the parent that started it) stays the count of
    # its parallel tasks; torch's threads follow the registry from the first step on.
    threads = int(environ["OMP_NUM_THREADS"]) if inherited else fair_share(cores, other_runs + 1)
    return ThreadPolicy(threads, "automatic", cores, other_runs)


def apply_thread_environment(policy: ThreadPolicy, environ: MutableMapping[str, str] | None = None) -> None:
    """Put the policy's variables into the environment (before torch or numpy is imported).

    A variable the user already set is left alone, except the thread counts when ``--threads``
    was given, which is the more specific request.
    """
    environ = os.environ if environ is None else environ
    # A count the policy set before (this process's or a parent's share) is replaced too.
    replace_counts = policy.source == "--threads" or _chosen_by_policy(environ)
    for name, value in policy.environment().items():
        if name == AUTOMATIC_MARKER or (name in THREAD_COUNT_VARIABLES and replace_counts):
            environ[name] = value
        else:
            environ.setdefault(name, value)
    if not policy.dynamic:
        environ.pop(AUTOMATIC_MARKER, None)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class FairShare:
    """Keeps torch's threads at this run's fair share of the cores while runs come and go.

    :meth:`refresh` is cheap when called often: it reads the registry at most every
    ``interval`` seconds. OpenMP keeps a thread count per calling thread, so it must be called
    from the thread that runs the work (the training loop does, once per step); torch gives a
    thread that starts later the count set last.

    Attributes
    ----------
    low, high : int
        The fewest and most threads this run used so far.
    """

    def __init__(
        self,
        registry: RunRegistry,
        cores: int,
        interval: float = REFRESH_SECONDS,
        get_threads: Callable[[], int] = _torch_threads,
        set_threads: Callable[[int], None] = _set_torch_threads,
        clock: Callable[[], float] = time.monotonic,
        other_work: OtherWork | None = None,
    ):
        self.registry = registry
        self.cores = cores
        self.other_work = OtherWork(cores) if other_work is None else other_work
        self.interval = interval
        self._get_threads = get_threads
        self._set_threads = set_threads
        self._clock = clock
        self._checked: float | None = None
        self.threads: int | None = None
        self.low: int | None = None
        self.high: int | None = None

    def refresh(self, force: bool = False) -> int | None:
        """Set torch's threads to the current share when it changed; returns the share (None
        when the registry was not read this time)."""
        now = self._clock()
        if not force and self._checked is not None and now - self._checked < self.interval:
            return None
        self._checked = now
        runs = self.registry.live_pids()
        share = fair_share(self.cores, len(runs), self.other_work.update(runs))
        if self._get_threads() != share:
            self._set_threads(share)
        self.threads = share
        self.low = share if self.low is None else min(self.low, share)
        self.high = share if self.high is None else max(self.high, share)
        return share


@dataclass
class _RunState:
    policy: ThreadPolicy | None = None
    share: FairShare | None = None
    registry: RunRegistry | None = None
    started_in: int | None = None  # the process that registered (a fork must not act for it)


_run = _RunState()
_run_lock = threading.Lock()


def start_run(policy: ThreadPolicy, registry: RunRegistry | None = None) -> None:
    """Register this process as a running run; with an automatic policy, keep its fair share
    from now on (:func:`keep_fair_share`). Undone by :func:`end_run`, or when the process exits."""
    with _run_lock:
        if _run.started_in == os.getpid() and _run.registry is not None:
            _run.registry.unregister()
        _run.registry = RunRegistry() if registry is None else registry
        _run.policy = policy
        _run.registry.register()
        _run.share = FairShare(_run.registry, policy.usable_cores) if policy.dynamic else None
        if _run.started_in is None:
            atexit.register(end_run)
        _run.started_in = os.getpid()


def end_run() -> None:
    """Remove this process from the registry; its thread count stays as it is."""
    with _run_lock:
        if _run.started_in == os.getpid() and _run.registry is not None:
            _run.registry.unregister()
        _run.policy, _run.share, _run.registry = None, None, None


def keep_fair_share() -> None:
    """Called once per training or encoding step: follows the fair share when this run's policy
    is automatic. A process the policy's environment started (a scheduled run of ``eegmi
    serve``) registers itself at its first step."""
    if _run.started_in != os.getpid():
        if _run.started_in is not None or not _chosen_by_policy(os.environ):
            return
        start_run(choose_thread_policy())
    if _run.share is not None:
        _run.share.refresh()


def thread_record() -> dict:
    """What report.json records about the run's threads: the policy it started with and, for a
    fair share, the fewest and most threads it used (they change as other runs come and go)."""
    import torch

    record = {"torch_threads": torch.get_num_threads()}
    if _run.policy is not None and _run.started_in == os.getpid():
        record["thread_policy"] = _run.policy.to_dict()
        if _run.share is not None and _run.share.low is not None:
            record["thread_policy"].update(min_threads=_run.share.low, max_threads=_run.share.high)
    return record

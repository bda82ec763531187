"""How many threads a run uses, so that runs sharing a machine share its cores fairly.

torch's CPU kernels run on OpenMP threads. By default those threads spin for a while after
each parallel region, waiting actively for the next one; two runs that each spin on every
core slow each other down far more than their fair share (measured on 2 cores: 5 s per VAE
epoch alone, 68–87 s each with two runs at once). The policy here:

- **threads**: torch's intra-op threads, and BLAS's in the same process, are the cores this
  process may use (its CPU affinity) less the cores other work already keeps busy (the
  1-minute load average, scaled to this process's share of the machine), at least one. An
  explicit ``--threads N`` wins; so does ``OMP_NUM_THREADS`` set by the user.
- **waiting**: OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``) unless the
  environment already says otherwise (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``).
- **parallel tasks**: tasks that run side by side in one process (one preprocessing task per
  source file) get ``threads`` workers, and numpy's BLAS (OpenBLAS) one thread, so workers ×
  threads never exceeds the cores the policy chose. numpy's matrix products are small next to
  the per-file work, and one BLAS thread also makes a local run's frames bitwise equal to those
  of Dask workers (which hold BLAS to one thread too). torch's own BLAS (MKL) follows ``threads``.

OpenMP and BLAS read these variables once, when the library is loaded, so
:func:`apply_thread_environment` must run before ``torch`` or ``numpy`` is imported; child
processes (Dask workers, Prefect's scheduled runs) inherit them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass

from pipeline.errors import InputError

THREAD_COUNT_VARIABLES: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
NUMPY_BLAS_VARIABLE = "OPENBLAS_NUM_THREADS"
WAIT_VARIABLES: tuple[str, ...] = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
PASSIVE_WAIT = "PASSIVE"


@dataclass(frozen=True)
class ThreadPolicy:
    """The threads one run uses and why.

    Attributes
    ----------
    threads : int
        torch intra-op threads (and MKL's), and the number of parallel tasks in one process.
    source : str
        ``"--threads"``, ``"OMP_NUM_THREADS"`` or ``"automatic"``.
    usable_cores : int
        Cores this process may run on (its CPU affinity).
    busy_cores : float
        Cores other work kept busy when the run started, as far as the load average tells
        (0 when the count was given explicitly).
    wait_policy : str
        What waiting OpenMP threads do: ``"PASSIVE"`` (sleep), or ``"environment"`` when the
        user set one of :data:`WAIT_VARIABLES`.
    """

    threads: int
    source: str
    usable_cores: int
    busy_cores: float
    wait_policy: str

    @property
    def parallel_tasks(self) -> int:
        """Tasks to run side by side in this process (each with one numpy BLAS thread)."""
        return self.threads

    def environment(self) -> dict[str, str]:
        """Variables to set before torch, numpy or a worker process starts."""
        variables = {name: str(self.threads) for name in THREAD_COUNT_VARIABLES}
        variables[NUMPY_BLAS_VARIABLE] = "1"
        if self.wait_policy == PASSIVE_WAIT:
            variables["OMP_WAIT_POLICY"] = PASSIVE_WAIT
        return variables

    def describe(self) -> str:
        busy = f", {self.busy_cores:.1f} busy with other work" if self.source == "automatic" else ""
        return (
            f"{self.threads} thread(s) ({self.source}; {self.usable_cores} usable core(s){busy}; "
            f"OpenMP wait: {self.wait_policy.lower()})"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return None


def _positive_count(value: object, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise InputError(where, f"{value!r} must be a positive whole number of threads")
    return int(text)


def choose_thread_policy(
    requested: int | None = None,
    environ: Mapping[str, str] | None = None,
    cores: int | None = None,
    load_average: float | None = None,
    cpu_count: int | None = None,
) -> ThreadPolicy:
    """Decide the threads of one run.

    Parameters
    ----------
    requested : int, optional
        ``--threads``: used as given (even above the usable cores: the user knows the machine).
    environ : mapping, optional
        The environment (default ``os.environ``); a user's ``OMP_NUM_THREADS`` is used as given.
    cores : int, optional
        Usable cores (default: this process's CPU affinity).
    load_average : float, optional
        1-minute load average of the whole machine (default: the current one; pass 0 to ignore
        the load, e.g. for runs that start later).
    cpu_count : int, optional
        Cores of the whole machine, which the load average counts (default ``os.cpu_count()``).

    Raises
    ------
    InputError
        When ``requested`` or ``OMP_NUM_THREADS`` is not a positive whole number.
    """
    environ = os.environ if environ is None else environ
    cores = usable_cores() if cores is None else cores
    cpu_count = max(cores, os.cpu_count() or cores) if cpu_count is None else max(cores, cpu_count)
    wait = "environment" if any(name in environ for name in WAIT_VARIABLES) else PASSIVE_WAIT
    if requested is not None:
        threads = _positive_count(requested, "--threads")
        return ThreadPolicy(threads, "--threads", cores, 0.0, wait)
    if environ.get("OMP_NUM_THREADS", "").strip():
        threads = _positive_count(environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS")
        return ThreadPolicy(threads, "OMP_NUM_THREADS", cores, 0.0, wait)
    load = _load_average() if load_average is None else load_average
    # The load average counts the whole machine; this process's cores carry their share of it.
    busy = max(0.0, (load or 0.0) * cores / cpu_count)
    threads = min(cores, max(1, cores - math.floor(busy + 0.5)))
    return ThreadPolicy(threads, "automatic", cores, round(busy, 2), wait)


def apply_thread_environment(policy: ThreadPolicy, environ: MutableMapping[str, str] | None = None) -> None:
    """Put the policy's variables into the environment (before torch or numpy is imported).

    A variable the user already set is left alone, except the thread counts when ``--threads``
    was given, which is the more specific request.
    """
    environ = os.environ if environ is None else environ
    for name, value in policy.environment().items():
        if policy.source == "--threads" and name in THREAD_COUNT_VARIABLES:
            environ[name] = value
        else:
            environ.setdefault(name, value)

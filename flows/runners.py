"""How flows run: where their tasks execute (threads or a Dask cluster), one run per folder at a time,
and the steps of :mod:`pipeline.runs` as tasks (:func:`step_task`).

Preprocessing is one task per source file. By default the tasks run on threads of the flow's
process (:class:`~prefect.task_runners.ThreadPoolTaskRunner`); the band-power and imaging
work is numpy, which releases the GIL. For many files, or files on another machine, the same
tasks run on a Dask cluster through prefect-dask's ``DaskTaskRunner``: an existing scheduler
(``dask_address="tcp://host:8786"``) or a ``distributed.LocalCluster`` of ``dask_workers``
worker processes started for the run and stopped after it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, TypeVar

from prefect import Task, get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.progress import progress_display
from pipeline.errors import InputError
from pipeline.store.frames import FrameStore
from pipeline.store.runlock import OutputLocationError, check_run_folder, output_errors, run_lock
from pipeline.threads import choose_thread_policy

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S")
_DASK_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")


def preprocess_task_runner(dask_address: str | None = None, dask_workers: int | None = None) -> TaskRunner:
    """The task runner for a preprocessing flow.

    Parameters
    ----------
    dask_address : str, optional
        Address of a running Dask scheduler, e.g. ``"tcp://10.0.0.5:8786"``. Its workers must
        import ``eegmi`` (same version) and reach the data folder and the run folder.
    dask_workers : int, optional
        Start a ``distributed.LocalCluster`` with this many single-threaded worker processes.

    Returns
    -------
    TaskRunner
        A ``ThreadPoolTaskRunner`` when neither is given, else a ``DaskTaskRunner``.

    Raises
    ------
    InputError
        When both are given, the address has no Dask scheme, or the worker count is not a
        positive integer.
    """
    if dask_address is not None and dask_workers is not None:
        raise InputError("--dask-address", "give a scheduler address or a number of local workers, not both")
    if dask_address is not None:
        if not isinstance(dask_address, str) or not dask_address.startswith(_DASK_SCHEMES):
            raise InputError(
                "--dask-address", f"{dask_address!r} is not a Dask scheduler address like tcp://host:8786"
            )
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if dask_workers is not None:
        if isinstance(dask_workers, bool) or not isinstance(dask_workers, int) or dask_workers < 1:
            raise InputError("--dask-workers", f"must be a positive integer, got {dask_workers!r}")
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            # One thread per process: the work is CPU-bound, and numpy's own threads would
            # otherwise oversubscribe the cores.
            cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True},
        )
    # One thread per core the thread policy gives the run: the work is CPU-bound, and every extra
    # thread holds another ~100 MB file in memory while it waits (measured: 2 threads beat 6 by a
    # fifth on 2 cores). Under the command line this is the share its run started with; a flow
    # imported elsewhere may run much later, so other runs are not counted then.
    return ThreadPoolTaskRunner(max_workers=choose_thread_policy(other_runs=0).parallel_tasks)


class _ClusterLockedWrites:
    """A frame store whose trial writes take a Dask-cluster-wide lock named after the store.

    The store's own writer lock covers the threads and processes of one machine; workers on
    several machines writing one store (typically at an fsspec URL) need the scheduler's lock.
    Only writes are serialised: reading and band-power work still run in parallel.
    """

    def __init__(self, store: FrameStore, lock: Any):
        self._store = store
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def add_trials(self, *args: Any, **kwargs: Any) -> int:
        with self._lock:
            return self._store.add_trials(*args, **kwargs)


def cluster_safe(store: FrameStore) -> FrameStore:
    """``store`` itself, or inside a Dask worker a view of it whose trial writes take a cluster-wide lock."""
    try:
        from distributed import Lock, get_worker

        get_worker()
    except (ImportError, ValueError):  # not running on a Dask worker
        return store
    return _ClusterLockedWrites(store, Lock(f"eegmi-store:{store.path}"))  # type: ignore[return-value]


def exclusive_run(*, local_only: bool = False) -> Callable[[F], F]:
    """Decorate a flow function so that it holds its run folder (``out_dir``) from start to end.

    The folder is checked first (created, writable; with ``local_only`` a URL is refused), a
    second run on the same folder waits for the first, and a write the file system refuses
    (full, read-only) ends the run with one :class:`~pipeline.store.runlock.OutputLocationError`.
    Put it below ``@flow`` so Prefect sees the function's own signature.
    """

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        if "out_dir" not in signature.parameters:
            raise TypeError(f"{function.__qualname__} has no out_dir parameter to lock")

        @functools.wraps(function)
        def run_exclusively(*args: Any, **kwargs: Any) -> Any:
            out_dir = signature.bind(*args, **kwargs).arguments["out_dir"]
            check_run_folder(out_dir, local_only=local_only)
            try:
                warn = get_run_logger().warning
            except MissingContextError:  # called as plain ``flow.fn(...)``, outside a flow run
                warn = logging.getLogger(__name__).warning
            with (
                run_lock(out_dir, flow=function.__name__, on_wait=warn),
                output_errors(out_dir),
            ):
                return function(*args, **kwargs)

        return run_exclusively  # type: ignore[return-value]

    return decorate


def collect_mapped(
    futures: list[PrefectFuture], names: list[str], sources: list[str], logger: Any
) -> tuple[dict[str, dict], dict[str, str]]:
    """Wait for one mapped task per source; log each as it finishes.

    Returns
    -------
    results : dict
        name -> result of each task that completed.
    failures : dict
        name -> why, for each task that failed (a bad file is named by its source).

    Raises
    ------
    OutputLocationError
        Once every task is done, when any failed because the run folder refused a write: no
        source can be stored then, and the folder, not the files, is at fault.
    """
    name_of = {future.task_run_id: name for future, name in zip(futures, names, strict=True)}
    source_of = dict(zip(names, sources, strict=True))
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    output_error: OutputLocationError | None = None
    for done, future in enumerate(as_completed(futures), start=1):
        name = name_of[future.task_run_id]
        future.wait()  # as_completed can yield before the future's final state is recorded
        if future.state.is_completed():
            results[name] = result = future.result()
            logger.info(
                "[%d/%d] %s: %d trial(s), %d newly stored",
                done, len(futures), name, result["n_trials"], result["n_written"],
            )  # fmt: skip
            continue
        error = future.state.result(raise_on_failure=False)
        if isinstance(error, OutputLocationError):
            output_error = error
        failures[name] = error.about(source_of[name]) if isinstance(error, InputError) else str(error)
        logger.error("[%d/%d] %s failed: %s", done, len(futures), name, failures[name])
    if output_error is not None:
        raise output_error
    return results, failures


def step_task(step: Callable[..., Any], name: str | None = None) -> Task:
    """A step of :mod:`pipeline.runs` as a Prefect task (named ``name``, else after the step) with
    the step's own parameters: its log lines go to the run's logger and, where it reports
    progress (a ``show`` parameter), its progress to bars on a terminal or to log lines."""
    signature = inspect.signature(step)
    shows_progress = "show" in signature.parameters

    @functools.wraps(step)
    def run_step(*args: Any, **kwargs: Any) -> Any:
        logger = get_run_logger()
        if not shows_progress:
            return step(*args, log=logger, **kwargs)
        with progress_display(logger.info) as show:
            return step(*args, log=logger, show=show, **kwargs)

    # Prefect reads a task's parameters from its signature: the logger and the progress
    # callback are the task's own, not parameters a flow passes.
    parameters = [p for p in signature.parameters.values() if p.name not in ("log", "show")]
    run_step.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return task(name=name or step.__name__)(run_step)


def as_tasks(steps: S, *, keep: tuple[str, ...] = ()) -> S:
    """``steps`` (a dataclass of steps of :mod:`pipeline.runs`) with each step a :func:`step_task`;
    the steps named in ``keep`` stay as they are."""
    tasks = {
        field.name: step_task(getattr(steps, field.name)) for field in fields(steps) if field.name not in keep
    }
    return replace(steps, **tasks)

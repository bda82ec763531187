"""Guards of a run folder: one run at a time, a writable location, and training that is never half-used.

Three things make a run folder (``--out``) safe to share between a nightly ingest, a weekly
retrain and a user at the keyboard:

- :func:`run_lock` lets one run at a time use the folder. Runs are serialised, not refused: a
  second run waits for the first (a timeout turns waiting into :class:`RunFolderBusy`). On a
  local folder the lock is an ``fcntl`` lock on ``OUT/.eegmi-run.lock``, which the kernel
  releases when its process dies, so a killed run never leaves the folder locked.
- :func:`check_run_folder` and :func:`output_errors` turn an unwritable or full location into
  one clear :class:`OutputLocationError` instead of a traceback from deep inside zarr.
- :func:`begin_update` / :func:`finish_update` bracket a change of the models or the report. A
  run killed in between leaves a marker, and :func:`pending_update` tells the next run what to
  finish: a training (never encode with a half-trained β-VAE, never report with an LSTM
  trained on another model's latents) or only the encoding and the report.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import fsspec

from pipeline.errors import InputError
from pipeline.files import atomic_write_bytes, utc_now
from pipeline.store.run_folder import RunFolder, read_json_file
from pipeline.validators import check_json_native

UPDATE_STAGES = ("training", "report")
# errno values that mean "this location cannot take our output", as opposed to a bad input file.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG})
_POLL_SECONDS = 0.25


class OutputLocationError(InputError):
    """The run folder cannot be written: missing permissions, read-only, full, or not a folder."""

    def __reduce__(self):
        # Crosses process boundaries (Dask workers, Prefect results) with both arguments.
        return (type(self), (self.where, self.problem))


class RunFolderBusy(InputError):
    """Another run held the run folder for longer than the caller was willing to wait."""

    def __reduce__(self):
        return (type(self), (self.where, self.problem))


def is_local(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a local path (or a ``file://`` URL) rather than a remote fsspec URL."""
    text = os.fspath(location)
    return "://" not in text or text.startswith("file://")


def _local_path(location: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(location).removeprefix("file://")))


@dataclass
class _FolderLock:
    """The state of one folder's lock inside this process."""

    thread_lock: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    handle: IO[str] | None = None


_FOLDER_LOCKS: dict[str, _FolderLock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


def _holder_description(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:  # the holder may be writing it right now
        return "another run"
    if not isinstance(holder, dict) or "pid" not in holder:
        return "another run"
    where = f"pid {holder['pid']} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
    return f"run {holder.get('flow') or '?'} ({where})"


def _acquire_file_lock(
    handle: IO[str], where: str, timeout: float | None, on_wait: Callable[[str], None] | None
) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _holder_description(handle)
        if deadline is not None and time.monotonic() >= deadline:
            raise RunFolderBusy(
                where, f"{holder} is using this run folder; waited {timeout:g} s. Try again when it is done"
            )
        if not announced and on_wait is not None:
            on_wait(f"{where}: {holder} is using this run folder; waiting for it to finish")
            announced = True
        time.sleep(_POLL_SECONDS)


@contextmanager
def run_lock(
    out_dir: str | os.PathLike,
    *,
    flow: str = "",
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the run folder ``out_dir`` for the duration of the ``with`` block.

    Re-entrant within a thread, so a run that holds the folder can start a sub-run on it (the
    ``deap`` flow runs ``deap-preprocess``). Other threads and, for local folders, other
    processes wait. For a remote folder (an fsspec URL) only the threads of this process take
    turns: run one writing run per remote folder.

    Parameters
    ----------
    out_dir : str or path-like
        The run folder; created if missing.
    flow : str
        Name of the run, recorded in the lock file for whoever waits.
    timeout : float, optional
        Seconds to wait for another run; ``None`` waits as long as it takes.
    on_wait : callable, optional
        Called once with a message naming the holder when the folder is busy.

    Raises
    ------
    RunFolderBusy
        When ``timeout`` passes and the folder is still held.
    OutputLocationError
        When the folder or its lock file cannot be created.
    """
    where = os.fspath(out_dir)
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise InputError("timeout", f"must be None or a number of seconds >= 0, got {timeout!r}")
    local = is_local(where)
    key = str(_local_path(where)) if local else where
    with _FOLDER_LOCKS_GUARD:
        state = _FOLDER_LOCKS.setdefault(key, _FolderLock())
    if not state.thread_lock.acquire(timeout=-1 if timeout is None else timeout):
        raise RunFolderBusy(where, f"another run in this process is using this folder; waited {timeout:g} s")
    try:
        if state.depth == 0 and local:
            with output_errors(where):
                Path(key).mkdir(parents=True, exist_ok=True)
                handle = open(RunFolder(key).lock_file, "a+", encoding="utf-8")  # noqa: SIM115 (held across yield)
            try:
                _acquire_file_lock(handle, where, timeout, on_wait)
                holder = {"flow": flow, "pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(holder))
                handle.flush()
            except BaseException:
                handle.close()
                raise
            state.handle = handle
        state.depth += 1
        try:
            yield
        finally:
            state.depth -= 1
            if state.depth == 0 and state.handle is not None:
                # Closing the descriptor releases the flock; the file stays for the next run.
                state.handle.close()
                state.handle = None
    finally:
        state.thread_lock.release()


@contextmanager
def output_errors(out_dir: str | os.PathLike) -> Iterator[None]:
    """Re-raise a write the file system refuses (full, read-only, forbidden) as :class:`OutputLocationError`.

    Every store write is atomic and trials become visible only once complete, so the message
    can promise that what was stored before is intact.
    """
    try:
        yield
    except OSError as err:
        if err.errno not in OUTPUT_ERRNOS or not _concerns(out_dir, err.filename):
            raise
        target = f" ({err.filename})" if err.filename else ""
        raise OutputLocationError(
            out_dir,
            f"cannot write the run's output: {err.strerror or err}{target}. Everything stored before "
            "is intact and readable; free space or fix the permissions, then rerun",
        ) from err


def _concerns(out_dir: str | os.PathLike, filename: Any) -> bool:
    """Whether a failed write hit the run folder (an unreadable input file is a different problem)."""
    if filename is None or not is_local(out_dir):
        return True
    folder = _local_path(out_dir)
    target = _local_path(os.fsdecode(filename))
    return target == folder or folder in target.parents


def check_run_folder(out_dir: str | os.PathLike, *, local_only: bool = False) -> None:
    """Create the run folder if needed and prove it can be written, before any work starts.

    Parameters
    ----------
    out_dir : str or path-like
        A local folder, or an fsspec URL (``s3://bucket/run``, ``memory://run``).
    local_only : bool
        Refuse URLs: training checkpoints and the report are written to a local folder.

    Raises
    ------
    OutputLocationError
        Naming the folder, when it is a file, cannot be created, or refuses a test write; or
        when it is a URL and ``local_only`` is set.
    """
    where = os.fspath(out_dir)
    if not isinstance(where, str) or not where:
        raise OutputLocationError("--out", f"must be a folder path or URL, got {out_dir!r}")
    if not is_local(where):
        if local_only:
            raise OutputLocationError(
                where,
                "training, checkpoints and the report need a local run folder; a URL works for the "
                "frame store of `eegmi preprocess`",
            )
        with output_errors(where):
            try:
                filesystem, path = fsspec.core.url_to_fs(where)
            except (ImportError, ValueError) as err:  # e.g. s3:// without s3fs installed
                raise OutputLocationError(where, f"cannot open this URL: {err}") from None
            filesystem.makedirs(path, exist_ok=True)
        return
    path = _local_path(where)
    try:
        if path.exists() and not path.is_dir():
            raise OutputLocationError(path, "exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".eegmi-write-test-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise OutputLocationError(path, f"cannot write here: {err.strerror or err}") from err


@dataclass(frozen=True)
class PendingUpdate:
    """A model update a run began in a folder and did not finish.

    Attributes
    ----------
    settings : dict
        The run settings (a preset's ``to_dict()``) the update was made with.
    stage : str
        ``"training"``: the store's split and statistics may no longer match the models, which
        must be trained again before any use. ``"report"``: the models are complete and agree;
        only encoding and the report are still due.
    started : str
        When the update began (ISO 8601, UTC).
    """

    settings: dict[str, Any]
    stage: str
    started: str


def begin_update(out_dir: str | os.PathLike, settings: dict[str, Any], stage: str) -> None:
    """Record in ``out_dir`` that a model update reached ``stage`` (``"training"`` or ``"report"``).

    Call with ``"training"`` before the split and normalisation are refitted, with ``"report"``
    once the β-VAE and the LSTM are trained (or before encoding new trials with existing
    models), and :func:`finish_update` once the report is written.
    """
    if stage not in UPDATE_STAGES:
        raise InputError("stage", f"{stage!r} must be one of {UPDATE_STAGES}")
    if not isinstance(settings, dict):
        raise InputError("settings", f"must be a dict, got {type(settings).__name__}")
    check_json_native(settings, "settings", "settings")
    payload = json.dumps({"started": utc_now(), "stage": stage, "settings": settings})
    path = RunFolder(out_dir).update_marker
    with output_errors(out_dir):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, payload.encode())


def finish_update(out_dir: str | os.PathLike) -> None:
    """Record that the models and the report in ``out_dir`` are complete and belong together."""
    with output_errors(out_dir):
        RunFolder(out_dir).update_marker.unlink(missing_ok=True)


def pending_update(out_dir: str | os.PathLike) -> PendingUpdate | None:
    """The update a run began in ``out_dir`` and did not finish, or None.

    Raises
    ------
    InputError
        When the marker exists but is not what :func:`begin_update` writes.
    """
    path = RunFolder(out_dir).update_marker
    marker = read_json_file(path, "an update marker", "; delete it and retrain")
    if marker is None:
        return None
    if (
        not isinstance(marker, dict)
        or not isinstance(marker.get("settings"), dict)
        or marker.get("stage") not in UPDATE_STAGES
    ):
        raise InputError(path, "is not an update marker (settings or stage missing); delete it and retrain")
    return PendingUpdate(marker["settings"], marker["stage"], str(marker.get("started")))

"""Read one source file in a child process bounded in time and memory.

The readers refuse every malformed file we know of, but they stand on parsers (scipy's MAT
reader, MNE's EDF/BDF/FIF/EEGLAB/BrainVision readers, zlib, libjpeg) that a crafted file might
still crash, hang or make allocate without end. :func:`read_isolated` runs the reader in a
forked child whose address space is capped (``RLIMIT_AS``) and which is killed when it
overruns its time, so that such a file fails alone, with an :class:`~pipeline.errors.InputError`
naming it, while the run goes on with the other files.

The child hands the trials back through a shared anonymous mapping (no pickling, one copy of
the samples); the parent rebuilds :class:`~pipeline.sources.trials.Trials` from it, which
checks them again. Forking costs a few tens of milliseconds per file (see the README).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import json
import mmap
import multiprocessing
import multiprocessing.spawn
import os
import resource
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.sources.trials import Trials

_ARRAY_FIELDS = ("signals", "labels", "subject", "trial")
_MB = 1 << 20
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ReadLimits:
    """How long and how much memory one file's read may take, growing with the file's size.

    Parsing a 100 MB DEAP ``.dat`` file takes milliseconds and a few MB, reading it whole
    under half a second and a few hundred MB, so the defaults (2 minutes and 1.8 GB for it)
    stop only a reader that has gone wrong.

    ``EEGMI_READ_TIME_LIMIT_S`` and ``EEGMI_READ_MEMORY_LIMIT_MB`` in the environment replace
    the computed bounds with fixed ones (e.g. for very slow disks or huge recordings).
    """

    base_seconds: float = 60.0
    seconds_per_mb: float = 0.6
    base_memory_mb: float = 1024.0
    memory_per_file_byte: float = 8.0

    def seconds(self, n_bytes: int) -> float:
        fixed = os.environ.get("EEGMI_READ_TIME_LIMIT_S")
        if fixed is not None:
            return _positive(fixed, "EEGMI_READ_TIME_LIMIT_S")
        return self.base_seconds + self.seconds_per_mb * n_bytes / _MB

    def memory_bytes(self, n_bytes: int) -> int:
        fixed = os.environ.get("EEGMI_READ_MEMORY_LIMIT_MB")
        if fixed is not None:
            return int(_positive(fixed, "EEGMI_READ_MEMORY_LIMIT_MB") * _MB)
        return int(self.base_memory_mb * _MB + self.memory_per_file_byte * n_bytes)


def _positive(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise InputError(name, f"must be a positive number, got {text!r}")
    return value


def recording_bytes(path: Path) -> int:
    """Size of a recording with the files beside it that share its stem (``.eeg``, ``.fdt``, ...)."""
    try:
        siblings = [p for p in path.parent.iterdir() if p.name.split(".")[0] == path.name.split(".")[0]]
        return sum(p.stat().st_size for p in siblings if p.is_file()) or path.stat().st_size
    except OSError:
        return 0


def _virtual_memory_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _forking_unavailable() -> bool:
    return not hasattr(os, "fork") or not Path("/proc/self/statm").exists()


class IsolatedRun:
    """``work()`` started in a forked child bounded in time and memory; :meth:`result` waits for it.

    The caller may go on working meanwhile (reading the file ``work`` parses, say); the child
    sees this process's memory as it was at the fork. ``n_bytes`` sets the bounds. Use as a
    context manager, or call :meth:`result`, so that the child is always reaped.
    """

    def __init__(
        self,
        work: Callable[[], Any],
        where: str | os.PathLike,
        n_bytes: int,
        limits: ReadLimits | None = None,
        fresh: bool = False,
    ):
        self.where = where
        self._work: Callable[[], Any] | None = None
        self._pid: int | None = None
        self._process: Any = None
        if _forking_unavailable():
            self._work = work
            return
        limits = limits or ReadLimits()
        self.seconds, self.memory = limits.seconds(n_bytes), limits.memory_bytes(n_bytes)
        self._deadline = time.monotonic() + self.seconds
        if fresh and _start_from_fork_server(self, work):
            return
        self._read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(self._read_end)
            _child(work, write_end, self.memory, parent)
        os.close(write_end)
        self._pid = pid

    def __enter__(self) -> IsolatedRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the child if it is still running (a no-op once :meth:`result` returned)."""
        if self._pid is not None or self._process is not None:
            self._stop(kill=True)
            os.close(self._read_end)

    def _stop(self, kill: bool) -> int | None:
        """Reap the child (killing it first if ``kill``); its exit code, negative for the
        signal that ended it."""
        if self._process is not None:
            process, self._process = self._process, None
            if kill:
                process.kill()
            process.join()
            return process.exitcode
        pid, self._pid = self._pid, None
        if kill:
            _kill(pid)
        _, status = os.waitpid(pid, 0)
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    def result(self) -> Any:
        """``work()``'s result.

        Raises
        ------
        InputError
            ``work``'s own, or naming ``where`` when ``work`` crashed, overran its time or its
            memory, or failed with an unexpected error.
        OSError
            Raised by ``work`` (transient read errors stay retryable).
        """
        if self._work is not None:
            return self._work()
        if self._pid is None and self._process is None:
            raise RuntimeError("the isolated run was closed")
        try:
            payload, timed_out = _read_message(self._read_end, self._deadline)
        finally:
            os.close(self._read_end)
            exit_code = self._stop(kill=not payload)
        where = self.where
        if timed_out:
            raise InputError(where, f"reading took longer than {self.seconds:.0f} s and was stopped")
        if exit_code is not None and exit_code < 0 and not payload:
            name = signal.Signals(-exit_code).name
            raise InputError(where, f"the reader crashed on this file ({name}); it was stopped")
        try:
            message = json.loads(payload)
        except ValueError:
            raise InputError(where, "the reader stopped without a result") from None
        if "input_error" in message:
            raise InputError(*message["input_error"])
        if "memory" in message:
            raise InputError(
                where, f"reading needed more than {self.memory / _MB:.0f} MB of memory and was stopped"
            )
        if "os_error" in message:
            number, text, filename = message["os_error"]
            raise OSError(number, text, filename)
        if "error" in message:
            raise InputError(where, f"the reader failed: {message['error']}")
        for text in message["warnings"]:
            warnings.warn(text, UserWarning, stacklevel=3)
        return message["result"]


def _fork_server_child(work: Callable[[], Any], writer: Any, memory: int) -> None:
    _child(work, writer.fileno(), memory, None)


_starting = threading.local()
_install_guard = threading.Lock()


def _without_main_module(get_preparation_data: Callable[[str], dict]) -> Callable[[str], dict]:
    """multiprocessing's preparation of a child, less the parent's ``__main__`` for the children
    :func:`_start_from_fork_server` starts from this thread.

    multiprocessing runs the parent's main script again in every child it starts (to find what
    the script defines); a script that imports numpy, zarr or Prefect at its top (``eegmi``, a
    benchmark) then cost each file's read 1–2 s. The work sent here lives in importable modules.
    """

    def prepare(name: str) -> dict:
        data = get_preparation_data(name)
        if getattr(_starting, "without_main", False):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    prepare.drops_main = True
    return prepare


def _install_without_main_module() -> None:
    with _install_guard:
        if not getattr(multiprocessing.spawn.get_preparation_data, "drops_main", False):
            multiprocessing.spawn.get_preparation_data = _without_main_module(
                multiprocessing.spawn.get_preparation_data
            )


def _start_from_fork_server(run: IsolatedRun, work: Callable[[], Any]) -> bool:
    """Start ``work`` (picklable) in a child of multiprocessing's fork server, a small process
    started once: forking it costs little, where forking the run's large, busy process
    write-protects every page the run then writes. False where that is not possible (in a
    daemonic Dask worker, for one)."""
    context = multiprocessing.get_context("forkserver")
    # Loaded once in the server, not in every child (numpy and scipy take a second to import).
    context.set_forkserver_preload(["pipeline.sources.deap"])
    try:
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=_fork_server_child, args=(work, writer, run.memory), daemon=True)
        _install_without_main_module()
        _starting.without_main = True
        try:
            process.start()
        finally:
            _starting.without_main = False
    except (AssertionError, OSError, ValueError):  # daemonic process, or no fork server here
        return False
    writer.close()
    run._read_end = os.dup(reader.fileno())  # a plain descriptor, closed like the fork's pipe
    reader.close()
    run._process = process
    return True


def run_isolated(
    work: Callable[[], Any], where: str | os.PathLike, n_bytes: int, limits: ReadLimits | None = None
) -> Any:
    """``work()`` in a forked child bounded in time and memory; its JSON-able result comes back.

    See :class:`IsolatedRun` (this is its start and :meth:`~IsolatedRun.result` at once).
    """
    return IsolatedRun(work, where, n_bytes, limits).result()


def read_isolated(
    reader: Callable[..., Trials], path: str | os.PathLike, limits: ReadLimits | None = None, **kwargs: Any
) -> Trials:
    """``reader(path, **kwargs)`` in a child process with a time and a memory bound.

    Parameters
    ----------
    reader : callable
        A reader returning :class:`Trials`, e.g. :func:`pipeline.sources.raw.read_recording`.
    path : path-like
        The file; its size (with same-stem siblings) sets the bounds.
    limits : ReadLimits, optional
        The bounds; by default :class:`ReadLimits` ``()``.

    Returns
    -------
    Trials
        What the reader returned, handed over through shared memory. Warnings it issued are
        issued again here.

    Raises
    ------
    InputError, OSError
        As :func:`run_isolated`.
    """
    path = Path(path)
    if _forking_unavailable():
        return reader(path, **kwargs)
    limits = limits or ReadLimits()
    size = recording_bytes(path)
    # Sized to the memory bound, which the child's results cannot exceed; untouched pages cost nothing.
    shared = mmap.mmap(-1, limits.memory_bytes(size), flags=mmap.MAP_SHARED)
    message = run_isolated(lambda: _share(reader(path, **kwargs), shared), path, size, limits)
    return _result(path, message, shared)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _read_message(descriptor: int, deadline: float) -> tuple[bytes, bool]:
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"", True
        ready, _, _ = select.select([descriptor], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(descriptor, 1 << 16)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)


def _child(work: Callable[[], Any], write_end: int, memory: int, parent: int | None) -> None:
    code = 0
    try:
        # A crash is reported by the parent in one line, not as a traceback on the terminal.
        faulthandler.disable()
        if parent is not None:
            _die_with_parent()
            if os.getppid() != parent:  # the run died before the child could ask to follow it
                os._exit(1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        address_space = _virtual_memory_bytes() + memory
        resource.setrlimit(resource.RLIMIT_AS, (address_space, resource.getrlimit(resource.RLIMIT_AS)[1]))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                message = {"result": work()}
            message["warnings"] = [str(w.message) for w in caught]
        except InputError as err:
            message = {"input_error": [err.where, err.problem]}
        except MemoryError:
            message = {"memory": True}
        except OSError as err:
            message = {"os_error": [err.errno, err.strerror or str(err), err.filename and str(err.filename)]}
        except Exception as err:  # an unknown reader bug: it fails this file, named, not the run
            message = {"error": f"{type(err).__name__}: {err}"}
        payload = json.dumps(message).encode()
        view = memoryview(payload)
        while view:
            view = view[os.write(write_end, view) :]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    """Have the kernel kill this child when the thread that forked it ends (e.g. the run is killed)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _share(trials: Trials, shared: mmap.mmap) -> dict:
    arrays, offset = {}, 0
    for name in _ARRAY_FIELDS:
        array = np.ascontiguousarray(getattr(trials, name))
        end = offset + array.nbytes
        if end > len(shared):
            raise MemoryError
        shared[offset:end] = array.reshape(-1).view(np.uint8).data
        arrays[name] = [array.dtype.str, list(array.shape), offset]
        offset = -(-end // 64) * 64  # keep every array aligned
    return {
        "arrays": arrays,
        "source": trials.source,
        "source_sha256": trials.source_sha256,
        "kind": trials.kind,
    }


def _result(path: Path, message: dict, shared: mmap.mmap) -> Trials:
    arrays = {}
    try:
        for name in _ARRAY_FIELDS:
            dtype, shape, offset = message["arrays"][name]
            dtype = np.dtype(dtype)
            if dtype.kind not in "fiu":
                raise ValueError(f"{name} has dtype {dtype}")
            count = int(np.prod(shape, dtype=np.int64))
            arrays[name] = np.frombuffer(shared, dtype=dtype, count=count, offset=offset).reshape(shape)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"the reader returned a malformed result ({err})") from None
    return Trials(
        **arrays, source=message["source"], source_sha256=message["source_sha256"], kind=message["kind"]
    )

"""Readers and writers for DEAP's preprocessed files (``data_preprocessed_python`` and ``_matlab``).

Each ``sXX.dat`` / ``sXX.mat`` holds one subject: ``data`` (trials, 40 channels, 8064 samples at
128 Hz; channels 0-31 EEG in :data:`DEAP_CHANNELS` order, 32-39 peripheral) and ``labels``
(trials, 4: valence, arousal, dominance, liking in [1, 9]). Readers keep the 32 EEG channels.

The ``.dat`` files are pickles written by Python 2's cPickle. They are never unpickled: their
opcodes are read by :mod:`pipeline.sources.array_pickle`, which admits only a dict of plain
numeric arrays and builds them from the file's bytes, so a crafted file can neither run code
nor crash, hang or exhaust the process.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import pickle
import re
import struct
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from pipeline.errors import InputError
from pipeline.sources.array_pickle import ArraySpec, build_arrays, describe_array_dict
from pipeline.sources.isolation import IsolatedRun, read_isolated
from pipeline.sources.pickle_machine import PickleRefused
from pipeline.sources.trials import DEAP_CHANNELS, LABEL_NAMES, N_SAMPLES, Trials, file_sha256

N_DEAP_CHANNELS = 40  # 32 EEG + 8 peripheral
PERIPHERAL_CHANNELS: tuple[str, ...] = (
    "hEOG", "vEOG", "zEMG", "tEMG", "GSR", "Respiration belt", "Plethysmograph", "Temperature",
)  # fmt: skip
_SUBJECT_FILE = re.compile(r"s(\d+)\.(dat|mat)", re.IGNORECASE)
_REQUIRED_KEYS = ("data", "labels")
_READ_CHUNK = 8 << 20


def _subject_from_name(path: Path, subject: int | None) -> int:
    if subject is not None:
        if isinstance(subject, bool) or not isinstance(subject, int | np.integer) or subject < 1:
            raise InputError(path, f"subject must be a positive integer, got {subject!r}")
        return int(subject)
    match = _SUBJECT_FILE.fullmatch(path.name)
    if match is None:
        raise InputError(path, "cannot tell the subject from the file name; expected sNN.dat or sNN.mat")
    number = int(match.group(1))
    if number < 1:
        raise InputError(path, "subject number in the file name must be at least 1")
    return number


def _check_is_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file does not exist")
    if not path.is_file():
        raise InputError(path, "is not a regular file")


def _numeric_array(where: Path, key: str, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise InputError(where, f"'{key}' is a {type(value).__name__}, expected a numpy array")
    if value.dtype.kind not in "fiu":
        raise InputError(where, f"'{key}' has dtype {value.dtype}, expected a real numeric array")
    return value


def _trials_from_arrays(
    path: Path, contents: dict, kind: str, subject: int | None, sha256: Future | None = None
) -> Trials:
    """Validate DEAP's ``data``/``labels`` arrays and keep the EEG channels.

    ``sha256`` is the file's digest being computed from bytes the caller already holds; else
    the file is read again for it.
    """
    missing = [key for key in _REQUIRED_KEYS if key not in contents]
    if missing:
        found = sorted(str(key) for key in contents if not str(key).startswith("__"))
        raise InputError(path, f"missing key(s) {missing}; found {found}")
    data = _numeric_array(path, "data", contents["data"])
    labels = _numeric_array(path, "labels", contents["labels"])
    if data.ndim != 3 or data.shape[1:] != (N_DEAP_CHANNELS, N_SAMPLES) or data.shape[0] == 0:
        raise InputError(
            path, f"'data' has shape {data.shape}; expected (n_trials, {N_DEAP_CHANNELS}, {N_SAMPLES})"
        )
    n_trials = data.shape[0]
    if labels.shape != (n_trials, len(LABEL_NAMES)):
        raise InputError(
            path, f"'labels' has shape {labels.shape}; expected ({n_trials}, {len(LABEL_NAMES)})"
        )
    subject_id = _subject_from_name(path, subject)
    # Converted here, not in Trials, so that the conversion overlaps the hash still running.
    # Always a copy: ``data`` may be a view of a read buffer the next file reuses.
    signals = data[:, : len(DEAP_CHANNELS), :].astype(np.float32, order="C", copy=True)
    return Trials(
        signals=signals,
        labels=labels,
        subject=np.full(n_trials, subject_id, dtype=np.int32),
        trial=np.arange(n_trials, dtype=np.int32),
        source=str(path),
        source_sha256=sha256.result() if sha256 is not None else file_sha256(path),
        kind=kind,
    )


def read_deap_dat(path: str | os.PathLike, subject: int | None = None, isolate: bool = False) -> Trials:
    """Read one ``data_preprocessed_python/sXX.dat`` file without executing anything from it.

    Parameters
    ----------
    path : path-like
        The pickle file. Python 2 cPickle files (byte-string keys, ``numpy.core`` globals) and
        Python 3 pickles (str keys, protocols 2-5) are both accepted.
    subject : int, optional
        Subject id; by default taken from the file name (``s01.dat`` -> 1).
    isolate : bool
        Parse the pickle's opcodes in a child process bounded in time and memory
        (:func:`pipeline.sources.isolation.run_isolated`), as the preprocessing flows do; the arrays
        are then built here from the bytes already read, so nothing large is copied back.

    Returns
    -------
    Trials
        The 32 EEG channels of every trial, kind ``"deap-python"``.

    Raises
    ------
    InputError
        Naming the file, when it is missing, truncated or corrupt, refers to any global other
        than numpy's array builders, is not a dict of plain numeric arrays (or nests deeper,
        claims more bytes than it holds: see :mod:`pipeline.sources.array_pickle`), lacks
        ``data`` or ``labels``, has the wrong shapes, or holds NaN/Inf samples or labels
        outside [1, 9].
    """
    path = Path(path)
    _check_is_file(path)
    # Isolated, the opcodes are parsed in a child (of the small fork server) from its own view
    # of the file while this process reads and hashes it; the arrays are then built here,
    # every offset and size checked again against the bytes read here.
    with (
        (
            IsolatedRun(partial(_describe_file, path), path, path.stat().st_size, fresh=True)
            if isolate
            else nullcontext()
        ) as parsing,
        ThreadPoolExecutor(max_workers=1) as hasher,
    ):
        raw, digest = _read_while_hashing(path, hasher)
        described = parsing.result() if isolate else _describe(path, raw)
        try:
            contents = build_arrays(raw, {key: ArraySpec.from_json(spec) for key, spec in described.items()})
        except PickleRefused as err:
            raise InputError(path, str(err)) from None
        return _trials_from_arrays(path, contents, "deap-python", subject, digest)


def _describe(path: Path, buffer: bytes | memoryview | mmap.mmap) -> dict:
    """Where the arrays lie in the pickle ``buffer``, as JSON (see :func:`describe_array_dict`)."""
    try:
        return {key: spec.to_json() for key, spec in describe_array_dict(buffer).items()}
    except PickleRefused as err:
        raise InputError(path, str(err)) from None


def _describe_file(path: Path) -> dict:
    """:func:`_describe` of the file mapped into memory: only the opcodes' pages are read."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return _describe(path, b"")
        # Never closed: the parser's views may outlive this call; the child exits right after.
        return _describe(path, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))


_buffers = threading.local()


def _read_buffer(size: int) -> memoryview:
    """This thread's buffer for a file's bytes, at least ``size`` long.

    A file's arrays are views of its bytes only until :func:`_trials_from_arrays` copies out the
    EEG channels (as float32) and the labels, so the next file read by this thread may reuse
    the memory; writing into pages already mapped is 3-4 times faster than into a fresh 100 MB
    allocation (measured 0.05 s against 0.18 s per DEAP file). Each thread keeps its largest
    file's size, freed when the thread ends.
    """
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _buffers.buffer = memoryview(bytearray(size))
    return buffer


def _read_while_hashing(path: Path, hasher: ThreadPoolExecutor) -> tuple[memoryview, Future]:
    """The file's bytes (in this thread's reused buffer), and their SHA-256 computed on
    ``hasher``'s thread chunk by chunk as they arrive (one read serves both; hashlib and file
    reads release the GIL, so they overlap)."""
    size = path.stat().st_size
    buffer = _read_buffer(size)
    digest = hashlib.sha256()
    filled = 0
    with open(path, "rb", buffering=0) as handle:
        while filled < size and (n := handle.readinto(buffer[filled : filled + _READ_CHUNK])):
            hasher.submit(digest.update, buffer[filled : filled + n])
            filled += n
    return buffer[:filled], hasher.submit(lambda: digest.hexdigest())


# MAT v5 element types (MATLAB's "MAT-File Format", table 1-1) and the nesting the walk follows.
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MAT_HEADER_BYTES, _MAT_V5 = 128, 0x0100
_MAX_MAT_NESTING = 32


def _check_mat_element_sizes(path: Path) -> None:
    """Refuse a MAT v5 file any of whose data elements claims more bytes than its container holds.

    scipy allocates an element's claimed size before reading it, so a 10-kB file whose tag
    claims 4 GB made it allocate 4 GB. The walk reads only tags (the file is mapped, not
    copied), descending into uncompressed matrices (cells and structs nest them). A compressed
    element is checked against the file only: what it inflates to is bounded by the isolated
    read's memory limit. Files without a v5 header are left to scipy, which reads v4 files and
    refuses the rest.
    """
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size <= _MAT_HEADER_BYTES:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as raw:
            order = {b"IM": "<", b"MI": ">"}.get(raw[126:128])
            # Version 0x0100 is v5 (and v7); v7.3 files (0x0200) are HDF5 after the header.
            if order is not None and struct.unpack_from(f"{order}H", raw, 124)[0] == _MAT_V5:
                _check_elements(path, raw, _MAT_HEADER_BYTES, len(raw), order, 0)


def _check_elements(path: Path, raw: mmap.mmap, start: int, end: int, order: str, depth: int) -> None:
    if depth > _MAX_MAT_NESTING:
        raise InputError(path, f"MAT elements nested more than {_MAX_MAT_NESTING} deep")
    position = start
    while position + 8 <= end:  # fewer than 8 trailing bytes: scipy judges them
        kind, size = struct.unpack_from(f"{order}II", raw, position)
        if kind >> 16:  # a small element: type and size packed in one word, its data in the next
            position += 8
            continue
        payload = position + 8
        if size > end - payload:
            raise InputError(
                path,
                f"the MAT element at byte {position} claims {size} bytes; its container holds "
                f"{end - payload} after it (truncated or crafted)",
            )
        if kind == _MI_MATRIX:
            _check_elements(path, raw, payload, payload + size, order, depth + 1)
        # Elements are padded to 8 bytes, except compressed ones.
        position = payload + size + (0 if kind == _MI_COMPRESSED else -size % 8)


def read_deap_mat(path: str | os.PathLike, subject: int | None = None) -> Trials:
    """Read one ``data_preprocessed_matlab/sXX.mat`` file (MATLAB v5 format, variables ``data``, ``labels``).

    Parameters
    ----------
    path : path-like
        The MAT file.
    subject : int, optional
        Subject id; by default taken from the file name (``s01.mat`` -> 1).

    Returns
    -------
    Trials
        The 32 EEG channels of every trial, kind ``"deap-matlab"``.

    Raises
    ------
    InputError
        Naming the file, when it cannot be read as a MAT file, lacks ``data`` or ``labels``, or
        its arrays fail the checks of :func:`read_deap_dat`.
    """
    path = Path(path)
    _check_is_file(path)
    _check_mat_element_sizes(path)
    try:
        contents = scipy.io.loadmat(path, variable_names=list(_REQUIRED_KEYS))
    except NotImplementedError as err:
        raise InputError(path, f"unsupported MAT file version ({err}); save it as MATLAB v5 or v7") from None
    except MemoryError:  # the isolated read's memory bound, which pipeline.sources.isolation reports
        raise
    # scipy's parser lets a corrupt file surface as whatever its internals hit first (a bad
    # deflate stream as zlib.error, a tag past the end as IndexError, a half-built variable as
    # UnboundLocalError, ...): loadmat reads only this file, so any failure is this file's.
    except Exception as err:
        raise InputError(path, f"cannot read as a MAT file ({type(err).__name__}: {err})") from None
    return _trials_from_arrays(path, contents, "deap-matlab", subject)


_READERS = {".dat": read_deap_dat, ".mat": read_deap_mat}


def read_source_file(path: str | os.PathLike, subject: int | None = None, isolate: bool = False) -> Trials:
    """Read a DEAP file with the reader its suffix calls for (``.dat`` or ``.mat``).

    With ``isolate`` the file's untrusted content is parsed in a child process bounded in time
    and memory (:mod:`pipeline.sources.isolation`), so that even an unknown reader bug fails this file
    alone, with an :class:`InputError` naming it.

    Raises
    ------
    InputError
        Naming the file when the suffix is neither, or when the reader rejects it.
    """
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(path, f"unknown file type {path.suffix!r}; expected one of {sorted(_READERS)}")
    if reader is read_deap_dat:
        return read_deap_dat(path, subject=subject, isolate=isolate)
    return read_isolated(reader, path, subject=subject) if isolate else reader(path, subject=subject)


def _checked_deap_arrays(where: Path, data: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """float64 copies of ``data`` and ``labels`` in DEAP's shapes, as the real files store them."""
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim != 3 or data.shape[1:] != (N_DEAP_CHANNELS, N_SAMPLES) or data.shape[0] == 0:
        raise InputError(
            where, f"data has shape {data.shape}; expected (n_trials, {N_DEAP_CHANNELS}, {N_SAMPLES})"
        )
    if labels.shape != (data.shape[0], len(LABEL_NAMES)):
        raise InputError(
            where, f"labels have shape {labels.shape}; expected ({data.shape[0]}, {len(LABEL_NAMES)})"
        )
    for name, values in (("data", data), ("labels", labels)):
        if values.dtype.kind not in "fiu":
            raise InputError(where, f"{name} has dtype {values.dtype}, expected real numbers")
        if not np.isfinite(values).all():
            raise InputError(where, f"{name} contain NaN or Inf")
    return np.ascontiguousarray(data, dtype=np.float64), np.ascontiguousarray(labels, dtype=np.float64)


def _write_atomically(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_deap_dat(path: str | os.PathLike, data: Any, labels: Any, protocol: int = 2) -> Path:
    """Write ``{'data': ..., 'labels': ...}`` as a DEAP-style pickle (float64, like the real files).

    Parameters
    ----------
    path : path-like
        Destination ``sXX.dat``; its folder is created when missing.
    data : array (n_trials, 40, 8064)
        32 EEG channels in :data:`DEAP_CHANNELS` order, then the 8 peripheral channels.
    labels : array (n_trials, 4)
        Valence, arousal, dominance, liking.
    protocol : int
        Pickle protocol, 2 (as DEAP's own files) to 5.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    if isinstance(protocol, bool) or protocol not in (2, 3, 4, 5):
        raise InputError(path, f"pickle protocol must be 2, 3, 4 or 5, got {protocol!r}")
    data, labels = _checked_deap_arrays(path, data, labels)
    _write_atomically(path, lambda handle: pickle.dump({"data": data, "labels": labels}, handle, protocol))
    return path


def write_deap_mat(path: str | os.PathLike, data: Any, labels: Any) -> Path:
    """Write ``data`` and ``labels`` as a MATLAB v5 file like ``data_preprocessed_matlab/sXX.mat``.

    Parameters and return value as for :func:`write_deap_dat`.
    """
    path = Path(path)
    data, labels = _checked_deap_arrays(path, data, labels)
    _write_atomically(path, lambda handle: scipy.io.savemat(handle, {"data": data, "labels": labels}))
    return path

"""Readers and writers for DEAP's preprocessed files (``data_preprocessed_python`` and ``_matlab``).

Each ``sXX.dat`` / ``sXX.mat`` holds one subject: ``data`` (trials, 40 channels, 8064 samples at
128 Hz; channels 0-31 EEG in :data:`DEAP_CHANNELS` order, 32-39 peripheral) and ``labels``
(trials, 4: valence, arousal, dominance, liking in [1, 9]). Readers keep the 32 EEG channels.

The ``.dat`` files are pickles written by Python 2's cPickle. They are read through an
unpickler that admits only the few numpy globals needed to rebuild plain numeric arrays, so
a crafted file cannot run code.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import io
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from pipeline.errors import InputError
from pipeline.sources.trials import DEAP_CHANNELS, LABEL_NAMES, N_SAMPLES, Trials, file_sha256

N_DEAP_CHANNELS = 40  # 32 EEG + 8 peripheral
PERIPHERAL_CHANNELS: tuple[str, ...] = (
    "hEOG", "vEOG", "zEMG", "tEMG", "GSR", "Respiration belt", "Plethysmograph", "Temperature",
)  # fmt: skip
_SUBJECT_FILE = re.compile(r"s(\d+)\.(dat|mat)", re.IGNORECASE)
_REQUIRED_KEYS = ("data", "labels")


def _numpy_internal(module_tail: str, name: str) -> Any:
    """A numpy-internal callable, from ``numpy._core`` (numpy >= 2) or ``numpy.core`` (numpy 1.x)."""
    try:
        module = importlib.import_module(f"numpy._core.{module_tail}")
    except ImportError:  # numpy 1.x has no numpy._core
        module = importlib.import_module(f"numpy.core.{module_tail}")
    return getattr(module, name)


# Every global a pickle of a plain numeric ndarray refers to: protocol 2 from Python 2's cPickle
# or Python 3 (``_reconstruct``, ``ndarray``, ``dtype``, and ``_codecs.encode`` for the raw bytes),
# protocols 3-4 (the same without ``encode``) and protocol 5 (``_frombuffer``). numpy 2 renamed
# ``numpy.core`` to ``numpy._core``, so files from either era name either path.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_internal("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_internal("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): _numpy_internal("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): _numpy_internal("numeric", "_frombuffer"),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and builtin containers, and refuses every other global."""

    def __init__(self, handle: Any, where: str):
        # latin1 turns Python 2 byte strings (keys and raw array bytes) into str losslessly.
        super().__init__(handle, encoding="latin1")
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise InputError(
                self._where,
                f"refused to load global {module}.{name}: a DEAP .dat file holds only numpy arrays",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise InputError(self._where, "refused a persistent id: a DEAP .dat file holds only numpy arrays")


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
    path: Path, contents: dict, kind: str, subject: int | None, sha256: str | None = None
) -> Trials:
    """Validate DEAP's ``data``/``labels`` arrays and keep the EEG channels.

    ``sha256`` is the file's digest when the caller already holds its bytes; else it is read.
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
    return Trials(
        signals=data[:, : len(DEAP_CHANNELS), :],
        labels=labels,
        subject=np.full(n_trials, subject_id, dtype=np.int32),
        trial=np.arange(n_trials, dtype=np.int32),
        source=str(path),
        source_sha256=sha256 or file_sha256(path),
        kind=kind,
    )


def read_deap_dat(path: str | os.PathLike, subject: int | None = None) -> Trials:
    """Read one ``data_preprocessed_python/sXX.dat`` file without executing anything from it.

    Parameters
    ----------
    path : path-like
        The pickle file. Python 2 cPickle files (byte-string keys, ``numpy.core`` globals) and
        Python 3 pickles (str keys, protocols 2-5) are both accepted.
    subject : int, optional
        Subject id; by default taken from the file name (``s01.dat`` -> 1).

    Returns
    -------
    Trials
        The 32 EEG channels of every trial, kind ``"deap-python"``.

    Raises
    ------
    InputError
        Naming the file, when it is missing, truncated or corrupt, refers to any global other
        than numpy's array builders, is not a dict with ``data`` and ``labels``, has the wrong
        shapes, or holds NaN/Inf samples or labels outside [1, 9].
    """
    path = Path(path)
    _check_is_file(path)
    # One read serves both the content hash and the unpickler (the files are ~100 MB each).
    raw = path.read_bytes()
    with io.BytesIO(raw) as handle:
        try:
            contents = _ArrayOnlyUnpickler(handle, str(path)).load()
        except InputError:  # a refused global; InputError is a ValueError, so it must pass first
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, OverflowError, MemoryError) as err:  # fmt: skip
            raise InputError(path, f"truncated or corrupt pickle ({type(err).__name__}: {err})") from None
    if not isinstance(contents, dict):
        raise InputError(path, f"holds a {type(contents).__name__}, expected a dict with 'data' and 'labels'")
    # Python 3 pickles written with bytes keys come back as bytes even under latin1.
    contents = {(key.decode("latin1") if isinstance(key, bytes) else key): value
                for key, value in contents.items()}  # fmt: skip
    return _trials_from_arrays(path, contents, "deap-python", subject, hashlib.sha256(raw).hexdigest())


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
    try:
        contents = scipy.io.loadmat(path, variable_names=list(_REQUIRED_KEYS))
    except NotImplementedError as err:
        raise InputError(path, f"unsupported MAT file version ({err}); save it as MATLAB v5 or v7") from None
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, EOFError, OSError) as err:
        raise InputError(path, f"cannot read as a MAT file ({type(err).__name__}: {err})") from None
    return _trials_from_arrays(path, contents, "deap-matlab", subject)


_READERS = {".dat": read_deap_dat, ".mat": read_deap_mat}


def read_source_file(path: str | os.PathLike, subject: int | None = None) -> Trials:
    """Read a DEAP file with the reader its suffix calls for (``.dat`` or ``.mat``).

    Raises
    ------
    InputError
        Naming the file when the suffix is neither, or when the reader rejects it.
    """
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(path, f"unknown file type {path.suffix!r}; expected one of {sorted(_READERS)}")
    return reader(path, subject=subject)


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

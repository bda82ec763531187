"""The frame store: one zarr v3 group holding every trial's frames, labels and provenance.

Layout (a contract other stages and reports rely on)::

    frames          float32 (n_rows, *frame_shape), one chunk per trial, fill NaN
    labels          float32 (n_rows, label_width)
    subject, trial  int32 (n_rows,)
    split           int8 (n_rows,): an image's part of its reader's split (0 train, 1 validation,
                    2 test); -1 for EEG trials, which the learn stage splits. Stores written
                    before this array existed lack it (see :data:`SPLIT_ARRAY`).
    source          UTF-8 string (n_rows,): the file the trial came from
    source_sha256   UTF-8 string (n_rows,): hex SHA-256 of that file
    committed       bool (n_rows,): True once every array of the row is written
    latents/mu, latents/logvar  float32 (n_rows, frame_shape[0], H), fill NaN, once encoded
    latents/encoded bool (n_rows,): True once both latent arrays of the row are written
    latents_<protocol>/...   the same three arrays for a second model (``--protocol both``: the
                    subject protocol's β-VAE beside the trial protocol's in ``latents/``)

Group attrs hold the caller's metadata (preprocessing config, band edges, grid, montage,
normalisation statistics, data kind) plus the keys the store manages itself: ``config_hash``,
``package_version``, ``created``, ``updated`` and ``store_format``.

Crash safety rests on ordering: rows are reserved by resizing (data arrays first, the
``committed`` marker last), data is written by index, and the marker is set last. A killed run
leaves reserved rows uncommitted; they are invisible to every reader and the next run reuses
them, so re-running an ingest never duplicates a trial. Writers of one store take turns through
:func:`writer_lock` (threads of one process, and processes on one machine for local stores).
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import os
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.validators import check_json_native, utc_now

STORE_FORMAT = "eegmi-frames/1"
MANAGED_ATTRS = ("config_hash", "package_version", "created", "updated", "store_format")
ROW_ARRAYS = ("frames", "labels", "subject", "trial", "source", "source_sha256")
# Per-row split part; optional, so that EEG stores written before it existed still open (their
# rows read -1, no stored split). Image stores cannot do without it: see pipeline.store.ingest_images.
SPLIT_ARRAY = "split"
NO_SPLIT = -1
COMMIT_ARRAY = "committed"
LATENTS_GROUP = "latents"
LATENT_MARKER = "encoded"
_LATENT_GROUP_NAME = re.compile(rf"^{LATENTS_GROUP}(_[a-z][a-z0-9]*)?$")
# Small per-row arrays share chunks of this many rows; zarr writes each chunk atomically, so a
# kill mid-write leaves a chunk either old or new, never torn.
ROW_CHUNK = 4096
LATENT_CHUNK_BYTES = 1 << 20
# Byte-shuffled LZ4 compresses band images as well as zarr's default Zstandard (~0.65 of raw)
# at a quarter of the time, which matters when a full DEAP ingest writes 1 GB of frames.
FRAMES_COMPRESSOR = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


@contextmanager
def writer_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive right to change the rows of the store at ``path``; waits for the current holder.

    Threads of one process share a lock per store; local stores add an ``fcntl`` lock on
    ``<store>.lock`` so that two processes (two flow runs) take turns too. Remote (fsspec)
    stores get the in-process lock only: run one writing flow per remote store.
    """
    where = os.fspath(path)
    key = os.path.abspath(where.removeprefix("file://")) if _is_local(where) else where
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
    with thread_lock:
        if not _is_local(where):
            yield
            return
        lock_path = key.rstrip(os.sep) + ".lock"
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _check_managed_attrs(values: dict, where: str, config_hash: str) -> None:
    """Refuse attrs that contradict what the store records itself (repeating it is harmless)."""
    own = {"config_hash": config_hash, "package_version": __version__, "store_format": STORE_FORMAT}
    conflicting = sorted(key for key in MANAGED_ATTRS if key in values and values[key] != own.get(key))
    if conflicting:
        raise InputError(where, f"attrs set {conflicting}, which the store manages itself")


def _as_row_vector(values: Any, where: str, name: str, n_expected: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != n_expected:
        raise InputError(where, f"{name} has shape {array.shape}; expected ({n_expected},)")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise InputError(where, f"{name} has dtype {array.dtype}; expected integers")
    info = np.iinfo(np.int32)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise InputError(where, f"{name} holds values outside the int32 range")
    return array.astype(np.int32)


def _split_parts(values: Any, where: str, n_expected: int) -> np.ndarray:
    if values is None:
        return np.full(n_expected, NO_SPLIT, dtype=np.int8)
    parts = _as_row_vector(values, where, "split", n_expected)
    if not np.isin(parts, (NO_SPLIT, 0, 1, 2)).all():
        raise InputError(where, "split holds parts other than 0 (train), 1 (validation), 2 (test) or -1")
    return parts.astype(np.int8)


def _per_row_names(values: str | Sequence[str], name: str, n_expected: int, where: str) -> list[str]:
    """One string for every row: a single str repeated, or a sequence of ``n_expected`` str."""
    if isinstance(values, str):
        return [values] * n_expected
    names = list(values) if isinstance(values, Sequence | np.ndarray) else None
    if names is None or len(names) != n_expected or not all(isinstance(v, str) for v in names):
        raise InputError(where, f"{name} must be a str or {n_expected} str (one per trial), got {values!r}")
    return names


def _as_finite_float32(values: Any, where: str, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``values`` as float32 after checking shape (None: any length), dtype and finiteness."""
    array = np.asarray(values)
    if array.ndim != len(shape) or any(
        n is not None and n != m for n, m in zip(shape, array.shape, strict=True)
    ):
        expected = ", ".join("n" if n is None else str(n) for n in shape)
        raise InputError(where, f"{name} has shape {array.shape}; expected ({expected})")
    if array.size and not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(where, f"{name} has dtype {array.dtype}; expected real numbers")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        n_bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(where, f"{name} holds {n_bad} non-finite values")
    return array


def _contiguous_runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """``(first row, stop row, offset into rows)`` for each run of consecutive ``rows``."""
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [rows.size]])
    return [(int(rows[a]), int(rows[b - 1]) + 1, int(a)) for a, b in zip(starts, stops, strict=True)]


def write_rows(array: zarr.Array, rows: np.ndarray, values: np.ndarray) -> None:
    """``array[rows] = values`` as one slice write per run of consecutive rows.

    zarr's orthogonal indexing is about twice as slow as slicing for whole-chunk writes, and
    the rows a store reserves are almost always one run.
    """
    values = np.asarray(values)
    for start, stop, offset in _contiguous_runs(np.asarray(rows, dtype=np.int64)):
        array[start:stop] = values[offset : offset + stop - start]


def write_rows_together(writes: Sequence[tuple[zarr.Array, np.ndarray]], rows: np.ndarray) -> None:
    """:func:`write_rows` of several arrays at the same ``rows``, the arrays side by side: one
    round trip to zarr's I/O loop instead of one per array (each write reads, merges and
    rewrites a chunk)."""
    runs = _contiguous_runs(np.asarray(rows, dtype=np.int64))
    writes = [(array, np.asarray(values)) for array, values in writes]

    async def write_runs(array: zarr.Array, values: np.ndarray) -> None:
        # One run after another: two runs may share a chunk, and concurrent writes of one chunk
        # would each merge into the chunk as it was before the other.
        for start, stop, offset in runs:
            await array.async_array.setitem(slice(start, stop), values[offset : offset + stop - start])

    async def write_all() -> None:
        await asyncio.gather(*(write_runs(array, values) for array, values in writes))

    sync(write_all())


def read_rows(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` in the order given, read as one slice per run of consecutive sorted rows."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out = np.empty((rows.size, *array.shape[1:]), dtype=array.dtype)
    for start, stop, offset in _contiguous_runs(ordered):
        out[order[offset : offset + stop - start]] = array[start:stop]
    return out


def _frame_codec(array: zarr.Array) -> numcodecs.abc.Codec | None:
    """The Blosc compressor of ``array`` when a chunk is one row's values in little-endian bytes
    compressed by it alone (the layout this module creates), else None."""
    codecs = array.metadata.codecs
    if (
        array.chunks != (1, *array.shape[1:])
        or len(codecs) != 2
        or not isinstance(codecs[0], zarr.codecs.BytesCodec)
        or codecs[0].endian not in (None, zarr.codecs.Endian.little)
        or not isinstance(codecs[1], zarr.codecs.BloscCodec)
    ):
        return None
    blosc = codecs[1]
    return numcodecs.Blosc(
        cname=blosc.cname.value,
        clevel=blosc.clevel,
        shuffle={"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[blosc.shuffle.value],
        blocksize=blosc.blocksize,
        typesize=blosc.typesize,
    )


def _encoded_frame_chunks(array: zarr.Array, values: np.ndarray) -> list[bytes] | None:
    """Each row of ``values`` encoded as ``array`` stores a chunk, or None when its codecs are
    not the ones :func:`_frame_codec` knows (then zarr encodes them as it writes)."""
    codec = _frame_codec(array)
    if codec is None:
        return None
    little_endian = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return [codec.encode(np.ascontiguousarray(row)) for row in little_endian]


def _store_chunks(array: zarr.Array, rows: np.ndarray, chunks: list[bytes]) -> None:
    """Put already encoded one-row chunks at ``rows`` of ``array`` (each key written whole)."""
    store, prefix = array.store_path.store, array.store_path.path
    prototype = default_buffer_prototype()

    async def put_all() -> None:
        await asyncio.gather(
            *(
                store.set(
                    f"{prefix}/{array.metadata.encode_chunk_key((int(row),) + (0,) * (array.ndim - 1))}",
                    prototype.buffer.from_bytes(chunk),
                )
                for row, chunk in zip(rows, chunks, strict=True)
            )
        )

    sync(put_all())


def _strings(array: np.ndarray) -> np.ndarray:
    # zarr returns numpy's StringDType, which cannot be cast to a fixed-width str dtype directly.
    return np.asarray(array.tolist(), dtype=str)


class FrameStore:
    """Read and write the frame store of one data set run.

    Build one with :meth:`create_or_open` (writing an ingest) or :meth:`open` (reading, or
    writing latents and attrs with ``writable=True``); do not call the constructor directly.

    A handle sees the trials committed when it was opened plus those it wrote itself. Every
    reader returns committed rows only: ``committed_rows()`` lists them, and the per-row
    properties (``labels``, ``subject``, ``trial``, ``source``, ``source_sha256``) are aligned
    with it. ``frames`` is the zarr array itself so large stores can be read trial by trial;
    index it with rows from ``committed_rows()`` (or use :meth:`read_frames`, which checks).

    Parameters
    ----------
    group : zarr.Group
        The opened store group.
    path : str
        The store's path or URL, used in error messages.
    writable : bool
        Whether this handle may write.
    """

    def __init__(self, group: zarr.Group, path: str, *, writable: bool):
        self._group = group
        self.path = path
        self.writable = writable
        # Only create_or_open, which checks the caller's config hash, may add trials.
        self._may_add_trials = False
        present = set(group.array_keys())
        for name in (*ROW_ARRAYS, COMMIT_ARRAY):
            if name not in present:
                raise InputError(path, f"is not a frame store: array {name!r} is missing")
        self._row_arrays = (*ROW_ARRAYS, SPLIT_ARRAY) if SPLIT_ARRAY in present else ROW_ARRAYS
        self._load_rows()

    def _load_rows(self) -> None:
        """Read the arrays' current shapes and commit markers (other handles may have written since)."""
        group, path = self._group, self.path
        self._arrays = {name: group[name] for name in (*self._row_arrays, COMMIT_ARRAY)}
        capacity = self._arrays[COMMIT_ARRAY].shape[0]
        for name in self._row_arrays:
            if self._arrays[name].shape[0] < capacity:
                raise InputError(
                    path,
                    f"array {name!r} has {self._arrays[name].shape[0]} rows but {COMMIT_ARRAY!r} has "
                    f"{capacity}; the store is damaged",
                )
        self._committed = np.asarray(self._arrays[COMMIT_ARRAY][:], dtype=bool)
        rows = np.flatnonzero(self._committed)
        shas = _strings(self._arrays["source_sha256"][:capacity])[rows]
        trials = self._arrays["trial"][:capacity][rows]
        self._row_of_key: dict[tuple[str, int], int] = {
            (str(sha), int(trial)): int(row) for sha, trial, row in zip(shas, trials, rows, strict=True)
        }

    # ------------------------------------------------------------------ opening

    @classmethod
    def create_or_open(
        cls,
        path: str | os.PathLike,
        *,
        config_hash: str,
        attrs: dict,
        frame_shape: tuple[int, ...],
        label_width: int = 4,
    ) -> FrameStore:
        """Create the store, or open an existing one built under the same configuration, to write.

        Parameters
        ----------
        path : str or os.PathLike
            Local path or any URL zarr accepts (``"s3://..."``, ``"memory://..."``).
        config_hash : str
            Hash of the preprocessing configuration the frames are made with.
        attrs : dict
            JSON-native metadata to record (config, band edges, grid, montage, kind, ...); merged
            into the attrs of an existing store. The store-managed keys ``MANAGED_ATTRS`` may
            only repeat the store's own values.
        frame_shape : tuple of int
            Shape of one trial's frames, e.g. ``(63, 3, 32, 32)`` or ``(1, 1, 28, 28)``.
        label_width : int
            Labels per trial: 4 for DEAP ratings, 1 for an image class.

        Returns
        -------
        FrameStore
            A writable handle.

        Raises
        ------
        InputError
            If the arguments are invalid, the path holds something other than a frame store, or
            the existing store was built with another configuration or shape.
        """
        where = os.fspath(path)
        if not isinstance(config_hash, str) or not config_hash:
            raise InputError(where, f"config_hash must be a non-empty str, got {config_hash!r}")
        if not isinstance(attrs, dict):
            raise InputError(where, f"attrs must be a dict, got {type(attrs).__name__}")
        check_json_native(attrs, where)
        _check_managed_attrs(attrs, where, config_hash)
        frame_shape = tuple(frame_shape)
        if not frame_shape or not all(isinstance(n, int | np.integer) and n > 0 for n in frame_shape):
            raise InputError(where, f"frame_shape must be positive ints, got {frame_shape}")
        frame_shape = tuple(int(n) for n in frame_shape)
        if not isinstance(label_width, int | np.integer) or label_width < 1:
            raise InputError(where, f"label_width must be a positive int, got {label_width!r}")

        # Two runs creating one store at once must not both see it empty.
        with writer_lock(where):
            group = _open_group(where, mode="a")
            existing = dict(group.attrs)
            if not existing and not list(group.keys()):
                # Attrs first: a run killed while creating leaves a store the next run can complete.
                group.update_attributes(
                    {**attrs, "config_hash": config_hash, "store_format": STORE_FORMAT, "created": utc_now()}
                )
            elif existing.get("store_format") != STORE_FORMAT:
                raise InputError(
                    where, "is not a frame store (no store_format attribute); use a new --out folder"
                )
            elif existing.get("config_hash") != config_hash:
                raise InputError(
                    where,
                    f"was built with preprocessing config {existing.get('config_hash')}, this run uses "
                    f"{config_hash}; use a new --out folder",
                )
            _complete_layout(group, frame_shape, int(label_width))
            store = cls(group, where, writable=True)
            if store.frame_shape != frame_shape or store.label_width != label_width:
                raise InputError(
                    where,
                    f"holds frames {store.frame_shape} with {store.label_width} labels per trial; this run "
                    f"writes frames {frame_shape} with {label_width}; use a new --out folder",
                )
            store._may_add_trials = True
            # Rewriting the group metadata from this non-consolidated handle also drops any
            # consolidated snapshot, so readers see the live store until consolidate() runs again.
            store._write_attrs(attrs)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, *, writable: bool = False) -> FrameStore:
        """Open an existing store.

        Parameters
        ----------
        path : str or os.PathLike
            Local path or URL of the store.
        writable : bool
            Open to write latents and attrs. Adding trials needs :meth:`create_or_open`, which
            checks the configuration they were made with.

        Returns
        -------
        FrameStore

        Raises
        ------
        InputError
            If there is no frame store at ``path``.
        """
        where = os.fspath(path)
        group = _open_group(where, mode="r+" if writable else "r")
        if group.attrs.get("store_format") != STORE_FORMAT:
            raise InputError(where, "is not a frame store (no store_format attribute)")
        store = cls(group, where, writable=writable)
        if writable:
            store._write_attrs({})
        return store

    @staticmethod
    def read_attrs(path: str | os.PathLike) -> dict:
        """The attrs of the store at ``path``, without loading its rows as :meth:`open` does.

        Raises
        ------
        InputError
            If there is no frame store at ``path``.
        """
        where = os.fspath(path)
        attrs = dict(_open_group(where, mode="r").attrs)
        if attrs.get("store_format") != STORE_FORMAT:
            raise InputError(where, "is not a frame store (no store_format attribute)")
        return attrs

    # ------------------------------------------------------------------ reading

    @property
    def config_hash(self) -> str:
        """Hash of the preprocessing configuration every stored frame was made with."""
        return str(self._group.attrs["config_hash"])

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one trial's frames."""
        return tuple(self._arrays["frames"].shape[1:])

    @property
    def label_width(self) -> int:
        """Number of labels per trial."""
        return int(self._arrays["labels"].shape[1])

    @property
    def n_rows(self) -> int:
        """Rows reserved in the store, committed or not."""
        return int(self._committed.shape[0])

    def committed_rows(self) -> np.ndarray:
        """Indices (int64, ascending) of the rows whose trials are completely written."""
        return np.flatnonzero(self._committed)

    def stored_keys(self) -> set[tuple[str, int]]:
        """``(source_sha256, trial)`` of every committed trial."""
        return set(self._row_of_key)

    @property
    def frames(self) -> zarr.Array:
        """The frames array itself, all reserved rows; read only rows from ``committed_rows()``."""
        return self._arrays["frames"]

    def read_frames(self, rows: Iterable[int]) -> np.ndarray:
        """Frames of the given committed rows, float32 (len(rows), *frame_shape)."""
        rows = self._check_committed(rows, "rows")
        return read_rows(self._arrays["frames"], rows)

    @property
    def labels(self) -> np.ndarray:
        """float32 (n_committed, label_width), aligned with ``committed_rows()``."""
        return self._read_committed("labels")

    @property
    def subject(self) -> np.ndarray:
        """int32 (n_committed,), aligned with ``committed_rows()``."""
        return self._read_committed("subject")

    @property
    def has_split(self) -> bool:
        """Whether the store has the per-row ``split`` array (stores written before it lack it)."""
        return SPLIT_ARRAY in self._arrays

    @property
    def split(self) -> np.ndarray:
        """int8 (n_committed,): each row's stored split part (0 train, 1 validation, 2 test), or -1
        where the row has none (EEG trials, and every row of a store without the array)."""
        if not self.has_split:
            return np.full(int(np.count_nonzero(self._committed)), NO_SPLIT, dtype=np.int8)
        return self._read_committed(SPLIT_ARRAY)

    @property
    def trial(self) -> np.ndarray:
        """int32 (n_committed,): each trial's index within its source file."""
        return self._read_committed("trial")

    @property
    def source(self) -> np.ndarray:
        """str (n_committed,): the file each committed trial came from."""
        return _strings(self._read_committed("source"))

    @property
    def source_sha256(self) -> np.ndarray:
        """str (n_committed,): hex SHA-256 of each committed trial's source file."""
        return _strings(self._read_committed("source_sha256"))

    @property
    def attrs(self) -> dict:
        """A copy of the group attrs."""
        return dict(self._group.attrs)

    # ------------------------------------------------------------------ writing

    def update_attrs(self, values: dict) -> None:
        """Merge JSON-native ``values`` into the group attrs and stamp ``updated``.

        Raises
        ------
        InputError
            If ``values`` is not a dict, holds non-JSON values, contradicts a store-managed key, or the
            handle is read-only.
        """
        self._check_writable()
        if not isinstance(values, dict):
            raise InputError(self.path, f"attrs must be a dict, got {type(values).__name__}")
        check_json_native(values, self.path)
        _check_managed_attrs(values, self.path, self.config_hash)
        self._write_attrs(values)

    def add_trials(
        self,
        frames: np.ndarray,
        labels: np.ndarray,
        subject: np.ndarray,
        trial: np.ndarray,
        source: str | Sequence[str],
        source_sha256: str | Sequence[str],
        split: np.ndarray | None = None,
    ) -> int:
        """Write the trials of one source file (or one file per trial) that the store does not hold yet.

        Parameters
        ----------
        frames : array (k, *frame_shape)
            Finite real values, stored as float32.
        labels : array (k, label_width)
            Finite real values, stored as float32.
        subject, trial : int arrays (k,)
            Subject id and the trial's index within its source file (>= 0; each
            ``(source_sha256, trial)`` pair once).
        source : str or sequence of k str
            Path or name of the source file, or of each trial's file: a data set of one image
            per file (CelebA's JPEGs) writes many files in one call.
        source_sha256 : str or sequence of k str
            64 lowercase hex digits: SHA-256 of the source file, or of each trial's file.
        split : int array (k,), optional
            Each row's split part (0 train, 1 validation, 2 test); -1 (no stored split) if None.

        Returns
        -------
        int
            How many trials were written; trials already stored under the same
            ``(source_sha256, trial)`` are skipped.

        Raises
        ------
        InputError
            Naming ``source`` and the array at fault when the input is invalid, or naming the
            store when the handle was not made by :meth:`create_or_open`.
        """
        if not self._may_add_trials:
            raise InputError(self.path, "adding trials needs a handle from FrameStore.create_or_open")
        where = source if isinstance(source, str) else self.path
        frames = _as_finite_float32(frames, where, "frames", (None, *self.frame_shape))
        n_trials = frames.shape[0]
        sources = _per_row_names(source, "source", n_trials, self.path)
        shas = _per_row_names(source_sha256, "source_sha256", n_trials, self.path)
        for name, sha in zip(sources, shas, strict=True):
            if not name:
                raise InputError(self.path, f"source must be a non-empty str, got {name!r}")
            if not _SHA256_HEX.fullmatch(sha):
                raise InputError(name, f"source_sha256 must be 64 lowercase hex digits, got {sha!r}")
        labels = _as_finite_float32(labels, where, "labels", (n_trials, self.label_width))
        subject = _as_row_vector(subject, where, "subject", n_trials)
        trial = _as_row_vector(trial, where, "trial", n_trials)
        split = _split_parts(split, where, n_trials)
        if n_trials and trial.min() < 0:
            raise InputError(where, "trial holds negative indices")
        if len(set(zip(shas, trial.tolist(), strict=True))) != n_trials:
            raise InputError(where, "trial holds repeated indices; each (file, trial) must be unique")

        # Compressing is most of a write's work; done before taking the lock, writers of other
        # files (parallel tasks) compress side by side and only take turns to store the bytes.
        frame_chunks = _encoded_frame_chunks(self._arrays["frames"], frames)
        with writer_lock(self.path):
            # Another handle (a parallel task, another process) may have added rows since this
            # one was opened; reserving from a stale view would overwrite them.
            self._load_rows()
            keys = zip(shas, trial.tolist(), strict=True)
            new = np.array([key not in self._row_of_key for key in keys], dtype=bool)
            n_new = int(np.count_nonzero(new))
            if not n_new:
                return 0
            rows = self._reserve_rows(n_new)
            if frame_chunks is None:
                write_rows(self._arrays["frames"], rows, frames[new])
            else:
                _store_chunks(self._arrays["frames"], rows, [frame_chunks[i] for i in np.flatnonzero(new)])
            row_values = {
                "labels": labels[new],
                "subject": subject[new],
                "trial": trial[new],
                "source": np.array(sources)[new],
                "source_sha256": np.array(shas)[new],
                SPLIT_ARRAY: split[new],
            }
            # All before the commit marker, which makes the rows visible.
            write_rows_together([(self._arrays[name], values) for name, values in row_values.items()], rows)
            self._commit(rows)
            for row, sha, index in zip(rows, np.array(shas)[new], trial[new], strict=True):
                self._row_of_key[(str(sha), int(index))] = int(row)
            self._write_attrs({})
        return n_new

    def consolidate(self) -> None:
        """Write consolidated metadata so remote readers open the store with one request.

        Call at the end of a writing run; the next writing handle drops it again.
        """
        self._check_writable()
        self._write_attrs({})
        with warnings.catch_warnings():
            # Consolidated metadata is a zarr-python extension to the v3 spec; we use it knowingly.
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(self._group.store)

    # ------------------------------------------------------------------ latents

    def latent_rows(self, group: str = LATENTS_GROUP) -> np.ndarray:
        """Committed rows whose latents are written in ``group`` (int64, ascending)."""
        self._check_latent_group(group)
        if group not in self._group.group_keys():
            return np.empty(0, dtype=np.int64)
        encoded = np.asarray(self._group[group][LATENT_MARKER][:], dtype=bool)
        encoded = encoded[: self.n_rows] & self._committed[: encoded.shape[0]]
        return np.flatnonzero(encoded)

    @property
    def latent_model_id(self) -> str | None:
        """The model id the main latents were written with, or None if there are no latents."""
        return self.latent_model_id_of(LATENTS_GROUP)

    def latent_model_id_of(self, group: str) -> str | None:
        """The model id the latents of ``group`` were written with, or None if there are none."""
        self._check_latent_group(group)
        if group not in self._group.group_keys():
            return None
        return self._group[group].attrs.get("model_id")

    def write_latents(
        self,
        rows: Iterable[int],
        mu: np.ndarray,
        logvar: np.ndarray,
        *,
        model_id: str | None = None,
        group: str = LATENTS_GROUP,
    ) -> None:
        """Store the encoder's mean and log-variance for committed rows.

        Parameters
        ----------
        rows : int array (k,)
            Committed rows, unique.
        mu, logvar : arrays (k, frame_shape[0], H)
            Finite; H must match the latents already stored.
        model_id : str, optional
            Identifies the model (e.g. its checkpoint hash). Latents of different models never
            mix: call :meth:`clear_latents` before writing those of a new model.
        group : str
            ``"latents"`` (the main model) or ``"latents_<name>"`` (another model's own place).

        Raises
        ------
        InputError
            On invalid rows or arrays, a latent size or model differing from the stored one,
            or a read-only handle.
        """
        self._check_writable()
        self._check_latent_group(group)
        rows = self._check_committed(rows, "rows")
        mu_shape = np.shape(mu)
        if len(mu_shape) != 3 or mu_shape[:2] != (rows.size, self.frame_shape[0]) or mu_shape[2] < 1:
            raise InputError(
                self.path, f"mu has shape {mu_shape}; expected ({rows.size}, {self.frame_shape[0]}, H)"
            )
        mu = _as_finite_float32(mu, self.path, "mu", mu_shape)
        logvar = _as_finite_float32(logvar, self.path, "logvar", mu_shape)
        if model_id is not None and (not isinstance(model_id, str) or not model_id):
            raise InputError(self.path, f"model_id must be a non-empty str, got {model_id!r}")
        latents = self._require_latents(mu_shape[2], model_id, group)
        write_rows(latents["mu"], rows, mu)
        write_rows(latents["logvar"], rows, logvar)
        write_rows(latents[LATENT_MARKER], rows, np.ones(rows.size, dtype=bool))
        self._write_attrs({})

    def read_latents(self, rows: Iterable[int], group: str = LATENTS_GROUP) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, logvar)``, float32 (k, frame_shape[0], H), of committed rows with latents in ``group``."""
        rows = self._check_committed(rows, "rows")
        missing = np.setdiff1d(rows, self.latent_rows(group))
        if missing.size:
            raise InputError(self.path, f"rows {missing[:10].tolist()} have no latents in {group}/")
        latents = self._group[group]
        return (
            read_rows(latents["mu"], rows),
            read_rows(latents["logvar"], rows),
        )

    def clear_latents(self, group: str = LATENTS_GROUP) -> None:
        """Delete the latents of ``group``, e.g. before encoding with a retrained model."""
        self._check_writable()
        self._check_latent_group(group)
        if group in self._group.group_keys():
            del self._group[group]
        self._write_attrs({})

    # ------------------------------------------------------------------ internals

    def _check_writable(self) -> None:
        if not self.writable:
            raise InputError(self.path, "is opened read-only; use FrameStore.open(path, writable=True)")

    def _write_attrs(self, values: dict) -> None:
        # One metadata write; ``attrs.update`` would rewrite zarr.json once per key.
        self._group.update_attributes({**values, "package_version": __version__, "updated": utc_now()})

    def _read_committed(self, name: str) -> np.ndarray:
        return self._arrays[name][: self.n_rows][self._committed]

    def _check_committed(self, rows: Iterable[int], name: str) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise InputError(self.path, f"{name} must be a 1-D integer array, got shape {rows.shape}")
        if np.unique(rows).size != rows.size:
            raise InputError(self.path, f"{name} holds repeated rows")
        outside = rows[(rows < 0) | (rows >= self.n_rows)]
        if outside.size:
            raise InputError(self.path, f"{name} {outside[:10].tolist()} are outside 0..{self.n_rows - 1}")
        uncommitted = rows[~self._committed[rows]]
        if uncommitted.size:
            raise InputError(self.path, f"{name} {uncommitted[:10].tolist()} hold no committed trial")
        return rows.astype(np.int64)

    def _reserve_rows(self, n_needed: int) -> np.ndarray:
        """Rows for ``n_needed`` new trials: uncommitted rows first (left by a killed run), then new ones."""
        free = np.flatnonzero(~self._committed)[:n_needed]
        n_grow = n_needed - free.size
        if n_grow:
            new_size = self.n_rows + n_grow
            # The marker is resized last so that it never covers rows another array lacks.
            for name in self._row_arrays:
                array = self._arrays[name]
                array.resize((new_size, *array.shape[1:]))
            self._arrays[COMMIT_ARRAY].resize((new_size,))
            grown = np.arange(self.n_rows, new_size)
            self._committed = np.concatenate([self._committed, np.zeros(n_grow, dtype=bool)])
            free = np.concatenate([free, grown])
        return free.astype(np.int64)

    def _commit(self, rows: np.ndarray) -> None:
        write_rows(self._arrays[COMMIT_ARRAY], rows, np.ones(rows.size, dtype=bool))
        self._committed[rows] = True

    def _check_latent_group(self, group: str) -> None:
        if not isinstance(group, str) or not _LATENT_GROUP_NAME.match(group):
            raise InputError(self.path, f"{group!r} is not a latent group (latents or latents_<name>)")

    def _require_latents(self, latent_size: int, model_id: str | None, group: str) -> zarr.Group:
        if group in self._group.group_keys():
            latents = self._group[group]
            stored_size = latents["mu"].shape[2]
            if stored_size != latent_size:
                raise InputError(
                    self.path,
                    f"stored latents have {stored_size} dimensions, these have {latent_size}; "
                    "call clear_latents() first",
                )
            stored_model = latents.attrs.get("model_id")
            if stored_model != model_id:
                raise InputError(
                    self.path,
                    f"stored latents come from model {stored_model}, these from {model_id}; "
                    "call clear_latents() first",
                )
        else:
            latents = self._group.create_group(group, attributes={"model_id": model_id})
            per_frame = (self.frame_shape[0], latent_size)
            rows_per_chunk = max(1, LATENT_CHUNK_BYTES // (4 * math.prod(per_frame)))
            for name in ("mu", "logvar"):
                latents.create_array(
                    name,
                    shape=(0, *per_frame),
                    chunks=(rows_per_chunk, *per_frame),
                    dtype="float32",
                    fill_value=np.nan,
                )
            latents.create_array(
                LATENT_MARKER, shape=(0,), chunks=(ROW_CHUNK,), dtype="bool", fill_value=False
            )
        # Marker last, as for trials: a row never counts as encoded before its data exists.
        for name in ("mu", "logvar", LATENT_MARKER):
            array = latents[name]
            if array.shape[0] < self.n_rows:
                array.resize((self.n_rows, *array.shape[1:]))
        return latents


def _open_group(where: str, mode: str) -> zarr.Group:
    # Writers never trust consolidated metadata: a stale snapshot would hide rows and let them
    # be overwritten.
    use_consolidated = None if mode == "r" else False
    try:
        return zarr.open_group(where, mode=mode, zarr_format=3, use_consolidated=use_consolidated)
    except FileNotFoundError as err:
        raise InputError(where, "no frame store here") from err
    except (zarr.errors.ContainsArrayError, FileExistsError, NotADirectoryError) as err:
        raise InputError(where, f"is not a frame store: {err}") from err


def _complete_layout(group: zarr.Group, frame_shape: tuple[int, ...], label_width: int) -> None:
    """Create the empty arrays the group lacks (all of them for a new store)."""
    specs = {
        "frames": dict(
            shape=(0, *frame_shape),
            chunks=(1, *frame_shape),
            dtype="float32",
            fill_value=np.nan,
            compressors=FRAMES_COMPRESSOR,
        ),
        "labels": dict(
            shape=(0, label_width), chunks=(ROW_CHUNK, label_width), dtype="float32", fill_value=np.nan
        ),
        "subject": dict(shape=(0,), chunks=(ROW_CHUNK,), dtype="int32", fill_value=-1),
        "trial": dict(shape=(0,), chunks=(ROW_CHUNK,), dtype="int32", fill_value=-1),
        SPLIT_ARRAY: dict(shape=(0,), chunks=(ROW_CHUNK,), dtype="int8", fill_value=NO_SPLIT),
        "source": dict(shape=(0,), chunks=(ROW_CHUNK,), dtype=str),
        "source_sha256": dict(shape=(0,), chunks=(ROW_CHUNK,), dtype=str),
        COMMIT_ARRAY: dict(shape=(0,), chunks=(ROW_CHUNK,), dtype="bool", fill_value=False),
    }
    present = set(group.array_keys())
    # The marker comes last so that a store holding it holds every other array.
    for name, spec in specs.items():
        if name not in present:
            array = group.create_array(name, **spec)
            if COMMIT_ARRAY in present:  # a store written before the array existed: its rows read -1
                array.resize((group[COMMIT_ARRAY].shape[0], *array.shape[1:]))

"""Row-level I/O of a frame store: the writer lock, row writes and reads in contiguous runs,
frame chunks encoded before the lock is taken, and the checks that turn a caller's values into
row arrays."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.store.layout import MANAGED_ATTRS, NO_SPLIT, STORE_FORMAT

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


@contextmanager
def writer_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive right to change the rows of the store at ``path``; waits for the current holder.

    Threads of one process share a lock per store; local stores add an ``fcntl`` lock on
    ``<store>.lock`` so that two processes (two flow runs) take turns too. Remote (fsspec)
    stores get the in-process lock only: run one writing flow per remote store.
    """
    where = os.fspath(path)
    key = os.path.abspath(where.removeprefix("file://")) if is_local(where) else where
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
    with thread_lock:
        if not is_local(where):
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


def check_managed_attrs(values: dict, where: str, config_hash: str) -> None:
    """Refuse attrs that contradict what the store records itself (repeating it is harmless)."""
    own = {"config_hash": config_hash, "package_version": __version__, "store_format": STORE_FORMAT}
    conflicting = sorted(key for key in MANAGED_ATTRS if key in values and values[key] != own.get(key))
    if conflicting:
        raise InputError(where, f"attrs set {conflicting}, which the store manages itself")


def as_row_vector(values: Any, where: str, name: str, n_expected: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != n_expected:
        raise InputError(where, f"{name} has shape {array.shape}; expected ({n_expected},)")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise InputError(where, f"{name} has dtype {array.dtype}; expected integers")
    info = np.iinfo(np.int32)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise InputError(where, f"{name} holds values outside the int32 range")
    return array.astype(np.int32)


def split_parts(values: Any, where: str, n_expected: int) -> np.ndarray:
    if values is None:
        return np.full(n_expected, NO_SPLIT, dtype=np.int8)
    parts = as_row_vector(values, where, "split", n_expected)
    if not np.isin(parts, (NO_SPLIT, 0, 1, 2)).all():
        raise InputError(where, "split holds parts other than 0 (train), 1 (validation), 2 (test) or -1")
    return parts.astype(np.int8)


def per_row_names(values: str | Sequence[str], name: str, n_expected: int, where: str) -> list[str]:
    """One string for every row: a single str repeated, or a sequence of ``n_expected`` str."""
    if isinstance(values, str):
        return [values] * n_expected
    names = list(values) if isinstance(values, Sequence | np.ndarray) else None
    if names is None or len(names) != n_expected or not all(isinstance(v, str) for v in names):
        raise InputError(where, f"{name} must be a str or {n_expected} str (one per trial), got {values!r}")
    return names


def as_finite_float32(values: Any, where: str, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
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


def encoded_frame_chunks(array: zarr.Array, values: np.ndarray) -> list[bytes] | None:
    """Each row of ``values`` encoded as ``array`` stores a chunk, or None when its codecs are
    not the ones :func:`_frame_codec` knows (then zarr encodes them as it writes)."""
    codec = _frame_codec(array)
    if codec is None:
        return None
    little_endian = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return [codec.encode(np.ascontiguousarray(row)) for row in little_endian]


def store_chunks(array: zarr.Array, rows: np.ndarray, chunks: list[bytes]) -> None:
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


def as_str_array(array: np.ndarray) -> np.ndarray:
    # zarr returns numpy's StringDType, which cannot be cast to a fixed-width str dtype directly.
    return np.asarray(array.tolist(), dtype=str)

"""The frame store: one zarr v3 group holding every trial's frames, labels and provenance.

Its layout and attributes are described in :mod:`pipeline.store.layout`; row I/O is in
:mod:`pipeline.store.rows` and the latent groups in :mod:`pipeline.store.latents`.

Crash safety rests on ordering: rows are reserved by resizing (data arrays first, the
``committed`` marker last), data is written by index, and the marker is set last. A killed run
leaves reserved rows uncommitted; they are invisible to every reader and the next run reuses
them, so re-running an ingest never duplicates a trial. Writers of one store take turns through
:func:`pipeline.store.rows.writer_lock` (threads of one process, and processes on one machine for
local stores).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import zarr

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.files import utc_now
from pipeline.store.latents import LatentSets
from pipeline.store.layout import (
    COMMIT_ARRAY,
    NO_SPLIT,
    ROW_ARRAYS,
    SHA256_HEX,
    SPLIT_ARRAY,
    STORE_FORMAT,
    complete_layout,
    open_group,
)
from pipeline.store.rows import (
    as_finite_float32,
    as_row_vector,
    as_str_array,
    check_managed_attrs,
    encoded_frame_chunks,
    per_row_names,
    read_rows,
    split_parts,
    store_chunks,
    write_rows,
    write_rows_together,
    writer_lock,
)
from pipeline.validators import check_json_native


class FrameStore(LatentSets):
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
        shas = as_str_array(self._arrays["source_sha256"][:capacity])[rows]
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
        check_managed_attrs(attrs, where, config_hash)
        frame_shape = tuple(frame_shape)
        if not frame_shape or not all(isinstance(n, int | np.integer) and n > 0 for n in frame_shape):
            raise InputError(where, f"frame_shape must be positive ints, got {frame_shape}")
        frame_shape = tuple(int(n) for n in frame_shape)
        if not isinstance(label_width, int | np.integer) or label_width < 1:
            raise InputError(where, f"label_width must be a positive int, got {label_width!r}")

        # Two runs creating one store at once must not both see it empty.
        with writer_lock(where):
            group = open_group(where, mode="a")
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
            complete_layout(group, frame_shape, int(label_width))
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
        group = open_group(where, mode="r+" if writable else "r")
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
        attrs = dict(open_group(where, mode="r").attrs)
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
        return as_str_array(self._read_committed("source"))

    @property
    def source_sha256(self) -> np.ndarray:
        """str (n_committed,): hex SHA-256 of each committed trial's source file."""
        return as_str_array(self._read_committed("source_sha256"))

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
        check_managed_attrs(values, self.path, self.config_hash)
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
        frames = as_finite_float32(frames, where, "frames", (None, *self.frame_shape))
        n_trials = frames.shape[0]
        sources = per_row_names(source, "source", n_trials, self.path)
        shas = per_row_names(source_sha256, "source_sha256", n_trials, self.path)
        for name, sha in zip(sources, shas, strict=True):
            if not name:
                raise InputError(self.path, f"source must be a non-empty str, got {name!r}")
            if not SHA256_HEX.fullmatch(sha):
                raise InputError(name, f"source_sha256 must be 64 lowercase hex digits, got {sha!r}")
        labels = as_finite_float32(labels, where, "labels", (n_trials, self.label_width))
        subject = as_row_vector(subject, where, "subject", n_trials)
        trial = as_row_vector(trial, where, "trial", n_trials)
        split = split_parts(split, where, n_trials)
        if n_trials and trial.min() < 0:
            raise InputError(where, "trial holds negative indices")
        if len(set(zip(shas, trial.tolist(), strict=True))) != n_trials:
            raise InputError(where, "trial holds repeated indices; each (file, trial) must be unique")

        # Compressing is most of a write's work; done before taking the lock, writers of other
        # files (parallel tasks) compress side by side and only take turns to store the bytes.
        frame_chunks = encoded_frame_chunks(self._arrays["frames"], frames)
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
                store_chunks(self._arrays["frames"], rows, [frame_chunks[i] for i in np.flatnonzero(new)])
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

"""The latent groups of a frame store (``latents/`` and ``latents_<protocol>/``): μ and log σ²
of every encoded row, and the marker that says which rows are encoded by which model."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import zarr

from pipeline.errors import InputError
from pipeline.store.layout import (
    LATENT_CHUNK_BYTES,
    LATENT_GROUP_NAME,
    LATENT_MARKER,
    LATENTS_GROUP,
    ROW_CHUNK,
)
from pipeline.store.rows import as_finite_float32, read_rows, write_rows


class LatentSets:
    """μ and log σ² per encoded row, kept beside the frames; mixed into :class:`FrameStore`."""

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
        mu = as_finite_float32(mu, self.path, "mu", mu_shape)
        logvar = as_finite_float32(logvar, self.path, "logvar", mu_shape)
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

    def _check_latent_group(self, group: str) -> None:
        if not isinstance(group, str) or not LATENT_GROUP_NAME.match(group):
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

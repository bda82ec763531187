"""Frames in, latents out: reading trials at the model's scale, encoding them (into the store,
resumably), and the reconstruction error of a subset of factors.

EEG stores and image stores share every function here: an image is a trial of one frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.models.vae import BetaVAE, check_keep_mask
from pipeline.progress import Progress, report
from pipeline.store.frames import FrameStore
from pipeline.store.layout import LATENTS_GROUP
from pipeline.threads import keep_fair_share
from pipeline.validators import check_positive_int

Normaliser = Callable[[np.ndarray], np.ndarray]


def frames_shape(frames: Any) -> tuple[int, ...]:
    """The shape (n_trials, n_frames, C, H, W) of a frame array, refused unless it is one."""
    shape = getattr(frames, "shape", None)
    if shape is None or len(shape) != 5 or min(shape) < 1:
        raise InputError("frames", f"shape {shape}; expected a non-empty array (n_trials, n_frames, C, H, W)")
    return tuple(int(size) for size in shape)


def check_rows(rows: Any, n_trials: int, where: str, allow_empty: bool = False) -> np.ndarray:
    """``rows`` as int64 trial indices into a frame array of ``n_trials`` trials, each once."""
    rows = np.asarray([] if rows is None else rows)
    if rows.size == 0:
        if allow_empty:
            return np.zeros(0, dtype=np.int64)
        raise InputError(where, "is empty; at least one trial is needed")
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise InputError(
            where, f"shape {rows.shape}, dtype {rows.dtype}; expected a 1-D array of trial indices"
        )
    if rows.min() < 0 or rows.max() >= n_trials:
        raise InputError(
            where, f"indices span [{rows.min()}, {rows.max()}]; the frame array has {n_trials} trials"
        )
    if np.unique(rows).size != rows.size:
        raise InputError(where, "lists a trial more than once")
    return rows.astype(np.int64)


def read_frames(frames: Any, rows: np.ndarray, normalise: Normaliser | None = None) -> np.ndarray:
    """Read trials ``rows`` one by one from ``frames`` and bring them to the model's scale.

    Parameters
    ----------
    frames : array-like (n_trials, n_frames, C, H, W)
        numpy or zarr array; only the listed trials are read.
    rows : int array (k,)
        Trial indices.
    normalise : callable, optional
        Maps the float32 block (k, n_frames, C, H, W) to the model's input scale.

    Returns
    -------
    numpy.ndarray float32 (k, n_frames, C, H, W)
    """
    shape = frames_shape(frames)
    rows = check_rows(rows, shape[0], "rows")
    block = np.stack([np.asarray(frames[int(row)], dtype=np.float32) for row in rows])
    if block.shape[1:] != shape[1:]:
        raise InputError("frames", f"a trial read as shape {block.shape[1:]}; expected {shape[1:]}")
    finite = np.isfinite(block).reshape(len(rows), -1).all(axis=1)
    if not finite.all():
        raise InputError(f"frames[{int(rows[np.argmin(finite)])}]", "contains NaN or infinite values")
    if normalise is None:
        return block
    normalised = np.asarray(normalise(block), dtype=np.float32)
    if normalised.shape != block.shape:
        raise InputError("normalise", f"returned shape {normalised.shape} for a block of shape {block.shape}")
    if not np.isfinite(normalised).all():
        raise InputError("normalise", f"returned NaN or infinite values for trials {rows.tolist()}")
    return normalised


def _check_model(model: Any) -> None:
    if not isinstance(model, BetaVAE):
        raise InputError("model", f"expected a BetaVAE, got {type(model).__name__}")


def iter_encode_frames(
    model: BetaVAE,
    frames: Any,
    rows: Any,
    batch_size: int = 256,
    normalise: Normaliser | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Encode the frames of trials ``rows`` group by group, reading only those trials.

    Yields
    ------
    (rows, mu, logvar)
        The group's trial indices (k,) and float32 arrays (k, n_frames, n_latents), so a caller
        can write each group to the store as it comes. A group holds about ``batch_size``
        frames (at least one trial).
    """
    _check_model(model)
    check_positive_int("batch_size", batch_size)
    shape = frames_shape(frames)
    if shape[2:] != model.input_shape:
        raise InputError("frames", f"images are {shape[2:]}; the model expects {model.input_shape}")
    rows = check_rows(rows, shape[0], "rows")
    device = next(model.parameters()).device
    trials_per_group = max(1, batch_size // shape[1])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, rows.size, trials_per_group):
                keep_fair_share()
                group = rows[start : start + trials_per_group]
                block = read_frames(frames, group, normalise)
                mu, logvar = model.encode(torch.from_numpy(block.reshape(-1, *shape[2:])).to(device))
                yield (
                    group,
                    mu.float().cpu().numpy().reshape(group.size, shape[1], -1),
                    logvar.float().cpu().numpy().reshape(group.size, shape[1], -1),
                )
    finally:
        model.train(was_training)


def encode_frames(*encode_args: Any, **encode_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log-variances of every frame of trials ``rows``, all at once.

    The arguments are :func:`iter_encode_frames`'s.

    Returns
    -------
    (mu, logvar) : float32 arrays (len(rows), n_frames, n_latents), in the order of ``rows``.
    """
    parts = list(iter_encode_frames(*encode_args, **encode_kwargs))
    return np.concatenate([mu for _, mu, _ in parts]), np.concatenate([logvar for _, _, logvar in parts])


def encode_store(
    store: FrameStore,
    model: BetaVAE,
    model_id: str,
    rows: Iterable[int] | None = None,
    *,
    frames: Any = None,
    normalise: Normaliser | None = None,
    batch_size: int = 1024,
    progress: Progress | None = None,
    group: str = LATENTS_GROUP,
    unit: str = "trials",
) -> int:
    """Write μ and log σ² of every frame of trials ``rows`` that this model has not encoded yet.

    Written trial group by trial group, so a killed run resumes where it stopped. Latents of
    another model (or written without a model id) are cleared first.

    Parameters
    ----------
    store : FrameStore
        A writable store (EEG trials or images).
    model : BetaVAE
    model_id : str
        Identifies the weights (``pipeline.models.learn.checkpoint_model_id``).
    rows : int array-like, optional
        Committed rows to encode; every committed row if None.
    frames : array-like, optional
        ``store.frames`` (the default) or frames of the same rows held in memory.
    normalise : callable, optional
        The model-input transform (an EEG protocol's band normalisation; none for images).
    batch_size : int
        Frames per encoder pass.
    progress : callable, optional
        ``progress(stage, done, total)`` over the trials encoded (see :mod:`pipeline.progress`).
    group : str
        The store's latent group (a protocol's or another seed's; see ``pipeline.models.learn.latent_set``).
    unit : str
        What a row is, for the progress display (``"trials"``, ``"images"``).

    Returns
    -------
    int
        Number of trials encoded now: 0 when every row already has this model's latents.
    """
    _check_model(model)
    if not isinstance(model_id, str) or not model_id:
        raise InputError("model_id", f"must be a non-empty str, got {model_id!r}")
    if store.latent_model_id_of(group) != model_id:
        store.clear_latents(group)
    if rows is None:
        rows = store.committed_rows()
    rows = rows if isinstance(rows, np.ndarray) else np.fromiter(rows, dtype=np.int64)
    todo = np.setdiff1d(rows, store.latent_rows(group))
    if todo.size == 0:
        return 0
    stage = f"encoding ({unit})"
    done = 0
    report(progress, stage, done, todo.size)
    source = store.frames if frames is None else frames
    for encoded, mu, logvar in iter_encode_frames(model, source, todo, batch_size, normalise):
        store.write_latents(encoded, mu, logvar, model_id=model_id, group=group)
        done += encoded.size
        report(progress, stage, done, todo.size)
    return int(todo.size)


def masked_reconstruction_mse(
    model: BetaVAE,
    frames: Any,
    rows: Any,
    keep_mask: np.ndarray,
    *,
    normalise: Normaliser | None = None,
    pixel_mask: np.ndarray | None = None,
    mu: np.ndarray | None = None,
    trials_per_read: int = 16,
) -> float:
    """Mean squared error per counted pixel of the frames of trials ``rows``, decoded from μ with
    the factors outside ``keep_mask`` set to zero.

    Parameters
    ----------
    model : BetaVAE
    frames : array-like (n_trials, n_frames, C, H, W)
        The store's frames, or frames held in memory; the targets, after ``normalise``.
    rows : int array-like
        The trials to score.
    keep_mask : bool array (n_latents,)
    normalise : callable, optional
        The model-input transform; the error is in its units.
    pixel_mask : bool array (H, W), optional
        The pixels that carry data (the scalp); the others are not counted. All by default.
    mu : float array (len(rows), n_frames, n_latents), optional
        The frames' stored posterior means, decoded without encoding again; encoded if None.
    trials_per_read : int
        Trials decoded at a time.
    """
    _check_model(model)
    rows = np.asarray(rows)
    if rows.ndim != 1 or rows.size == 0:
        raise InputError("rows", f"shape {rows.shape}; expected a non-empty 1-D array of rows")
    if mu is not None and np.shape(mu)[:1] + np.shape(mu)[2:] != (rows.size, model.n_latents):
        raise InputError("mu", f"shape {np.shape(mu)}; expected ({rows.size}, n_frames, {model.n_latents})")
    keep = torch.from_numpy(check_keep_mask(keep_mask, model.n_latents).astype(np.float32))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, rows.size, trials_per_read):
            block = read_frames(frames, rows[start : start + trials_per_read], normalise)
            targets = torch.from_numpy(block.reshape(-1, *block.shape[2:]))
            if mu is None:
                means = model.encode(targets.to(device))[0]
            else:
                means = torch.from_numpy(np.asarray(mu[start : start + trials_per_read], dtype=np.float32))
                means = means.reshape(-1, model.n_latents).to(device)
            error = (model.decode(means * keep.to(device, means.dtype)).float().cpu() - targets) ** 2
            counted = error if pixel_mask is None else error[..., torch.from_numpy(pixel_mask.copy())]
            total += float(counted.sum(dtype=torch.float64))
            count += int(counted.numel())
    return total / count

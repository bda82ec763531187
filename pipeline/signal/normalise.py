"""Per-band standardisation of frames, fitted on training trials only.

The store keeps unnormalised log band power; the VAE reads ``(x - mean_band) / std_band``
inside the scalp (the convex hull of the electrodes) and exactly 0 outside, so the arbitrary
out-of-hull fill never reaches the model. The statistics come from the training trials
alone, and record which split they came from so that a report can show there was no leakage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError


@dataclass(frozen=True, eq=False)
class BandNormalisation:
    """Mean and standard deviation of each band over the in-hull pixels of the training frames.

    Attributes
    ----------
    mean, std : float64 arrays (n_bands,)
        Population statistics (ddof=0), so :meth:`apply` gives exactly mean 0 and standard
        deviation 1 per band on the frames they were fitted on.
    fitted_on : dict
        JSON-native description of the frames used, e.g.
        ``{"split": "train", "protocol": "trial", "seed": 0, "n_trials": 1024}``.
    """

    mean: np.ndarray
    std: np.ndarray
    fitted_on: dict

    def __post_init__(self) -> None:
        mean = np.array(self.mean, dtype=np.float64)
        std = np.array(self.std, dtype=np.float64)
        if mean.ndim != 1 or mean.size == 0 or std.shape != mean.shape:
            raise InputError(
                "BandNormalisation", f"mean {mean.shape} and std {std.shape} must both have shape (n_bands,)"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or np.any(std <= 0):
            raise InputError(
                "BandNormalisation",
                f"needs finite means and positive finite stds, got mean {mean.tolist()}, std {std.tolist()}",
            )
        for array in (mean, std):
            array.setflags(write=False)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "fitted_on", _json_native(self.fitted_on, "fitted_on"))

    @property
    def n_bands(self) -> int:
        return self.mean.size

    def to_dict(self) -> dict:
        """JSON-native form, as stored in the zarr attrs and report.json."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "fitted_on": dict(self.fitted_on)}

    @classmethod
    def from_dict(cls, values: dict) -> BandNormalisation:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        InputError
            If a key is missing or the values are invalid.
        """
        missing = {"mean", "std", "fitted_on"} - set(values)
        if missing:
            raise InputError("BandNormalisation", f"missing key(s) {sorted(missing)}")
        return cls(mean=values["mean"], std=values["std"], fitted_on=values["fitted_on"])

    def apply(self, frames: np.ndarray, mask: np.ndarray, where: str = "frames") -> np.ndarray:
        """Standardise each band inside the hull; exactly 0 outside.

        Parameters
        ----------
        frames : float array (..., n_bands, H, W)
            e.g. (n_trials, 63, 3, 32, 32) or one trial's (63, 3, 32, 32).
        mask : bool array (H, W)
            True inside the convex hull of the electrodes (``ImagingOperator.mask``).
        where : str
            Name of the array used in error messages.

        Returns
        -------
        float32 array, the shape of ``frames``
        """
        values = np.asarray(frames)
        if values.ndim < 3 or values.shape[-3] != self.n_bands:
            raise InputError(where, f"has shape {values.shape}; expected (..., {self.n_bands}, H, W)")
        in_hull = _check_mask(mask, values.shape[-2:])
        band_shape = (self.n_bands, 1, 1)
        normalised = values.astype(np.float32)  # a copy, so the caller's frames are untouched
        normalised -= self.mean.astype(np.float32).reshape(band_shape)
        normalised /= self.std.astype(np.float32).reshape(band_shape)
        normalised[..., ~in_hull] = 0.0
        return normalised


def fit_band_normalisation(
    frames: Any,
    mask: np.ndarray,
    fitted_on: dict,
    trials: Sequence[int] | np.ndarray | None = None,
    where: str = "frames",
) -> BandNormalisation:
    """Per-band mean and standard deviation over the in-hull pixels of the given trials.

    One streaming pass, trial by trial, in float64: each trial's mean and sum of squared
    deviations are merged with Chan et al.'s pairwise update, so memory stays at one trial and
    the result matches the one-shot statistics to rounding.

    Parameters
    ----------
    frames : array-like (n_trials, n_windows, n_bands, H, W)
        A numpy array or anything indexed the same way trial by trial (e.g. a zarr array);
        only the trials used are read.
    mask : bool array (H, W)
        True inside the convex hull of the electrodes.
    fitted_on : dict
        JSON-native description of the split (protocol, seed, ...). ``n_trials`` is set to the
        number of trials used; if given, it must agree.
    trials : sequence of int, optional
        Rows of ``frames`` to use (the training trials); all rows when omitted.
    where : str
        Name of the array used in error messages.

    Returns
    -------
    BandNormalisation

    Raises
    ------
    InputError
        If shapes disagree, ``trials`` is empty, out of range or repeated, a used trial holds
        NaN or Inf, a band is constant, or ``fitted_on`` is not JSON-native.
    """
    shape = tuple(getattr(frames, "shape", ()))
    if len(shape) != 5:
        raise InputError(where, f"has shape {shape}; expected (n_trials, n_windows, n_bands, H, W)")
    in_hull = _check_mask(mask, shape[-2:])
    n_bands = shape[2]
    indices = np.arange(shape[0]) if trials is None else np.asarray(trials)
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise InputError("trials", f"expected a non-empty 1-D sequence of trial indices, got {trials!r}")
    if indices.min() < 0 or indices.max() >= shape[0]:
        raise InputError(
            "trials", f"indices must lie in [0, {shape[0]}); got {indices.min()}..{indices.max()}"
        )
    if len(np.unique(indices)) != indices.size:
        raise InputError("trials", "repeats a trial index")
    description = _json_native(fitted_on, "fitted_on")
    if description.get("n_trials", indices.size) != indices.size:
        raise InputError(
            "fitted_on", f"says n_trials = {description['n_trials']} but {indices.size} trials were given"
        )
    description["n_trials"] = int(indices.size)

    count = 0
    mean = np.zeros(n_bands)
    squared_deviations = np.zeros(n_bands)
    for index in indices:
        trial = np.asarray(frames[int(index)], dtype=np.float64)
        # (n_windows, n_bands, H, W) -> (n_bands, n_windows * n_in_hull)
        pixels = trial[:, :, in_hull].transpose(1, 0, 2).reshape(n_bands, -1)
        if not np.isfinite(pixels).all():
            raise InputError(where, f"trial {int(index)} contains NaN or Inf inside the hull")
        trial_count = pixels.shape[1]
        trial_mean = pixels.mean(axis=1)
        trial_squared = np.sum((pixels - trial_mean[:, None]) ** 2, axis=1)
        total = count + trial_count
        delta = trial_mean - mean
        mean = mean + delta * (trial_count / total)
        squared_deviations += trial_squared + delta**2 * (count * trial_count / total)
        count = total

    std = np.sqrt(squared_deviations / count)
    # Relative to the level, since a constant band leaves rounding-sized deviations, not zero.
    constant = np.flatnonzero(~(std > 1e-12 * (1.0 + np.abs(mean)))).tolist()
    if constant:
        raise InputError(where, f"band(s) {constant} are constant inside the hull; cannot standardise")
    return BandNormalisation(mean=mean, std=std, fitted_on=description)


def _check_mask(mask: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    in_hull = np.asarray(mask)
    if in_hull.dtype != bool:
        raise InputError("mask", f"has dtype {in_hull.dtype}; expected bool")
    if in_hull.shape != tuple(image_shape):
        raise InputError("mask", f"has shape {in_hull.shape}; the frames' images are {tuple(image_shape)}")
    if not in_hull.any():
        raise InputError("mask", "selects no pixel")
    return in_hull


def _json_native(values: dict, where: str) -> dict:
    if not isinstance(values, dict):
        raise InputError(where, f"expected a dict, got {type(values).__name__}")
    try:
        return json.loads(json.dumps(values))
    except (TypeError, ValueError) as error:
        raise InputError(where, f"is not JSON-native ({error})") from error

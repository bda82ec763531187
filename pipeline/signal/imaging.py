"""Band-power images: electrode values -> 32x32 scalp maps through one linear operator.

Clough-Tocher interpolation on a fixed triangulation is linear in the values at the
electrodes, so interpolating the ``n_electrodes`` unit vectors once gives a matrix ``W``
(n_pixels, n_electrodes) with ``image = W @ values`` for every frame. Turning a whole data set
into images is then a single matrix product instead of one triangulation per frame.

Image orientation: row 0 is the front of the head (largest projected y, the nose at the
top) and column 0 is the left (smallest x, left hemisphere on the left), so a value only at
Fp1 lights the upper-left of the image and one at O2 the lower-right.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.interpolate import CloughTocher2DInterpolator
from scipy.spatial import QhullError

from pipeline.errors import InputError
from pipeline.signal.config import PreprocessConfig
from pipeline.signal.montage import azimuthal_equidistant, electrode_positions_3d
from pipeline.sources.trials import DEAP_CHANNELS

_PROJECTIONS = ("azimuthal-equidistant",)
_INTERPOLATIONS = ("clough-tocher",)
_DEFAULT_CONFIG = PreprocessConfig()


@dataclass(frozen=True, eq=False)
class ImagingOperator:
    """The precomputed interpolation from electrode values to a square image.

    Attributes
    ----------
    weights : float64 array (grid_size * grid_size, n_electrodes)
        ``W``: row ``r * grid_size + c`` holds the weights of pixel (row r, column c). Rows of
        pixels outside the convex hull of the electrodes are exactly 0.
    mask : bool array (grid_size, grid_size)
        True for pixels inside the convex hull (where the interpolation is defined).
    grid_x : float64 array (grid_size,)
        Projected x of each column, increasing (left to right).
    grid_y : float64 array (grid_size,)
        Projected y of each row, decreasing (front to back).
    positions_2d : float64 array (n_electrodes, 2)
        Projected electrode positions the operator was built from.
    electrode_pixels : float64 array (n_electrodes, 2)
        Each electrode's fractional (row, column) on the grid, for sampling images at electrodes.

    The arrays are read-only, so an operator can be shared (it is cached per configuration).
    """

    weights: np.ndarray
    mask: np.ndarray
    grid_x: np.ndarray
    grid_y: np.ndarray
    positions_2d: np.ndarray
    electrode_pixels: np.ndarray

    @property
    def grid_size(self) -> int:
        return self.mask.shape[0]

    @property
    def n_electrodes(self) -> int:
        return self.weights.shape[1]

    def to_frames(self, band_power: np.ndarray, where: str = "band_power") -> np.ndarray:
        """Images of every window and band, as one matrix product over all frames.

        Parameters
        ----------
        band_power : float array (n_trials, n_windows, n_electrodes, n_bands)
            Values at the electrodes (e.g. the output of
            :func:`pipeline.signal.bands.band_log_power`), electrodes in the operator's order.
        where : str
            Name of the array (or its source file) used in error messages.

        Returns
        -------
        float32 array (n_trials, n_windows, n_bands, grid_size, grid_size)
            0 outside the convex hull of the electrodes.

        Raises
        ------
        InputError
            If the array has the wrong shape or holds NaN or Inf.
        """
        values = np.asarray(band_power)
        if values.ndim != 4 or values.shape[2] != self.n_electrodes or 0 in values.shape:
            raise InputError(
                where,
                f"has shape {values.shape}; expected (n_trials, n_windows, {self.n_electrodes}, n_bands)",
            )
        if not np.isfinite(values).all():
            raise InputError(where, "contains NaN or Inf")
        n_trials, n_windows, _, n_bands = values.shape
        # float32 keeps the full DEAP image stack near 1 GB; W's entries are O(1), so the
        # product loses only float32 rounding.
        electrode_rows = np.ascontiguousarray(values.transpose(0, 1, 3, 2), dtype=np.float32)
        images = electrode_rows.reshape(-1, self.n_electrodes) @ self.weights.T.astype(np.float32)
        return images.reshape(n_trials, n_windows, n_bands, self.grid_size, self.grid_size)


def build_imaging_operator(positions_2d: np.ndarray, grid_size: int = 32) -> ImagingOperator:
    """Clough-Tocher interpolation operator on a square grid over the electrodes' bounding box.

    The grid spans the bounding box of the projected electrodes: ``grid_x`` runs from the
    smallest to the largest x, ``grid_y`` from the largest to the smallest y (see the module
    docstring for the orientation). The unit vectors of the electrodes are interpolated once
    with ``CloughTocher2DInterpolator(points, np.eye(n), tol=1e-12)``; pixels outside the
    convex hull, where the interpolant is undefined, get weight 0 and ``mask`` False. The
    outside is found by interpolating with NaN fill, so ``mask`` agrees with the interpolator
    exactly; the resulting ``W`` equals the one obtained with ``fill_value=0``.

    Parameters
    ----------
    positions_2d : float array (n_electrodes, 2)
        Projected positions, e.g. from :func:`pipeline.signal.montage.azimuthal_equidistant`.
    grid_size : int
        Pixels per side, at least 2.

    Returns
    -------
    ImagingOperator

    Raises
    ------
    InputError
        If the positions are malformed, repeated, collinear, or ``grid_size`` < 2.
    """
    positions = np.asarray(positions_2d, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2 or positions.shape[0] < 3:
        raise InputError("positions_2d", f"has shape {positions.shape}; expected (n_electrodes >= 3, 2)")
    if not np.isfinite(positions).all():
        raise InputError("positions_2d", "contains NaN or Inf")
    if len(np.unique(positions, axis=0)) < len(positions):
        raise InputError("positions_2d", "holds two electrodes at the same position")
    if isinstance(grid_size, bool) or not isinstance(grid_size, int | np.integer) or grid_size < 2:
        raise InputError("grid_size", f"is {grid_size!r}; expected an integer >= 2")
    low = positions.min(axis=0)
    high = positions.max(axis=0)
    if np.any(high - low <= 0):
        raise InputError("positions_2d", "all electrodes lie on one horizontal or vertical line")

    grid_size = int(grid_size)
    grid_x = np.linspace(low[0], high[0], grid_size)
    grid_y = np.linspace(high[1], low[1], grid_size)
    pixel_x, pixel_y = np.meshgrid(grid_x, grid_y)  # (row, column) indexing: rows vary in y
    pixels = np.column_stack([pixel_x.ravel(), pixel_y.ravel()])
    n_electrodes = len(positions)
    try:
        interpolator = CloughTocher2DInterpolator(
            positions, np.eye(n_electrodes), fill_value=np.nan, tol=1e-12
        )
    except QhullError as error:
        raise InputError("positions_2d", f"cannot be triangulated ({error})") from error
    weights = interpolator(pixels)
    outside = np.isnan(weights).any(axis=1)
    weights[outside] = 0.0

    scale = (grid_size - 1) / (high - low)
    electrode_pixels = np.column_stack(
        [(high[1] - positions[:, 1]) * scale[1], (positions[:, 0] - low[0]) * scale[0]]
    )
    # Rounding can put the extreme electrodes a hair outside the grid (e.g. column 31.000000000000004).
    np.clip(electrode_pixels, 0.0, grid_size - 1, out=electrode_pixels)
    arrays = {
        "weights": weights,
        "mask": ~outside.reshape(grid_size, grid_size),
        "grid_x": grid_x,
        "grid_y": grid_y,
        "positions_2d": positions.copy(),
        "electrode_pixels": electrode_pixels,
    }
    for array in arrays.values():
        array.setflags(write=False)
    return ImagingOperator(**arrays)


def deap_imaging_operator(config: PreprocessConfig = _DEFAULT_CONFIG) -> ImagingOperator:
    """The operator for DEAP's 32 channels under ``config`` (montage, projection, grid size).

    Deterministic, so it is built once per (montage, grid size) and cached.

    Raises
    ------
    InputError
        If the configuration names a projection or interpolation this module does not implement,
        or an unknown montage.
    """
    if config.projection not in _PROJECTIONS:
        raise InputError("PreprocessConfig", f"projection {config.projection!r} not one of {_PROJECTIONS}")
    if config.interpolation not in _INTERPOLATIONS:
        raise InputError(
            "PreprocessConfig", f"interpolation {config.interpolation!r} not one of {_INTERPOLATIONS}"
        )
    return _cached_deap_operator(config.montage, config.grid_size)


@lru_cache(maxsize=8)
def _cached_deap_operator(montage: str, grid_size: int) -> ImagingOperator:
    # Keyed on the fields that matter: PreprocessConfig itself is unhashable (its `extra` dict).
    positions_2d = azimuthal_equidistant(electrode_positions_3d(DEAP_CHANNELS, montage))
    return build_imaging_operator(positions_2d, grid_size)

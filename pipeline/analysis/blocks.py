"""Where on the scalp a latent factor acts: traversal, change per electrode, electrode blocks.

A factor is traversed by decoding seed latents with that one coordinate swept over a range of
values while the others keep the seeds' inferred values (the paper's traversal figures). The
change of each decoded pixel over the sweep is sampled at the electrodes' positions on the
image grid, and per band the electrodes whose change is large enough are grouped into blocks
that are connected on the montage's neighbour graph, named like the paper's
"C4-T8-P4-P8 Block".

Units: decoded frames are in the stored (normalised) band-power units, so a change is in
normalised band-power units per traversal range: with the default range [-3, 3] of a
standard-normal prior that is the effect of moving the factor by ±3 prior standard deviations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.errors import InputError

DEFAULT_TRAVERSAL_VALUES = np.linspace(-3.0, 3.0, 7)
CHANGE_STATISTICS: tuple[str, ...] = ("range", "std")


def traverse_factor(
    decode: Callable[[np.ndarray], np.ndarray],
    z_seeds: np.ndarray,
    factor: int,
    values: np.ndarray = DEFAULT_TRAVERSAL_VALUES,
) -> np.ndarray:
    """Decode the seeds with factor ``factor`` set to each of ``values``.

    Parameters
    ----------
    decode : callable
        Maps latents of shape (m, H), float32, to frames of shape (m, C, Hh, Ww).
    z_seeds : ndarray, shape (k, H)
        Inferred latents (for example the posterior means) of k seed frames.
    factor : int
        Index of the latent coordinate to sweep.
    values : ndarray, shape (n_values,)
        Values the coordinate takes, in latent (prior standard deviation) units.

    Returns
    -------
    ndarray of float32, shape (n_values, k, C, Hh, Ww)
        ``traversal[v, s]`` is seed s decoded with z_factor = values[v], others unchanged.
    """
    if not callable(decode):
        raise InputError("decode", "must be a callable mapping (m, H) latents to (m, C, H, W) frames")
    z_seeds = np.asarray(z_seeds)
    if z_seeds.ndim != 2 or 0 in z_seeds.shape or not np.all(np.isfinite(z_seeds)):
        raise InputError("z_seeds", f"shape {z_seeds.shape}; expected a finite, non-empty (k, H) array")
    n_seeds, n_factors = z_seeds.shape
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or not 0 <= factor < n_factors:
        raise InputError("factor", f"{factor!r}; expected an integer in [0, {n_factors})")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size < 2 or not np.all(np.isfinite(values)):
        raise InputError("values", f"shape {values.shape}; expected at least 2 finite traversal values")

    frames = []
    for value in values:
        latents = z_seeds.astype(np.float32)
        latents[:, factor] = value
        decoded = np.asarray(decode(latents), dtype=np.float32)
        if decoded.ndim != 4 or decoded.shape[0] != n_seeds:
            raise InputError("decode", f"returned shape {decoded.shape}; expected ({n_seeds}, C, H, W)")
        if frames and decoded.shape != frames[0].shape:
            raise InputError("decode", f"returned shape {decoded.shape}, earlier {frames[0].shape}")
        if not np.all(np.isfinite(decoded)):
            raise InputError("decode", f"returned NaN or infinite frames at z_{factor} = {value:g}")
        frames.append(decoded)
    return np.stack(frames)


def signed_change(
    decode: Callable[[np.ndarray], np.ndarray], z_seeds: np.ndarray, factor: int, extent: float = 3.0
) -> np.ndarray:
    """The signed effect of factor ``factor``: decoded at z = +extent minus at z = −extent.

    Averaged over the seeds, shape (C, Hh, Ww). Unlike :func:`electrode_change` it keeps the
    direction, so the effects of two models can be compared (a flipped sign is the same factor).
    """
    traversal = traverse_factor(decode, z_seeds, factor, np.array([-extent, extent]))
    return (traversal[1].astype(np.float64) - traversal[0]).mean(axis=0)


def electrode_change(
    traversal: np.ndarray,
    electrode_pixels: np.ndarray,
    statistic: str = "range",
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """How much each band changes at each electrode over a traversal.

    Per seed and pixel the change over the traversal values is the max minus the min
    (``statistic="range"``) or the standard deviation (``"std"``); it is averaged over the
    seeds and sampled at each electrode's position with bilinear interpolation.

    Parameters
    ----------
    traversal : ndarray, shape (n_values, k, C, Hh, Ww)
        Output of :func:`traverse_factor`.
    electrode_pixels : ndarray, shape (n_electrodes, 2)
        Each electrode's (row, col) position on the image grid (fractional allowed), inside
        [0, Hh-1] x [0, Ww-1].
    statistic : {"range", "std"}
    mask : bool ndarray, shape (Hh, Ww), optional
        Pixels that hold data (the scalp). When given, samples use only those pixels, so an
        electrode on the outline is not averaged with the empty pixels beyond it.

    Returns
    -------
    ndarray of float64, shape (C, n_electrodes)
        Change per band and electrode, in normalised band-power units per traversal range.
    """
    traversal = np.asarray(traversal)
    if traversal.ndim != 5 or traversal.shape[0] < 2 or 0 in traversal.shape:
        raise InputError("traversal", f"shape {traversal.shape}; expected (n_values>=2, k, C, H, W)")
    if not np.all(np.isfinite(traversal)):
        raise InputError("traversal", "contains NaN or infinite values")
    if statistic not in CHANGE_STATISTICS:
        raise InputError("statistic", f"{statistic!r}; expected one of {CHANGE_STATISTICS}")
    height, width = traversal.shape[-2:]
    electrode_pixels = np.asarray(electrode_pixels, dtype=np.float64)
    if electrode_pixels.ndim != 2 or electrode_pixels.shape[1] != 2 or electrode_pixels.shape[0] == 0:
        raise InputError("electrode_pixels", f"shape {electrode_pixels.shape}; expected (n_electrodes, 2)")
    rows, cols = electrode_pixels.T
    inside = np.isfinite(electrode_pixels).all(axis=1) & (rows >= 0) & (rows <= height - 1)
    inside &= (cols >= 0) & (cols <= width - 1)
    if not inside.all():
        raise InputError(
            "electrode_pixels",
            f"electrode {np.flatnonzero(~inside)[0]} lies outside the {height}x{width} grid",
        )

    values = traversal.astype(np.float64)
    per_seed = np.ptp(values, axis=0) if statistic == "range" else values.std(axis=0)
    change_maps = per_seed.mean(axis=0)
    if mask is not None:
        return _masked_bilinear(change_maps, electrode_pixels, _check_mask(mask, (height, width)))
    # order=1 is bilinear; "nearest" keeps electrodes on the grid's last row or column exact.
    return np.stack(
        [map_coordinates(band, electrode_pixels.T, order=1, mode="nearest") for band in change_maps]
    )


def sample_at_electrodes(maps: np.ndarray, electrode_pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Values of images ``maps`` (..., H, W) at the electrodes, shape (..., n_electrodes).

    The same masked bilinear sampling :func:`electrode_change` uses, so that a block's own band
    power (sampled from the stored frames) and its change under a traversal are read alike.
    """
    maps = np.asarray(maps)
    if maps.ndim < 2 or 0 in maps.shape:
        raise InputError("maps", f"shape {maps.shape}; expected non-empty (..., H, W) images")
    height, width = maps.shape[-2:]
    mask = _check_mask(mask, (height, width))
    flat = maps.reshape(-1, height, width).astype(np.float64, copy=False)
    samples = _masked_bilinear(flat, np.asarray(electrode_pixels, dtype=np.float64), mask)
    return samples.reshape(*maps.shape[:-2], samples.shape[-1])


def _check_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape or mask.dtype != bool or not mask.any():
        raise InputError(
            "mask", f"shape {mask.shape}, dtype {mask.dtype}; expected a non-empty bool {shape} array"
        )
    return mask


def _masked_bilinear(maps: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``maps`` (C, H, W) that use only pixels inside ``mask``.

    Electrodes on the scalp's outline sit on the hull's edge, where some of their four neighbouring
    pixels lie outside it (and hold no data). Those pixels get weight zero and the others are
    renormalised; an electrode with no neighbour inside takes its nearest pixel inside.
    """
    height, width = mask.shape
    inside_rows, inside_cols = np.nonzero(mask)
    samples = np.empty((maps.shape[0], positions.shape[0]))
    for electrode, (row, col) in enumerate(positions):
        row0, col0 = min(int(row), height - 2), min(int(col), width - 2)
        d_row, d_col = row - row0, col - col0
        rows = np.array([row0, row0, row0 + 1, row0 + 1])
        cols = np.array([col0, col0 + 1, col0, col0 + 1])
        weights = np.array(
            [(1 - d_row) * (1 - d_col), (1 - d_row) * d_col, d_row * (1 - d_col), d_row * d_col]
        )
        weights = weights * mask[rows, cols]
        if weights.sum() > 1e-9:
            samples[:, electrode] = maps[:, rows, cols] @ (weights / weights.sum())
        else:
            nearest = np.argmin((inside_rows - row) ** 2 + (inside_cols - col) ** 2)
            samples[:, electrode] = maps[:, inside_rows[nearest], inside_cols[nearest]]
    return samples


def find_blocks(
    change: np.ndarray,
    adjacency: np.ndarray,
    ch_names: Sequence[str],
    band_names: Sequence[str],
    relative_threshold: float = 0.5,
    min_change: float = 0.0,
) -> list[dict]:
    """Group the electrodes a factor changes most into connected blocks, per band.

    An electrode passes in a band when its change is at least ``relative_threshold`` times
    the factor's largest change over all bands and electrodes, and strictly above
    ``min_change`` (an absolute floor, so a factor that barely changes anything yields no
    blocks). Within each band the passing electrodes are split into the connected components
    of the neighbour graph restricted to them; each component is one block.

    Parameters
    ----------
    change : ndarray, shape (C, n_electrodes)
        Output of :func:`electrode_change`.
    adjacency : ndarray of bool, shape (n_electrodes, n_electrodes)
        Symmetric neighbour graph of the montage (the diagonal is ignored).
    ch_names : sequence of str
        Electrode names, in the order of the columns of ``change``.
    band_names : sequence of str
        Band names, in the order of the rows of ``change``.
    relative_threshold : float in (0, 1]
    min_change : float >= 0

    Returns
    -------
    list of dict
        One dict per block, strongest first: ``band`` (name), ``electrodes`` (names in
        ``ch_names`` order), ``name`` (electrodes joined by "-"), ``strength`` (mean change of
        its electrodes) and ``peak`` (their largest change), both in normalised band-power
        units per traversal range.
    """
    change = np.asarray(change, dtype=np.float64)
    if change.ndim != 2 or 0 in change.shape:
        raise InputError("change", f"shape {change.shape}; expected (n_bands, n_electrodes)")
    if not np.all(np.isfinite(change)) or change.min() < 0:
        raise InputError("change", "must be finite and non-negative")
    n_bands, n_electrodes = change.shape
    adjacency = np.asarray(adjacency)
    if adjacency.shape != (n_electrodes, n_electrodes) or adjacency.dtype != bool:
        raise InputError(
            "adjacency",
            f"shape {adjacency.shape}, dtype {adjacency.dtype}; "
            f"expected a bool matrix of shape ({n_electrodes}, {n_electrodes})",
        )
    if not np.array_equal(adjacency, adjacency.T):
        raise InputError("adjacency", "must be symmetric (an undirected neighbour graph)")
    ch_names = [str(name) for name in ch_names]
    if len(ch_names) != n_electrodes:
        raise InputError("ch_names", f"{len(ch_names)} names for {n_electrodes} electrodes")
    band_names = [str(name) for name in band_names]
    if len(band_names) != n_bands:
        raise InputError("band_names", f"{len(band_names)} names for {n_bands} bands")
    if not 0 < relative_threshold <= 1:
        raise InputError("relative_threshold", f"{relative_threshold!r}; expected a number in (0, 1]")
    if not np.isfinite(min_change) or min_change < 0:
        raise InputError("min_change", f"{min_change!r}; expected a finite number >= 0")

    passing = (change >= relative_threshold * change.max()) & (change > min_change)
    blocks = []
    for band, band_name in enumerate(band_names):
        members = np.flatnonzero(passing[band])
        if members.size == 0:
            continue
        subgraph = csr_matrix(adjacency[np.ix_(members, members)])
        _, component = connected_components(subgraph, directed=False)
        for label in np.unique(component):
            electrodes = members[component == label]
            values = change[band, electrodes]
            names = [ch_names[i] for i in electrodes]
            blocks.append(
                {
                    "band": band_name,
                    "electrodes": names,
                    "name": "-".join(names),
                    "strength": float(values.mean()),
                    "peak": float(values.max()),
                }
            )
    return sorted(blocks, key=lambda block: block["strength"], reverse=True)


def block_jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """Jaccard overlap |a ∩ b| / |a ∪ b| of two electrode sets (1.0 when both are empty)."""
    if isinstance(a, str) or isinstance(b, str):
        raise InputError("block_jaccard", "expects sequences of electrode names, not a single string")
    first, second = set(a), set(b)
    union = first | second
    return len(first & second) / len(union) if union else 1.0

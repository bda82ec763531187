"""Electrode positions: 3-D montage coordinates, their flat projection and neighbourhoods.

Coordinates follow MNE's head frame: +x towards the right ear, +y towards the nose, +z up.
"""

from __future__ import annotations

from collections.abc import Sequence

import mne
import numpy as np
from scipy.spatial import Delaunay, QhullError

from pipeline.errors import InputError
from pipeline.sources.trials import DEAP_CHANNELS


def electrode_positions_3d(ch_names: Sequence[str] = DEAP_CHANNELS, montage: str = "biosemi32") -> np.ndarray:
    """Positions (metres, MNE head frame) of the named electrodes in a standard montage.

    Channels are matched to the montage by name, ignoring case, never by position, so the
    rows follow ``ch_names`` whatever order the montage lists them in.

    Parameters
    ----------
    ch_names : sequence of str
        Electrode names, e.g. ``DEAP_CHANNELS``.
    montage : str
        A name accepted by :func:`mne.channels.make_standard_montage`.

    Returns
    -------
    float64 array (len(ch_names), 3)

    Raises
    ------
    InputError
        If the montage is unknown, ``ch_names`` is empty or repeats a name, or a name has no
        position in the montage.
    """
    where = f"montage {montage!r}"
    names = list(ch_names)
    if not names or not all(isinstance(name, str) for name in names):
        raise InputError("ch_names", f"expected a non-empty sequence of electrode names, got {ch_names!r}")
    lowered = [name.lower() for name in names]
    repeated = sorted({name for name, low in zip(names, lowered, strict=True) if lowered.count(low) > 1})
    if repeated:
        raise InputError(
            "ch_names", f"repeats electrode name(s) {repeated} (names are compared ignoring case)"
        )
    if montage not in mne.channels.get_builtin_montages():
        raise InputError(
            where, f"is not a built-in MNE montage; choose one of {mne.channels.get_builtin_montages()}"
        )

    montage_positions = mne.channels.make_standard_montage(montage).get_positions()["ch_pos"]
    by_lower_name: dict[str, np.ndarray] = {}
    for name, position in montage_positions.items():
        if name.lower() in by_lower_name:
            raise InputError(where, f"lists electrode {name!r} twice when case is ignored")
        by_lower_name[name.lower()] = position
    missing = [name for name, low in zip(names, lowered, strict=True) if low not in by_lower_name]
    if missing:
        raise InputError(where, f"has no position for electrode(s) {missing}")
    return np.array([by_lower_name[low] for low in lowered], dtype=np.float64)


def fit_sphere_centre(positions_3d: np.ndarray) -> np.ndarray:
    """Centre of the least-squares sphere through the points (algebraic fit).

    Solves ``|p|^2 = 2 p.c + (r^2 - |c|^2)`` for ``c`` in the least-squares sense, which is
    exact for points on a sphere and needs at least four points not on one plane.

    Raises
    ------
    InputError
        If the points do not determine a sphere.
    """
    positions = _check_positions(positions_3d, "positions_3d", n_dims=3)
    if positions.shape[0] < 4:
        raise InputError("positions_3d", f"has {positions.shape[0]} points; a sphere needs at least 4")
    design = np.column_stack([2.0 * positions, np.ones(len(positions))])
    target = np.sum(positions**2, axis=1)
    solution, _, rank, _ = np.linalg.lstsq(design, target, rcond=None)
    if rank < 4:
        raise InputError("positions_3d", "the points lie on one plane, so no sphere can be fitted")
    return solution[:3]


def azimuthal_equidistant(positions_3d: np.ndarray) -> np.ndarray:
    """Azimuthal equidistant projection of scalp positions about the vertex.

    The positions are first centred on the least-squares sphere through them
    (:func:`fit_sphere_centre`; for MNE's spherical montages such as ``biosemi32`` this is the
    origin of the head frame). A point at polar angle ``theta`` from the vertex (the +z axis
    through that centre) and azimuth ``phi`` (counter-clockwise from +x, the right ear,
    towards +y, the nose) maps to ``(theta cos phi, theta sin phi)``. Distances from the vertex
    along great circles are therefore preserved, in radians: Cz sits near the origin and an
    electrode on the equator (T7, Oz, ...) at distance about pi/2.

    Parameters
    ----------
    positions_3d : float array (n, 3)
        Electrode positions, n >= 4 and not all on one plane.

    Returns
    -------
    float64 array (n, 2)
        Projected ``(x, y)``, x to the right, y to the front.
    """
    positions = _check_positions(positions_3d, "positions_3d", n_dims=3)
    centred = positions - fit_sphere_centre(positions)
    radius = np.linalg.norm(centred, axis=1)
    if np.any(radius == 0):
        raise InputError("positions_3d", "a position coincides with the fitted sphere centre")
    polar = np.arccos(np.clip(centred[:, 2] / radius, -1.0, 1.0))
    azimuth = np.arctan2(centred[:, 1], centred[:, 0])
    return np.column_stack([polar * np.cos(azimuth), polar * np.sin(azimuth)])


def neighbour_graph(positions_2d: np.ndarray) -> np.ndarray:
    """Adjacency of the Delaunay triangulation of the projected electrodes.

    Two electrodes are neighbours when they share an edge of the triangulation. For the
    DEAP/biosemi32 layout the graph is left-right mirror symmetric.

    Parameters
    ----------
    positions_2d : float array (n, 2)
        Projected positions, n >= 3 and not all on one line.

    Returns
    -------
    bool array (n, n)
        Symmetric, with a False diagonal.
    """
    positions = _check_positions(positions_2d, "positions_2d", n_dims=2)
    if positions.shape[0] < 3:
        raise InputError("positions_2d", f"has {positions.shape[0]} points; a triangulation needs at least 3")
    if len(np.unique(positions, axis=0)) < len(positions):
        raise InputError("positions_2d", "holds two electrodes at the same position")
    try:
        triangulation = Delaunay(positions)
    except QhullError as error:
        raise InputError("positions_2d", f"cannot be triangulated ({error})") from error
    adjacency = np.zeros((len(positions), len(positions)), dtype=bool)
    for first, second in ((0, 1), (1, 2), (0, 2)):
        adjacency[triangulation.simplices[:, first], triangulation.simplices[:, second]] = True
    return adjacency | adjacency.T


def _check_positions(positions: np.ndarray, where: str, n_dims: int) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != n_dims:
        raise InputError(where, f"has shape {positions.shape}; expected (n_electrodes, {n_dims})")
    if not np.isfinite(positions).all():
        raise InputError(where, "contains NaN or Inf")
    return positions

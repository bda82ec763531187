"""Montage positions, the azimuthal equidistant projection, neighbours and the imaging operator."""

from __future__ import annotations

import re

import mne
import numpy as np
import pytest
from scipy.interpolate import CloughTocher2DInterpolator, griddata
from scipy.ndimage import map_coordinates
from scipy.spatial import ConvexHull

from pipeline.errors import InputError
from pipeline.signal.config import PreprocessConfig
from pipeline.signal.imaging import build_imaging_operator, deap_imaging_operator
from pipeline.signal.montage import azimuthal_equidistant, electrode_positions_3d, neighbour_graph
from pipeline.sources.trials import DEAP_CHANNELS

GRID = 32


def channel(name: str) -> int:
    return DEAP_CHANNELS.index(name)


@pytest.fixture(scope="module")
def operator():
    return deap_imaging_operator(PreprocessConfig())


@pytest.fixture(scope="module")
def pixel_points(operator):
    pixel_x, pixel_y = np.meshgrid(operator.grid_x, operator.grid_y)
    return np.column_stack([pixel_x.ravel(), pixel_y.ravel()])


# --- montage ---------------------------------------------------------------------------------


def test_positions_are_matched_by_name_not_by_order():
    montage_positions = mne.channels.make_standard_montage("biosemi32").get_positions()["ch_pos"]
    positions = electrode_positions_3d()
    assert positions.shape == (32, 3)
    for row, name in enumerate(DEAP_CHANNELS):
        np.testing.assert_array_equal(positions[row], montage_positions[name])
    # DEAP's order differs from the montage's, so matching by position would have failed above.
    assert list(DEAP_CHANNELS) != list(montage_positions)

    reordered = electrode_positions_3d(["oz", "CZ", "fp1"])
    np.testing.assert_array_equal(reordered, positions[[channel("Oz"), channel("Cz"), channel("Fp1")]])


def test_missing_electrodes_are_listed():
    with pytest.raises(InputError, match=r"biosemi32.*\['XX1', 'Fpz'\]"):
        electrode_positions_3d(["Fp1", "XX1", "Cz", "Fpz"])


@pytest.mark.parametrize(
    ("ch_names", "montage", "message"),
    [(["Cz", "cz"], "biosemi32", "repeats"), ([], "biosemi32", "non-empty"), (["Cz"], "nope", "built-in")],
)
def test_rejects_bad_names_and_montages(ch_names, montage, message):
    with pytest.raises(InputError, match=message):
        electrode_positions_3d(ch_names, montage)


def random_sphere_points(n: int, centre: np.ndarray, radius: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    polar = rng.uniform(0.05, 2.0, n)  # down to ~25 degrees below the equator, as on a scalp
    azimuth = rng.uniform(-np.pi, np.pi, n)
    unit = np.column_stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)])
    return centre + radius * unit, polar, azimuth


def test_projection_preserves_great_circle_distance_and_azimuth_from_the_vertex():
    centre = np.array([0.004, -0.012, 0.035])  # off the origin: the fitted centre must be used
    points, polar, azimuth = random_sphere_points(50, centre, radius=0.09)
    projected = azimuthal_equidistant(points)

    assert projected.shape == (50, 2)
    # Great-circle distance from the vertex (centre + r z) in radians is the polar angle.
    vertex_direction = np.array([0.0, 0.0, 1.0])
    great_circle = np.arccos((points - centre) @ vertex_direction / 0.09)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), great_circle, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), polar, atol=1e-9)
    np.testing.assert_allclose(np.arctan2(projected[:, 1], projected[:, 0]), azimuth, atol=1e-9)


def test_projection_of_the_deap_montage_puts_the_nose_up_and_the_right_ear_right():
    projected = azimuthal_equidistant(electrode_positions_3d())
    np.testing.assert_allclose(projected[channel("Cz")], [0.0, 0.0], atol=1e-9)
    assert projected[channel("T8"), 0] > 1.5 and abs(projected[channel("T8"), 1]) < 1e-9
    assert projected[channel("T7"), 0] < -1.5
    assert projected[channel("Fz"), 1] > 0 > projected[channel("Pz"), 1]
    assert projected[channel("Fp1"), 0] < 0 < projected[channel("Fp1"), 1]


def test_projection_rejects_planar_points():
    flat = np.column_stack([np.random.default_rng(0).normal(size=(10, 2)), np.zeros(10)])
    with pytest.raises(InputError, match="one plane"):
        azimuthal_equidistant(flat)


def mirror_name(name: str) -> str:
    match = re.fullmatch(r"([A-Za-z]+)(\d+)", name)
    if match is None:  # midline: Fz, Cz, Pz, Oz
        return name
    number = int(match.group(2))
    return match.group(1) + str(number + 1 if number % 2 else number - 1)


def test_neighbour_graph_of_the_deap_montage():
    graph = neighbour_graph(azimuthal_equidistant(electrode_positions_3d()))

    assert graph.shape == (32, 32) and graph.dtype == bool
    np.testing.assert_array_equal(graph, graph.T)
    assert not graph.diagonal().any()
    assert graph[channel("C4"), channel("T8")]
    assert graph[channel("Fp1"), channel("Fp2")]
    assert not graph[channel("Fp1"), channel("O2")]
    assert not graph[channel("T7"), channel("T8")]
    mirror = [channel(mirror_name(name)) for name in DEAP_CHANNELS]
    np.testing.assert_array_equal(graph, graph[np.ix_(mirror, mirror)])


def test_neighbour_graph_of_a_triangle_around_a_point_is_complete():
    graph = neighbour_graph(np.array([[0.0, 0.0], [4.0, 0.0], [2.0, 3.0], [2.0, 1.0]]))
    np.testing.assert_array_equal(graph, ~np.eye(4, dtype=bool))


def test_neighbour_graph_rejects_collinear_points():
    with pytest.raises(InputError, match="triangulated"):
        neighbour_graph(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))


# --- imaging operator ------------------------------------------------------------------------


def test_operator_matches_scipy_cubic_griddata(operator, pixel_points):
    rng = np.random.default_rng(0)
    band_power = rng.normal(5.0, 2.0, (2, 3, 32, 3))
    frames = operator.to_frames(band_power)
    assert frames.shape == (2, 3, 3, GRID, GRID) and frames.dtype == np.float32

    scale = np.abs(band_power).max()
    for trial, window, band in np.ndindex(2, 3, 3):
        values = band_power[trial, window, :, band]
        expected = griddata(operator.positions_2d, values, pixel_points, method="cubic", fill_value=0)
        np.testing.assert_allclose(operator.weights @ values, expected, atol=1e-6 * scale, rtol=0)
        np.testing.assert_allclose(
            frames[trial, window, band], expected.reshape(GRID, GRID), atol=1e-5 * scale, rtol=0
        )


def test_clough_tocher_is_linear_in_the_values(operator, pixel_points):
    """The property that lets one precomputed matrix replace per-frame interpolation."""
    rng = np.random.default_rng(1)
    first, second = rng.normal(size=(2, 32))

    def interpolate(values):
        interpolator = CloughTocher2DInterpolator(operator.positions_2d, values, fill_value=0, tol=1e-12)
        return interpolator(pixel_points)

    np.testing.assert_allclose(
        interpolate(2.5 * first - 0.7 * second),
        2.5 * interpolate(first) - 0.7 * interpolate(second),
        atol=1e-9,
    )


def test_constant_field_is_reproduced_inside_and_zero_outside(operator):
    frames = operator.to_frames(np.full((1, 1, 32, 1), 7.25))[0, 0, 0]
    inside = operator.weights[operator.mask.ravel()]
    np.testing.assert_allclose(inside @ np.full(32, 7.25), 7.25, atol=1e-9)
    np.testing.assert_allclose(frames[operator.mask], 7.25, atol=1e-5)
    np.testing.assert_array_equal(frames[~operator.mask], 0.0)


def test_outside_the_hull_is_exactly_zero_and_the_mask_is_the_hull(operator, pixel_points):
    frames = operator.to_frames(np.random.default_rng(2).normal(size=(2, 4, 32, 3)))
    assert np.all(frames[..., ~operator.mask] == 0.0)
    assert np.all(operator.weights[~operator.mask.ravel()] == 0.0)

    hull = ConvexHull(operator.positions_2d)
    signed_distance = (pixel_points @ hull.equations[:, :2].T + hull.equations[:, 2]).max(axis=1)
    mask = operator.mask.ravel()
    assert mask[signed_distance < -1e-9].all()
    assert not mask[signed_distance > 1e-9].any()
    assert 0.5 < mask.mean() < 0.9


def test_orientation_front_up_left_hemisphere_left(operator):
    def peak(name):
        image = operator.weights[:, channel(name)].reshape(GRID, GRID)
        return np.array(np.unravel_index(image.argmax(), image.shape))

    half = GRID / 2
    fp1_row, fp1_col = peak("Fp1")
    assert fp1_row < 3 and fp1_col < half
    o2_row, o2_col = peak("O2")
    assert o2_row > GRID - 4 and o2_col >= half
    assert peak("T7")[1] <= 1 and peak("T8")[1] >= GRID - 2
    assert peak("Fz")[0] < peak("Cz")[0] < peak("Pz")[0]
    for name in ("Fp1", "O2", "T7", "T8", "Cz", "P3"):
        assert np.linalg.norm(peak(name) - operator.electrode_pixels[channel(name)]) < 1.5

    pixels = operator.electrode_pixels
    np.testing.assert_allclose(pixels[[channel("T7"), channel("T8")], 1], [0.0, GRID - 1], atol=1e-9)
    assert np.all(np.diff(operator.grid_x) > 0) and np.all(np.diff(operator.grid_y) < 0)


def test_electrode_pixels_sample_images_at_the_electrodes(operator):
    # Clough-Tocher reproduces a linear field exactly, and bilinear sampling of a linear field is
    # exact, so sampling at electrode_pixels must return the field's value at each electrode.
    positions = operator.positions_2d
    field = 1.5 * positions[:, 0] - 2.0 * positions[:, 1] + 0.3
    image = operator.to_frames(field.reshape(1, 1, 32, 1))[0, 0, 0].astype(np.float64)

    # Only electrodes whose four surrounding pixels are all inside the hull sample cleanly.
    rows, cols = operator.electrode_pixels.T
    row_pairs = (np.floor(rows).astype(int), np.ceil(rows).astype(int))
    col_pairs = (np.floor(cols).astype(int), np.ceil(cols).astype(int))
    interior = np.logical_and.reduce([operator.mask[r, c] for r in row_pairs for c in col_pairs])
    assert interior.sum() >= 20
    sampled = map_coordinates(image, operator.electrode_pixels.T, order=1)
    np.testing.assert_allclose(sampled[interior], field[interior], atol=1e-5)


def test_to_frames_rejects_wrong_shapes_and_non_finite_values(operator):
    with pytest.raises(InputError, match=r"^band_power: has shape \(2, 63, 31, 3\)"):
        operator.to_frames(np.zeros((2, 63, 31, 3)))
    with pytest.raises(InputError, match="NaN"):
        operator.to_frames(np.full((1, 63, 32, 3), np.nan))


@pytest.mark.parametrize(
    ("positions", "grid_size", "message"),
    [
        (np.zeros((32, 3)), 32, "shape"),
        (np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), 32, "same position"),
        (np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), 1, "grid_size"),
        (np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), 8, "triangulated"),
    ],
)
def test_build_rejects_bad_input(positions, grid_size, message):
    with pytest.raises(InputError, match=message):
        build_imaging_operator(positions, grid_size)


def test_deap_operator_is_cached_read_only_and_follows_the_grid_size(operator):
    assert deap_imaging_operator(PreprocessConfig()) is operator
    assert not operator.weights.flags.writeable
    assert operator.weights.shape == (GRID * GRID, 32)
    small = deap_imaging_operator(PreprocessConfig(grid_size=16))
    assert small.weights.shape == (256, 32) and small.mask.shape == (16, 16)
    with pytest.raises(InputError, match="projection"):
        deap_imaging_operator(PreprocessConfig(projection="stereographic"))

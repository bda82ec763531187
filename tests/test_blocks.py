"""Factor traversal, electrode change and electrode blocks on a small made-up ring montage."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis.blocks import block_jaccard, electrode_change, find_blocks, traverse_factor
from pipeline.errors import InputError

GRID = 32
N_BANDS = 3
BAND_NAMES = ("alpha", "beta", "gamma")
N_FACTORS = 5
# Eight electrodes on a ring, neighbours about 8 pixels apart, on integer pixels.
RING_NAMES = ["Fz", "F4", "C4", "P4", "Pz", "P3", "C3", "F3"]
_ANGLES = np.arange(8) * np.pi / 4
RING_PIXELS = np.stack([16 - np.round(11 * np.cos(_ANGLES)), 16 + np.round(11 * np.sin(_ANGLES))], axis=1)
RING_ADJACENCY = np.zeros((8, 8), dtype=bool)
for _i in range(8):
    RING_ADJACENCY[_i, (_i + 1) % 8] = RING_ADJACENCY[(_i + 1) % 8, _i] = True


def blob_image(amplitudes: dict[int, float], band: int, width: float = 1.2) -> np.ndarray:
    """(C, GRID, GRID) image with a Gaussian bump of the given amplitude at each electrode index."""
    rows, cols = np.mgrid[:GRID, :GRID]
    image = np.zeros((N_BANDS, GRID, GRID))
    for electrode, amplitude in amplitudes.items():
        row, col = RING_PIXELS[electrode]
        image[band] += amplitude * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * width**2))
    return image


def linear_decoder(patterns: np.ndarray, base: np.ndarray):
    """decode(z) = base + Σ_j z_j patterns[j]: traversing factor j changes the image by patterns[j] only."""

    def decode(latents: np.ndarray) -> np.ndarray:
        return (base + np.einsum("mh,hcij->mcij", latents, patterns)).astype(np.float32)

    return decode


def factor_blocks(patterns: np.ndarray, factor: int, relative_threshold: float = 0.5) -> list[dict]:
    rng = np.random.default_rng(0)
    decode = linear_decoder(patterns, base=rng.normal(size=(N_BANDS, GRID, GRID)))
    traversal = traverse_factor(decode, rng.normal(size=(3, N_FACTORS)), factor)
    change = electrode_change(traversal, RING_PIXELS)
    return find_blocks(change, RING_ADJACENCY, RING_NAMES, BAND_NAMES, relative_threshold)


def make_patterns(factor0: np.ndarray) -> np.ndarray:
    """Factor 0 paints ``factor0``, factor 1 paints nothing, factors 2.. paint weak noise everywhere."""
    rng = np.random.default_rng(1)
    patterns = 0.01 * rng.normal(size=(N_FACTORS, N_BANDS, GRID, GRID))
    patterns[0] = factor0
    patterns[1] = 0.0
    return patterns


def test_one_blob_gives_exactly_that_block_and_a_silent_factor_none():
    patterns = make_patterns(blob_image({2: 1.0, 3: 1.0, 4: 0.9, 5: 0.8}, band=2))

    blocks = factor_blocks(patterns, factor=0)
    assert len(blocks) == 1
    (block,) = blocks
    assert block["band"] == "gamma"
    assert block["electrodes"] == ["C4", "P4", "Pz", "P3"]
    assert block["name"] == "C4-P4-Pz-P3"
    assert block_jaccard(block["electrodes"], ["P3", "Pz", "C4", "P4"]) == 1.0
    # Change over z in [-3, 3] of a linear decoder is 6 x the painted amplitude.
    assert block["strength"] == pytest.approx(6 * np.mean([1.0, 1.0, 0.9, 0.8]), rel=1e-5)
    assert block["peak"] == pytest.approx(6.0, rel=1e-5)

    assert factor_blocks(patterns, factor=1) == []


def test_two_separated_blobs_give_two_blocks_strongest_first():
    patterns = make_patterns(blob_image({0: 0.7, 1: 0.7}, band=2) + blob_image({4: 1.0, 5: 0.9}, band=2))

    blocks = factor_blocks(patterns, factor=0)
    assert [block["electrodes"] for block in blocks] == [["Pz", "P3"], ["Fz", "F4"]]
    assert [block["band"] for block in blocks] == ["gamma", "gamma"]
    assert blocks[0]["strength"] > blocks[1]["strength"]


def test_the_same_electrodes_in_two_bands_are_two_blocks():
    patterns = make_patterns(blob_image({2: 1.0, 3: 1.0}, band=0) + blob_image({2: 0.8, 3: 0.8}, band=1))

    blocks = factor_blocks(patterns, factor=0)
    assert [(block["band"], block["name"]) for block in blocks] == [("alpha", "C4-P4"), ("beta", "C4-P4")]


def test_raising_the_threshold_shrinks_the_block():
    patterns = make_patterns(blob_image({2: 0.6, 3: 1.0, 4: 0.9, 5: 0.7}, band=2))

    sizes = {}
    for threshold in (0.5, 0.8, 0.95):
        (block,) = factor_blocks(patterns, factor=0, relative_threshold=threshold)
        sizes[threshold] = block["electrodes"]
    assert sizes == {0.5: ["C4", "P4", "Pz", "P3"], 0.8: ["P4", "Pz"], 0.95: ["P4"]}


def test_min_change_removes_blocks_of_a_barely_changing_factor():
    change = np.zeros((N_BANDS, 8))
    change[1, [2, 3]] = 0.02
    assert [block["name"] for block in find_blocks(change, RING_ADJACENCY, RING_NAMES, BAND_NAMES)] == [
        "C4-P4"
    ]
    assert find_blocks(change, RING_ADJACENCY, RING_NAMES, BAND_NAMES, min_change=0.05) == []


def test_bilinear_sampling_hits_pixel_values_and_interpolates_between_them():
    rng = np.random.default_rng(2)
    frames = rng.normal(size=(2, 1, N_BANDS, GRID, GRID))
    frames[0] = 0.0  # change = |frames[1]| per pixel
    pixels = np.array([[0, 0], [3, 7], [31, 31], [10.5, 4], [10, 4.25]])

    change = electrode_change(frames, pixels)
    expected_map = np.abs(frames[1, 0])
    assert change.shape == (N_BANDS, 5)
    np.testing.assert_allclose(change[:, 0], expected_map[:, 0, 0])
    np.testing.assert_allclose(change[:, 1], expected_map[:, 3, 7])  # row 3, column 7
    np.testing.assert_allclose(change[:, 2], expected_map[:, 31, 31])
    np.testing.assert_allclose(change[:, 3], 0.5 * (expected_map[:, 10, 4] + expected_map[:, 11, 4]))
    np.testing.assert_allclose(change[:, 4], 0.75 * expected_map[:, 10, 4] + 0.25 * expected_map[:, 10, 5])


def test_change_is_averaged_over_seeds_and_std_is_available():
    pattern = np.ones((1, 2, 2))

    def decode(latents: np.ndarray) -> np.ndarray:
        # The effect of z_0 scales with the seed's z_1, so seeds see different ranges.
        return (latents[:, 0] * latents[:, 1])[:, None, None, None] * pattern

    seeds = np.array([[0.0, 1.0], [0.0, -3.0], [0.0, 2.0]])
    values = np.linspace(-1.0, 1.0, 5)
    traversal = traverse_factor(decode, seeds, factor=0, values=values)
    pixels = np.array([[0.0, 0.0], [1.0, 1.0]])

    np.testing.assert_allclose(electrode_change(traversal, pixels), 2.0 * 2.0)  # range 2 x mean |z_1| 2
    np.testing.assert_allclose(electrode_change(traversal, pixels, statistic="std"), values.std() * 2.0)


def test_traversal_sets_the_factor_and_keeps_the_other_latents_at_the_seeds():
    seen = []

    def decode(latents: np.ndarray) -> np.ndarray:
        seen.append(latents.copy())
        return np.broadcast_to(latents.sum(axis=1)[:, None, None, None], (len(latents), 2, 4, 5)).copy()

    seeds = np.random.default_rng(3).normal(size=(4, N_FACTORS))
    values = np.array([-2.0, 0.0, 1.5])
    traversal = traverse_factor(decode, seeds, factor=3, values=values)

    assert traversal.shape == (3, 4, 2, 4, 5)
    assert traversal.dtype == np.float32
    for index, value in enumerate(values):
        latents = seen[index]
        assert latents.dtype == np.float32
        np.testing.assert_array_equal(latents[:, 3], value)
        np.testing.assert_array_equal(latents[:, [0, 1, 2, 4]], seeds[:, [0, 1, 2, 4]].astype(np.float32))
        expected_sum = seeds[:, [0, 1, 2, 4]].astype(np.float32).sum(axis=1) + value
        np.testing.assert_allclose(traversal[index, :, 1, 2, 3], expected_sum, rtol=1e-6)


def test_block_jaccard():
    assert block_jaccard(["C4", "T8", "P4"], ["T8", "P4", "P8"]) == pytest.approx(2 / 4)
    assert block_jaccard(["C4"], ["O1"]) == 0.0
    assert block_jaccard([], []) == 1.0


def test_bad_inputs_name_what_is_wrong():
    seeds = np.zeros((2, N_FACTORS))
    with pytest.raises(InputError, match="factor"):
        traverse_factor(lambda z: np.zeros((len(z), 3, 4, 4)), seeds, factor=N_FACTORS)
    with pytest.raises(InputError, match="decode"):
        traverse_factor(lambda z: np.zeros((len(z), 4, 4)), seeds, factor=0)
    with pytest.raises(InputError, match="electrode_pixels"):
        electrode_change(np.zeros((3, 1, 3, 8, 8)), np.array([[0.0, 8.0]]))
    change = np.ones((N_BANDS, 8))
    with pytest.raises(InputError, match="adjacency"):
        find_blocks(change, np.triu(RING_ADJACENCY), RING_NAMES, BAND_NAMES)
    with pytest.raises(InputError, match="ch_names"):
        find_blocks(change, RING_ADJACENCY, RING_NAMES[:-1], BAND_NAMES)
    with pytest.raises(InputError, match="relative_threshold"):
        find_blocks(change, RING_ADJACENCY, RING_NAMES, BAND_NAMES, relative_threshold=0.0)


def test_masked_sampling_ignores_pixels_off_the_scalp():
    """An electrode on the outline must not be averaged with the empty pixels beyond it."""
    height = width = 6
    mask = np.zeros((height, width), dtype=bool)
    mask[:, :4] = True  # columns 4 and 5 lie off the scalp
    change_map = np.where(mask, 2.0, 0.0)
    traversal = np.zeros((2, 1, 1, height, width))
    traversal[1, 0, 0] = change_map
    positions = np.array([[2.0, 3.5], [2.0, 5.0], [2.5, 1.5]])
    plain = electrode_change(traversal, positions)[0]
    masked = electrode_change(traversal, positions, mask=mask)[0]
    assert plain[0] == pytest.approx(1.0) and plain[1] == pytest.approx(0.0)
    # Half-way to the outline and beyond it, only scalp pixels count: the full change.
    assert masked.tolist() == pytest.approx([2.0, 2.0, 2.0])

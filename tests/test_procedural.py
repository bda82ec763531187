import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.sources.procedural import (
    DEFAULT_FACTORS,
    FACTORS,
    ProceduralSpec,
    generate_procedural_images,
    iter_procedural_images,
    render_images,
    sample_factors,
)

ALL_FACTORS = tuple(FACTORS)


def _midpoints(spec):
    return np.array([[(FACTORS[n].low + FACTORS[n].high) / 2 for n in spec.factors]])


def _with(spec, name, value):
    """Midpoint factor values with one factor set to ``value``."""
    values = _midpoints(spec)
    values[0, spec.factors.index(name)] = value
    return values


def test_same_seed_same_images_whatever_the_batch_size():
    spec = ProceduralSpec(seed=3, n_images=50)
    whole = generate_procedural_images(spec)
    streamed = list(iter_procedural_images(spec, batch_size=16))
    assert [len(b) for b in streamed] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([b.images for b in streamed]), whole.images)
    np.testing.assert_array_equal(generate_procedural_images(spec).images, whole.images)
    np.testing.assert_array_equal(np.concatenate([b.split for b in streamed]), whole.split)
    other = generate_procedural_images(ProceduralSpec(seed=4, n_images=50))
    assert np.abs(other.images - whole.images).mean() > 0.01
    assert other.source_sha256[0] != whole.source_sha256[0]


def test_batch_shape_range_split_and_labels():
    batch = generate_procedural_images(ProceduralSpec(seed=0, n_images=200))
    assert batch.images.shape == (200, 3, 64, 64) and batch.images.dtype == np.float32
    assert batch.images.min() >= 0.0 and batch.images.max() <= 1.0
    assert np.bincount(batch.split).tolist() == [160, 20, 20]
    assert (batch.labels == -1).all()
    np.testing.assert_array_equal(batch.index, np.arange(200))


def test_ground_truth_records_k_and_the_factor_names():
    truth = ProceduralSpec(factors=(*DEFAULT_FACTORS, "background")).ground_truth()
    assert truth["n_factors"] == 5
    assert truth["factor_names"] == ["x", "y", "radius", "hue", "background"]
    assert truth["factor_ranges"]["background"] == [FACTORS["background"].low, FACTORS["background"].high]
    assert set(truth["fixed_factors"]) == {"elongation"}
    assert ProceduralSpec().n_factors == 4


def test_factors_are_independent_and_uniform_over_their_ranges():
    spec = ProceduralSpec(seed=1, n_images=6000, factors=ALL_FACTORS)
    values = sample_factors(spec)
    assert values.shape == (6000, 6)
    correlation = np.corrcoef(values, rowvar=False)
    assert np.abs(correlation - np.eye(6)).max() < 0.05
    unit = (values - [FACTORS[n].low for n in ALL_FACTORS]) / [
        FACTORS[n].high - FACTORS[n].low for n in ALL_FACTORS
    ]
    assert unit.min() >= 0.0 and unit.max() <= 1.0
    # Uniform: each decile of each factor holds about a tenth of the images.
    for column in unit.T:
        deciles = np.bincount(np.minimum((column * 10).astype(int), 9), minlength=10) / len(column)
        np.testing.assert_allclose(deciles, 0.1, atol=0.02)


def test_factor_draws_do_not_follow_the_split():
    spec = ProceduralSpec(seed=2, n_images=4000)
    values, split = sample_factors(spec), generate_procedural_images(spec).split
    for column in values.T:
        assert abs(column[split == 0].mean() - column[split == 2].mean()) < 0.03


def _coverage(image, background):
    """How much of each pixel the shape covers: its colour distance from the background, scaled to 1."""
    distance = np.abs(image - background).sum(axis=0)
    return distance / distance.max()


def test_each_factor_changes_the_image_in_its_own_way():
    spec = ProceduralSpec(size=64, factors=ALL_FACTORS)
    fixed = render_images(_midpoints(spec), spec)[0]
    for name in ALL_FACTORS:
        low = render_images(_with(spec, name, FACTORS[name].low), spec)[0]
        high = render_images(_with(spec, name, FACTORS[name].high), spec)[0]
        assert np.abs(high - low).mean() > 0.005, name
        assert np.abs(high - low).max() > 0.25, name

    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    grey = (FACTORS["background"].low + FACTORS["background"].high) / 2

    def moments(name, value):
        """Centre (x, y) in pixels, area in pixels and height/width of the shape."""
        weight = _coverage(render_images(_with(spec, name, value), spec)[0], grey)
        area = weight.sum()
        x, y = (cols * weight).sum() / area, (rows * weight).sum() / area
        spread_y, spread_x = ((rows - y) ** 2 * weight).sum(), ((cols - x) ** 2 * weight).sum()
        return x, y, area, np.sqrt(spread_y / spread_x)

    left, right = moments("x", 0.4), moments("x", 0.6)
    assert left[0] == pytest.approx(0.4 * 64, abs=0.2) and right[0] == pytest.approx(0.6 * 64, abs=0.2)
    assert right[1] == pytest.approx(left[1], abs=1e-3)
    top, bottom = moments("y", 0.4), moments("y", 0.6)
    assert top[1] == pytest.approx(0.4 * 64, abs=0.2) and bottom[1] == pytest.approx(0.6 * 64, abs=0.2)
    assert top[0] == pytest.approx(bottom[0], abs=1e-3)
    small, large = moments("radius", 0.1), moments("radius", 0.25)
    # A logistic edge of scale s adds pi * (pi**2 / 3) * s**2 to a disc's area pi * r**2. The
    # soft edge covers the centre of the smallest disc to 96 % only, and _coverage scales that to 1.
    centre_coverage = 1 / (1 + np.exp(-0.1 * 64 / spec.edge_px))
    for radius, (*_, area, _) in ((0.1, small), (0.25, large)):
        expected = np.pi * ((radius * 64) ** 2 + np.pi**2 / 3 * spec.edge_px**2)
        scale = 1 / centre_coverage if radius == 0.1 else 1.0
        assert area == pytest.approx(expected * scale, rel=0.02)
    flat = moments("elongation", 0.5)
    round_ = moments("elongation", 1.0)
    assert flat[3] == pytest.approx(0.5, rel=0.05) and round_[3] == pytest.approx(1.0, rel=0.01)
    assert flat[2] == pytest.approx(round_[2], rel=0.05)  # equal area

    # Hue moves the colour along one straight line in RGB: red, orange, yellow.
    red, orange, yellow = (
        render_images(_with(spec, "hue", hue), spec)[0][:, 32, 32] for hue in (0.0, 1 / 12, 1 / 6)
    )
    assert red[0] > 0.9 and red[1:].max() < 0.2
    assert yellow[:2].min() > 0.9 and yellow[2] < 0.2
    np.testing.assert_allclose(orange, (red + yellow) / 2, atol=1e-3)
    dark = render_images(_with(spec, "background", 0.05), spec)[0]
    assert dark[:, 0, 0] == pytest.approx([0.05] * 3, abs=1e-6)
    # The shape keeps its colour; its soft edge lets under 0.5 % of the background through at the centre.
    assert dark[:, 32, 32] == pytest.approx(fixed[:, 32, 32], abs=2e-3)


def test_factors_left_out_stay_fixed():
    spec = ProceduralSpec(seed=0, n_images=300)
    images = generate_procedural_images(spec).images
    # Background is not among the default factors: every corner shows the fixed grey, up to the
    # far tail of the soft edge of an ellipse next to it (under 1 % of its colour).
    np.testing.assert_allclose(images[:, :, 0, 0], FACTORS["background"].fixed, atol=0.005)


def test_bad_specs_and_values_are_refused():
    with pytest.raises(InputError, match="factors"):
        ProceduralSpec(factors=("x", "colour"))
    with pytest.raises(InputError, match="factors"):
        ProceduralSpec(factors=("x", "x"))
    with pytest.raises(InputError, match="n_images"):
        ProceduralSpec(n_images=0)
    with pytest.raises(InputError, match="fractions"):
        ProceduralSpec(split_fractions=(0.5, 0.2, 0.2))
    spec = ProceduralSpec()
    with pytest.raises(InputError, match="radius leaves"):
        render_images(_with(spec, "radius", 0.5), spec)
    with pytest.raises(InputError, match="batch_size"):
        iter_procedural_images(spec, batch_size=0)

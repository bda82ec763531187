"""Tests of the mutual-information estimator and the factor-ranking helpers."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pipeline.analysis.mi import (
    LOGVAR_MAX,
    MIAccumulator,
    MIEstimate,
    estimate_mi,
    influential_factors,
    topk_factor_counts,
    topk_mask,
)
from pipeline.errors import InputError


def random_encoder(rng: np.random.Generator, n: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Posterior parameters of an arbitrary encoder: offsets, varied scales, varied σ per frame."""
    mu = rng.normal(size=(n, h)) * rng.uniform(0.0, 3.0, size=h) + rng.normal(size=h)
    logvar = rng.normal(size=(n, h)) * 0.5 + rng.uniform(-4.0, 1.0, size=h)
    return mu, logvar


def per_sample_kl(mu: np.ndarray, logvar: np.ndarray, prior_var: np.ndarray | float) -> np.ndarray:
    """KL(N(mu, e^logvar) || N(0, prior_var)) for every entry."""
    return 0.5 * ((mu**2 + np.exp(logvar)) / prior_var - 1.0 + np.log(prior_var) - logvar)


def linear_gaussian(
    rng: np.random.Generator, n: int, weights: np.ndarray, sigmas: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """μ_j = a_jᵀ x with x ~ N(0, I); σ_j fixed. Columns of ``weights`` are the a_j."""
    x = rng.standard_normal((n, weights.shape[0]))
    mu = x @ weights
    logvar = np.broadcast_to(np.log(sigmas**2), mu.shape)
    return mu, logvar


LINEAR_WEIGHTS = np.array(
    [
        [1.0, 0.5, 3.0, 0.0, 2.0],
        [1.0, -1.5, 0.0, 0.2, -2.0],
        [0.0, 0.7, 1.0, 0.1, 1.0],
    ]
)
LINEAR_SIGMAS = np.array([0.8, 1.0, 0.3, 0.1, 1.2])


def linear_true_mi() -> np.ndarray:
    squared_norms = (LINEAR_WEIGHTS**2).sum(axis=0)
    return 0.5 * np.log1p(squared_norms / LINEAR_SIGMAS**2)


def test_estimate_matches_closed_form_on_random_encoder():
    mu, logvar = random_encoder(np.random.default_rng(0), 500, 6)
    estimate = estimate_mi(mu, logvar)
    aggregate_var = (mu**2 + np.exp(logvar)).mean(axis=0)
    np.testing.assert_allclose(
        estimate.per_factor_nats, per_sample_kl(mu, logvar, aggregate_var).mean(axis=0), rtol=1e-10
    )
    np.testing.assert_allclose(
        estimate.kl_prior_nats, per_sample_kl(mu, logvar, 1.0).mean(axis=0), rtol=1e-10
    )
    assert estimate.total_nats == pytest.approx(estimate.per_factor_nats.sum(), rel=1e-12)
    assert estimate.n_samples == 500


@pytest.mark.parametrize("seed", range(5))
def test_mi_is_non_negative_and_below_kl_to_prior(seed):
    rng = np.random.default_rng(seed)
    mu, logvar = random_encoder(rng, 200, 16)
    # A few factors nearly collapsed, where rounding could push Î below 0 or above the KL.
    mu[:, :4] *= 1e-9
    logvar[:, :4] = rng.normal(size=(200, 4)) * 1e-9
    estimate = estimate_mi(mu, logvar)
    assert np.all(estimate.per_factor_nats >= 0.0)
    kl_direct = per_sample_kl(mu, logvar, 1.0).mean(axis=0)
    assert np.all(estimate.per_factor_nats <= kl_direct + 1e-12)
    assert np.all(estimate.per_factor_nats <= estimate.kl_prior_nats)


def test_linear_gaussian_encoder_within_one_percent_at_1e5():
    mu, logvar = linear_gaussian(np.random.default_rng(1), 100_000, LINEAR_WEIGHTS, LINEAR_SIGMAS)
    estimate = estimate_mi(mu.astype(np.float32), logvar.astype(np.float32))
    truth = linear_true_mi()
    # Signal-to-noise ratios |a_j|²/σ_j² from 3 to 111, i.e. 0.69 to 2.36 nats: at N = 1e5 the
    # relative standard error of each estimate is below 0.25 %, so 1 % is a 4-sigma margin.
    assert truth.min() > 0.6 and truth.max() > 2.0
    np.testing.assert_allclose(estimate.per_factor_nats, truth, rtol=0.01)


def test_linear_gaussian_error_shrinks_with_n():
    rng = np.random.default_rng(2)
    truth = linear_true_mi()

    def mean_abs_error(n: int, repeats: int) -> float:
        errors = [
            np.abs(
                estimate_mi(*linear_gaussian(rng, n, LINEAR_WEIGHTS, LINEAR_SIGMAS)).per_factor_nats - truth
            )
            for _ in range(repeats)
        ]
        return float(np.mean(errors))

    small, large = mean_abs_error(1_000, 20), mean_abs_error(100_000, 4)
    # Standard error falls like 1/sqrt(N): a factor of 10 in theory; ask for 3.
    assert small > 3 * large


def test_streaming_uneven_batches_equals_one_shot():
    mu, logvar = random_encoder(np.random.default_rng(3), 1_000, 12)
    one_shot = estimate_mi(mu, logvar)
    accumulator = MIAccumulator()
    edges = [0, 1, 7, 7, 300, 301, 999, 1_000]  # includes an empty batch and single rows
    for start, stop in itertools.pairwise(edges):
        accumulator.update(mu[start:stop], logvar[start:stop])
    streamed = accumulator.result()
    assert streamed.n_samples == one_shot.n_samples == 1_000
    for field in ("per_factor_nats", "variance", "kl_prior_nats"):
        np.testing.assert_allclose(getattr(streamed, field), getattr(one_shot, field), rtol=1e-12, atol=1e-12)
    assert streamed.total_nats == pytest.approx(one_shot.total_nats, rel=1e-12)
    np.testing.assert_array_equal(streamed.ranking, one_shot.ranking)


def test_sequence_batches_are_flattened():
    mu, logvar = random_encoder(np.random.default_rng(4), 5 * 63, 8)
    flat = estimate_mi(mu, logvar)
    sequences = estimate_mi(mu.reshape(5, 63, 8), logvar.reshape(5, 63, 8))
    np.testing.assert_allclose(sequences.per_factor_nats, flat.per_factor_nats, rtol=1e-14)
    assert sequences.n_samples == 315


def test_collapsed_factor_has_zero_information_and_zero_kl():
    rng = np.random.default_rng(5)
    mu = np.column_stack([rng.normal(size=400), np.zeros(400)])
    logvar = np.column_stack([np.full(400, -2.0), np.zeros(400)])
    estimate = estimate_mi(mu, logvar)
    assert estimate.per_factor_nats[1] == 0.0
    assert estimate.kl_prior_nats[1] == 0.0
    assert estimate.variance[1] == 0.0
    assert estimate.per_factor_nats[0] > 1.0
    np.testing.assert_array_equal(estimate.ranking, [0, 1])


def test_variance_matches_numpy_even_with_large_offset():
    rng = np.random.default_rng(6)
    mu = rng.normal(size=(3_000, 4)) * [1.0, 0.1, 2.0, 1e-3] + [0.0, 5.0, -3.0, 1e4]
    logvar = np.zeros_like(mu)
    accumulator = MIAccumulator()
    for batch in np.array_split(np.arange(3_000), 7):
        accumulator.update(mu[batch], logvar[batch])
    np.testing.assert_allclose(accumulator.result().variance, np.var(mu, axis=0), rtol=1e-9)


def test_ranking_orders_by_information_with_ties_by_index():
    rng = np.random.default_rng(7)
    n = 2_000
    spreads = np.array([0.0, 2.0, 0.5, 0.0, 2.0, 1.0])
    mu = rng.standard_normal((n, 1)) * spreads  # same draw per column: equal spreads give equal Î
    logvar = np.zeros((n, spreads.size))
    estimate = estimate_mi(mu, logvar)
    np.testing.assert_array_equal(estimate.ranking, [1, 4, 5, 2, 0, 3])
    assert np.all(np.diff(estimate.per_factor_nats[estimate.ranking]) <= 0)


def test_logvar_is_clamped_not_overflowing():
    mu = np.zeros((10, 2))
    logvar = np.column_stack([np.full(10, 800.0), np.full(10, LOGVAR_MAX)])
    estimate = estimate_mi(mu, logvar)
    assert np.all(np.isfinite(estimate.kl_prior_nats))
    assert estimate.kl_prior_nats[0] == pytest.approx(estimate.kl_prior_nats[1], rel=1e-12)
    np.testing.assert_allclose(estimate.per_factor_nats, 0.0, atol=1e-12)


def test_to_dict_is_json_native_with_report_keys():
    estimate = estimate_mi(*random_encoder(np.random.default_rng(8), 50, 5))
    assert isinstance(estimate, MIEstimate)
    values = json.loads(json.dumps(estimate.to_dict()))
    assert {"per_factor_nats", "variance", "kl_prior_nats", "total_nats", "ranking"} <= set(values)
    assert values["ranking"] == estimate.ranking.tolist()
    assert values["per_factor_nats"] == estimate.per_factor_nats.tolist()
    assert values["n_samples"] == 50
    with pytest.raises(ValueError):
        estimate.per_factor_nats[0] = 1.0


@pytest.mark.parametrize(
    ("mu", "logvar", "where"),
    [
        (np.zeros((4, 3)), np.zeros((4, 2)), "logvar"),
        (np.zeros(4), np.zeros(4), "mu"),
        (np.zeros((4, 0)), np.zeros((4, 0)), "mu"),
        (np.array([[0.0, np.nan]]), np.zeros((1, 2)), "mu"),
        (np.zeros((1, 2)), np.array([[0.0, -np.inf]]), "logvar"),
        (np.array([["a", "b"]]), np.zeros((1, 2)), "mu"),
        (np.zeros((2, 2), dtype=complex), np.zeros((2, 2)), "mu"),
    ],
)
def test_bad_input_names_the_array(mu, logvar, where):
    with pytest.raises(InputError) as info:
        estimate_mi(mu, logvar)
    assert info.value.where.startswith(where)


def test_accumulator_refuses_changed_width_and_empty_result():
    accumulator = MIAccumulator()
    with pytest.raises(InputError, match="no samples"):
        accumulator.result()
    accumulator.update(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(InputError, match="no samples"):
        accumulator.result()
    accumulator.update(np.ones((2, 3)), np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"batch 2.*4 factors; earlier batches had 3"):
        accumulator.update(np.ones((2, 4)), np.zeros((2, 4)))
    assert accumulator.result().n_samples == 2


def test_influential_factors_above_threshold_in_ranking_order():
    rng = np.random.default_rng(9)
    spreads = np.array([0.1, 3.0, 0.0, 1.0, 0.3])
    mu = rng.standard_normal((5_000, spreads.size)) * spreads
    estimate = estimate_mi(mu, np.zeros_like(mu))
    # Î ≈ ½ log(1 + spread²): 0.005, 1.15, 0, 0.35, 0.043 nats.
    np.testing.assert_array_equal(influential_factors(estimate), [1, 3])
    np.testing.assert_array_equal(influential_factors(estimate, threshold_nats=0.0), [1, 3, 4, 0])
    assert influential_factors(estimate, threshold_nats=10.0).size == 0
    for bad in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(InputError, match="threshold_nats"):
            influential_factors(estimate, threshold_nats=bad)
    with pytest.raises(InputError, match="estimate"):
        influential_factors({"per_factor_nats": [1.0]})


def test_topk_counts_for_128_and_32_factors():
    assert topk_factor_counts(128) == [
        (100, 128), (50, 64), (20, 26), (10, 13), (7, 9), (5, 7), (4, 6), (3, 4), (2, 3), (1, 2), (0, 0)
    ]  # fmt: skip
    assert topk_factor_counts(32) == [
        (100, 32), (50, 16), (20, 7), (10, 4), (7, 3), (5, 2), (4, 2), (3, 1), (2, 1), (1, 1), (0, 0)
    ]  # fmt: skip
    for n_factors in (1, 7, 100, 129):
        for percent, kept in topk_factor_counts(n_factors):
            assert kept == int(np.ceil(percent * n_factors / 100 - 1e-9))
            assert (kept >= 1) == (percent > 0)
    for bad_factors in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="n_factors"):
            topk_factor_counts(bad_factors)
    for bad_percents in ((101,), (-1,), (2.5,), (), 5):
        with pytest.raises(InputError, match="percents"):
            topk_factor_counts(10, bad_percents)


def test_topk_mask_keeps_the_most_informative():
    ranking = np.array([3, 0, 4, 1, 2])
    np.testing.assert_array_equal(topk_mask(ranking, 2), [True, False, False, True, False])
    assert not topk_mask(ranking, 0).any()
    assert topk_mask(ranking, 5).all()
    estimate = estimate_mi(*random_encoder(np.random.default_rng(10), 100, 10))
    kept = topk_mask(estimate.ranking, 3)
    assert estimate.per_factor_nats[kept].min() >= estimate.per_factor_nats[~kept].max()
    for bad_ranking in ([0, 0, 1], [1, 2, 3], [[0, 1]], [0.0, 1.0], []):
        with pytest.raises(InputError, match="ranking"):
            topk_mask(bad_ranking, 1)
    for bad_k in (-1, 6, 1.0, None):
        with pytest.raises(InputError) as info:
            topk_mask(ranking, bad_k)
        assert info.value.where == "k"

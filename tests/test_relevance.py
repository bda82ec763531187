"""Emotion relevance of latent factors: label information, permutation tests, BH, ablation, rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import norm

from pipeline.analysis.relevance import (
    ablation_accuracy_drop,
    benjamini_hochberg,
    factor_label_information,
    linked_factors,
    subject_aware_label_information,
    subject_share,
)
from pipeline.errors import InputError

N_FRAMES = 63


def make_latents(n_trials: int = 240, n_factors: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Factor 0 shifts with class, factor 1 is strong but label-free, the rest are noise."""
    rng = np.random.default_rng(seed)
    classes = np.tile(np.arange(4), n_trials // 4)
    mu = rng.normal(size=(n_trials, N_FRAMES, n_factors))
    mu[:, :, 0] += 0.6 * classes[:, None]
    mu[:, :, 1] = 5.0 * rng.normal(size=(n_trials, 1)) + 3.0 * mu[:, :, 1]
    return mu.astype(np.float32), classes


def test_class_factor_is_significant_and_label_free_factors_are_not():
    mu, classes = make_latents()
    result = factor_label_information(mu, classes, n_permutations=400, seed=1)

    assert result.q_values[0] < 0.05
    assert result.p_values[0] == pytest.approx(1 / 401)
    assert np.all(result.q_values[1:] >= 0.05)
    assert result.information_nats[0] > 0.5
    # The strong label-free factor carries no more label information than noise.
    assert result.relevance_nats[1] < 0.05
    assert np.all(result.relevance_nats[1:] < 0.05)
    assert result.information_nats[0] > 10 * result.information_nats[1:].max()


def test_information_matches_true_value_for_two_gaussian_classes():
    """Classes ±a with unit noise: I(X;Y) = h(mixture) − h(N(0,1)), from numerical integration."""
    rng = np.random.default_rng(3)
    n_trials = 2000
    classes = np.repeat([0, 1], n_trials // 2)
    for shift in (0.5, 1.0):
        summary = np.where(classes == 1, shift, -shift) + rng.normal(size=n_trials)
        mu = np.repeat(summary[:, None, None], 4, axis=1)
        result = factor_label_information(mu, classes, n_permutations=20, summaries=("mean",))

        def mixture(x, shift=shift):
            return 0.5 * (norm.pdf(x, -shift) + norm.pdf(x, shift))

        entropy = quad(lambda x, m=mixture: -m(x) * np.log(m(x)), -shift - 12, shift + 12)[0]
        true_nats = entropy - 0.5 * np.log(2 * np.pi * np.e)
        assert result.information_nats[0] == pytest.approx(true_nats, abs=0.03)


def test_std_summary_detects_a_class_that_changes_within_trial_variability():
    rng = np.random.default_rng(4)
    classes = np.repeat([0, 1], 60)
    mu = rng.normal(size=(120, N_FRAMES, 2)) * np.where(classes == 1, 2.0, 1.0)[:, None, None]
    mu[:, :, 1] = rng.normal(size=(120, N_FRAMES))
    both = factor_label_information(mu, classes, n_permutations=200)
    mean_only = factor_label_information(mu, classes, n_permutations=200, summaries=("mean",))

    assert both.p_values[0] < 0.01
    assert mean_only.p_values[0] > 0.01


def test_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(5)
    n_factors = 400
    classes = rng.integers(0, 4, size=100)
    mu = rng.normal(size=(100, 8, n_factors)).astype(np.float32)
    result = factor_label_information(mu, classes, n_permutations=199, seed=2)

    assert 0.02 <= np.mean(result.p_values < 0.05) <= 0.09
    assert 0.44 <= np.mean(result.p_values) <= 0.56
    assert np.mean(result.p_values < 0.5) == pytest.approx(0.5, abs=0.07)
    assert np.all(result.q_values > 0.05)
    # The null mean is the estimator's positive bias, about d(K-1)/(2n) nats.
    assert np.median(result.null_mean_nats) == pytest.approx(2 * 3 / (2 * 100), rel=0.25)


def test_deterministic_for_a_seed_and_different_across_seeds():
    mu, classes = make_latents(n_trials=120, n_factors=6)
    first = factor_label_information(mu, classes, n_permutations=100, seed=7)
    second = factor_label_information(mu, classes, n_permutations=100, seed=7)
    other = factor_label_information(mu, classes, n_permutations=100, seed=8)

    np.testing.assert_array_equal(first.p_values, second.p_values)
    np.testing.assert_array_equal(first.null_mean_nats, second.null_mean_nats)
    np.testing.assert_array_equal(first.information_nats, other.information_nats)
    assert not np.array_equal(first.p_values[1:], other.p_values[1:])


def test_q_values_cover_only_the_tested_family():
    mu, classes = make_latents(n_trials=120, n_factors=6)
    result = factor_label_information(mu, classes, n_permutations=100, factors=[0, 2, 3])

    assert np.isnan(result.q_values[[1, 4, 5]]).all()
    np.testing.assert_allclose(result.q_values[[0, 2, 3]], benjamini_hochberg(result.p_values[[0, 2, 3]]))
    report = result.to_dict()
    assert report["q_values"][1] is None
    assert report["smallest_possible_q"] == pytest.approx(3 / 101)
    assert report["tested"] == [0, 2, 3]


def test_constant_factor_has_zero_information_and_p_one():
    mu, classes = make_latents(n_trials=80, n_factors=3)
    mu[:, :, 2] = 0.25
    result = factor_label_information(mu, classes, n_permutations=50)

    assert result.information_nats[2] == 0.0
    assert result.p_values[2] == 1.0


def reference_bh(p_values: np.ndarray) -> np.ndarray:
    """Definition: q_i = min over all p_k >= p_i of m p_k / rank(p_k), capped at 1."""
    m = len(p_values)
    ranks = np.argsort(np.argsort(p_values, kind="stable"), kind="stable") + 1
    return np.array(
        [
            min(1.0, min(m * p_values[k] / ranks[k] for k in range(m) if p_values[k] >= p_values[i]))
            for i in range(m)
        ]
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_benjamini_hochberg_equals_the_definition(seed):
    rng = np.random.default_rng(seed)
    p_values = np.concatenate([rng.uniform(size=20), rng.uniform(0, 0.01, size=5), [0.5, 0.5, 1.0]])
    np.testing.assert_allclose(benjamini_hochberg(p_values), reference_bh(p_values), rtol=1e-12)


def test_benjamini_hochberg_known_values():
    # Sorted 0.01, 0.03, 0.04, 0.5 -> 4p/rank = 0.04, 0.06, 0.0533, 0.5, then running minimum from the top.
    expected = [0.04, 4 * 0.04 / 3, 4 * 0.04 / 3, 0.5]
    np.testing.assert_allclose(benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5])), expected)


@pytest.mark.parametrize(
    ("mi_nats", "q_value", "linked"),
    [
        (0.30, 0.01, True),
        (0.30, 0.20, False),
        (0.01, 0.01, False),
        (0.01, 0.20, False),
        (0.05, 0.01, False),  # at the threshold is not above it
        (0.30, 0.05, False),  # q must be strictly below alpha
        (0.30, np.nan, False),  # not tested
    ],
)
def test_linked_rule_truth_table(mi_nats, q_value, linked):
    assert linked_factors(np.array([mi_nats]), np.array([q_value]))[0] == linked


def test_linked_rule_uses_its_thresholds():
    mi_nats = np.array([0.1, 0.3, 0.3])
    q_values = np.array([0.001, 0.001, 0.08])
    np.testing.assert_array_equal(linked_factors(mi_nats, q_values), [True, True, False])
    np.testing.assert_array_equal(
        linked_factors(mi_nats, q_values, influential_threshold_nats=0.2, alpha=0.1), [False, True, True]
    )


def test_ablation_drop_equals_each_factors_contribution():
    contribution = np.array([0.10, 0.0, 0.25, 0.02, 0.05])
    seen_masks = []

    def accuracy_with_mask(mask: np.ndarray) -> float:
        seen_masks.append(mask.copy())
        return 0.3 + float(contribution[mask].sum())

    drops = ablation_accuracy_drop(accuracy_with_mask, 5, [2, 0, 4])

    np.testing.assert_allclose(drops, [0.25, 0.10, 0.05])
    assert seen_masks[0].all()
    for mask, factor in zip(seen_masks[1:], [2, 0, 4], strict=True):
        assert mask.dtype == bool and mask.shape == (5,)
        assert np.flatnonzero(~mask).tolist() == [factor]


def test_bad_inputs_name_what_is_wrong():
    mu, classes = make_latents(n_trials=40, n_factors=3)
    with pytest.raises(InputError, match="classes"):
        factor_label_information(mu, classes[:-1])
    with pytest.raises(InputError, match="classes"):
        factor_label_information(mu, classes.astype(np.float64))
    with pytest.raises(InputError, match="classes"):
        factor_label_information(mu, np.zeros(40, dtype=int))
    with pytest.raises(InputError, match="mu"):
        factor_label_information(mu[0], classes)
    with pytest.raises(InputError, match="summaries"):
        factor_label_information(mu, classes, summaries=("median",))
    with pytest.raises(InputError, match="n_permutations"):
        factor_label_information(mu, classes, n_permutations=0)
    with pytest.raises(InputError, match="factors"):
        factor_label_information(mu, classes, factors=[0, 3])
    with pytest.raises(InputError, match="label_q_values"):
        linked_factors(np.array([0.1, 0.2]), np.array([0.01]))
    with pytest.raises(InputError, match="p_values"):
        benjamini_hochberg(np.array([0.1, 1.2]))
    with pytest.raises(InputError, match="accuracy_with_mask"):
        ablation_accuracy_drop(lambda mask: float("nan"), 3, [0])


def test_linked_rule_can_require_a_minimum_relevance():
    mi = np.array([0.5, 0.5, 0.5, 0.01])
    q = np.array([0.001, 0.001, 0.2, 0.001])
    relevance = np.array([0.4, 0.05, 0.4, 0.4])
    assert linked_factors(mi, q).tolist() == [True, True, False, False]
    assert linked_factors(mi, q, relevance_nats=relevance, min_relevance_nats=0.1).tolist() == [
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(InputError, match="relevance_nats"):
        linked_factors(mi, q, relevance_nats=relevance[:2], min_relevance_nats=0.1)


# ---------------------------------------------------------------- within subject


def habit_trials(n_subjects: int = 8, n_trials: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Classes and subjects of trials whose subjects have rating habits, as in real DEAP.

    Odd subjects put 80 % of their trials in the high-arousal classes (2, 3), even subjects 80 %
    in the low ones (0, 1); valence (the class's low bit) is balanced. Trials sorted by subject.
    """
    rng = np.random.default_rng(seed)
    classes, subjects = [], []
    for subject in range(1, n_subjects + 1):
        high = rng.permutation(np.arange(n_trials) < round(0.8 * n_trials))
        high = high if subject % 2 else ~high
        valence = rng.permutation(np.arange(n_trials) % 2)
        classes.append(2 * high + valence)
        subjects.append(np.full(n_trials, subject))
    return np.concatenate(classes), np.concatenate(subjects)


def test_a_factor_that_is_a_subject_offset_has_pooled_but_no_within_subject_information():
    classes, subjects = habit_trials()
    rng = np.random.default_rng(1)
    habit = np.where(subjects % 2 == 1, 1.0, -1.0)  # the subject's rating habit
    offset = habit + 0.3 * rng.normal(size=8)[subjects - 1]  # plus who the subject is
    mu = rng.normal(scale=0.3, size=(classes.size, 10, 2))
    mu[:, :, 0] += offset[:, None]

    result = subject_aware_label_information(
        mu, classes, subjects, n_permutations=400, seed=3, summaries=("mean",)
    )

    assert result.pooled.p_values[0] == pytest.approx(1 / 401)
    # I(habit; arousal class) is log 2 - H(0.8) = 0.19 nats: the factor carries much of it.
    assert result.pooled.relevance_nats[0] > 0.1
    assert result.within.relevance_nats[0] < 0.02
    assert result.within.p_values[0] > 0.05
    assert result.subject_share[0] > 0.9 and result.subject_share[1] < 0.15
    assert result.subject_driven(0.05).tolist() == [True, False]
    # Nor does the rule link it: within-subject q-values decide.
    linked = linked_factors(
        np.array([1.0, 1.0]), result.within.q_values, relevance_nats=result.within.relevance_nats
    )
    assert not linked.any()


def test_a_genuine_within_subject_effect_under_large_subject_offsets_is_found():
    classes, subjects = habit_trials(seed=2)
    rng = np.random.default_rng(4)
    valence = classes % 2
    mu = rng.normal(size=(classes.size, 10, 2))
    # A modest valence effect buried under subject offsets four times its size.
    mu[:, :, 0] += (0.5 * valence + 2.0 * rng.normal(size=8)[subjects - 1])[:, None]

    result = subject_aware_label_information(
        mu, classes, subjects, n_permutations=400, seed=3, summaries=("mean",)
    )

    assert result.within.p_values[0] == pytest.approx(1 / 401)
    assert result.within.relevance_nats[0] > 2 * result.pooled.relevance_nats[0]
    assert result.within.q_values[1] > 0.05
    assert not result.subject_driven(0.05)[0]


def test_within_subject_p_values_are_uniform_under_the_null_despite_habits_and_offsets():
    classes, subjects = habit_trials(n_subjects=6, n_trials=20, seed=5)
    rng = np.random.default_rng(6)
    n_factors = 300
    mu = rng.normal(size=(classes.size, 4, n_factors)) + 3 * rng.normal(size=(6, 1, n_factors))[subjects - 1]
    result = factor_label_information(
        mu, classes, n_permutations=199, seed=2, summaries=("mean",), subjects=subjects
    )

    assert 0.02 <= np.mean(result.p_values < 0.05) <= 0.09
    assert 0.44 <= np.mean(result.p_values) <= 0.56
    assert np.all(result.q_values > 0.05)


def test_within_subject_shuffles_keep_every_subjects_class_counts():
    from pipeline.analysis.copula_mi import permuted_within_groups

    classes, subjects = habit_trials(n_subjects=3, n_trials=10)
    order = np.random.default_rng(0).permutation(classes.size)  # trials in any order
    classes, subjects = classes[order], subjects[order]
    groups = subjects - 1
    shuffles = permuted_within_groups(classes, groups, 200, np.random.default_rng(1))

    for subject in range(3):
        mine = groups == subject
        assert all(sorted(row[mine]) == sorted(classes[mine]) for row in shuffles)
    assert np.mean(shuffles == classes) < 0.6  # they do move


def test_with_one_subject_within_subject_is_the_pooled_analysis():
    mu, classes = make_latents(n_trials=80, n_factors=3)
    result = subject_aware_label_information(mu, classes, np.full(80, 7), n_permutations=100)
    assert result.within_equals_pooled and result.n_subjects == 1
    # Computed explicitly, the within-subject analysis of one subject gives the same numbers.
    within = factor_label_information(mu, classes, n_permutations=100, subjects=np.full(80, 7))
    np.testing.assert_allclose(within.information_nats, result.pooled.information_nats)
    np.testing.assert_array_equal(within.p_values, result.pooled.p_values)
    described = result.to_dict()
    assert described["within_equals_pooled"] is True and described["n_subjects"] == 1
    np.testing.assert_array_equal(result.subject_share, 0.0)


def test_subject_share_is_eta_squared():
    subjects = np.repeat([1, 2, 3], 4)
    summary = np.array([1.0, 2, 3, 2, 5, 6, 7, 6, 0, 1, 0, 1])
    mu = np.stack([summary, np.tile([0.0, 1, 2, 3], 3)], axis=-1)[:, None, :].repeat(2, axis=1)
    means = np.array([2.0, 6, 0.5])[subjects - 1]
    eta2 = ((means - summary.mean()) ** 2).sum() / ((summary - summary.mean()) ** 2).sum()
    share = subject_share(mu, subjects)
    assert share[0] == pytest.approx(eta2)
    assert share[1] == 0.0  # the same pattern in every subject: no subject variance
    with pytest.raises(InputError, match="one subject per trial"):
        subject_share(mu, subjects[:-1])


def test_a_subject_rhythm_with_a_trace_of_emotion_is_subject_driven_and_a_weak_effect_is_not():
    classes, subjects = habit_trials(n_subjects=8, n_trials=40, seed=7)
    rng = np.random.default_rng(8)
    valence = classes % 2
    habit = np.where(subjects % 2 == 1, 1.0, -1.0)
    mu = rng.normal(size=(classes.size, 10, 2))
    # Factor 0: the subject's habit plus a faint genuine valence trace; factor 1: a weak genuine effect alone.
    mu[:, :, 0] = (3.0 * habit + 0.15 * valence)[:, None] + rng.normal(size=(classes.size, 10))
    mu[:, :, 1] += 0.4 * valence[:, None]

    result = subject_aware_label_information(
        mu, classes, subjects, n_permutations=400, seed=3, summaries=("mean",)
    )

    assert result.within.q_values[0] < 0.05 and result.within.relevance_nats[0] < 0.1  # a trace
    assert result.pooled.relevance_nats[0] > 2 * result.within.relevance_nats[0]
    assert result.within.q_values[1] < 0.05 and result.pooled.q_values[1] < 0.05
    assert result.subject_driven(0.05, min_relevance_nats=0.1).tolist() == [True, False]
    # Without the minimum the trace counts as passing within subject, and nothing is subject-driven.
    assert result.subject_driven(0.05).tolist() == [False, False]

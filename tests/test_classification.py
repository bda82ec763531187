"""Honest classification figures: Wilson interval, majority baseline, permutation p-value."""

import numpy as np
import pytest

from pipeline.analysis.classification import (
    accuracy_summary,
    chance_verdict,
    majority_accuracy,
    permutation_p_value,
    wilson_interval,
)
from pipeline.errors import InputError


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        # Published values of the 95 % Wilson score interval (Newcombe 1998, Table I; Wilson 1927).
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
        (8, 10, (0.4902, 0.9433)),
    ],
)
def test_wilson_interval_matches_published_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert low == pytest.approx(expected[0], abs=1e-4)
    assert high == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_is_not_the_normal_approximation_and_stays_in_zero_one():
    # The Wald interval of 1/10 reaches below 0; Wilson's does not, and it is not centred on 0.1.
    low, high = wilson_interval(1, 10)
    wald_half_width = 1.96 * np.sqrt(0.1 * 0.9 / 10)
    assert 0.1 - wald_half_width < 0 < low
    assert (low + high) / 2 > 0.1
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


@pytest.mark.parametrize(("successes", "n"), [(-1, 10), (11, 10), (3, 0), (True, 5), (2.5, 5)])
def test_wilson_interval_refuses_impossible_counts(successes, n):
    with pytest.raises(InputError):
        wilson_interval(successes, n)


def test_majority_accuracy_uses_the_training_class_not_the_test_one():
    train = np.array([2, 2, 2, 0, 1, 3])
    # The test split's largest class is 1, but the majority baseline predicts 2 (training's).
    test = np.array([1, 1, 1, 1, 2, 0, 3, 3])
    assert majority_accuracy(train, test) == pytest.approx(1 / 8)


def test_majority_accuracy_breaks_ties_towards_the_smallest_class():
    assert majority_accuracy(np.array([3, 3, 1, 1]), np.array([1, 1, 3])) == pytest.approx(2 / 3)


def test_permutation_p_value_of_predictions_that_carry_nothing_is_not_small():
    rng = np.random.default_rng(0)
    p_values = []
    for _ in range(60):
        classes = rng.integers(0, 4, size=40)
        predicted = rng.integers(0, 4, size=40)  # independent of the labels
        p_values.append(
            permutation_p_value(predicted, classes, n_permutations=400, seed=int(rng.integers(1000)))
        )
    p_values = np.asarray(p_values)
    # Under the null the p-value is uniform: about 5 % fall below 0.05 and the median is near 0.5.
    assert np.mean(p_values < 0.05) <= 0.12
    assert 0.35 < np.median(p_values) < 0.7


def test_permutation_p_value_of_informative_predictions_is_small():
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 4, size=40)
    predicted = classes.copy()
    wrong = rng.choice(40, size=16, replace=False)  # 60 % accuracy, chance is about 25 %
    predicted[wrong] = (classes[wrong] + 1) % 4
    n_permutations = 2000
    p_value = permutation_p_value(predicted, classes, n_permutations=n_permutations, seed=0)
    assert p_value == pytest.approx(1 / (n_permutations + 1))


def test_predicting_the_majority_class_everywhere_is_not_distinguishable_from_chance():
    # High accuracy from class imbalance alone: 30 of 40 test trials are class 0 and the model
    # always says 0. Shuffling labels keeps the class counts, so every shuffle scores the same.
    classes = np.array([0] * 30 + [1] * 10)
    predicted = np.zeros(40, dtype=np.int64)
    summary = accuracy_summary(predicted, classes, np.array([0, 0, 1]), n_permutations=500)
    assert summary["test_accuracy"] == pytest.approx(0.75)
    assert summary["majority_accuracy"] == pytest.approx(0.75)
    assert summary["permutation_p_value"] == 1.0
    assert not summary["distinguishable_from_chance"]
    assert "NOT distinguishable from chance" in chance_verdict(summary)


def test_accuracy_summary_figures_agree_with_each_other():
    rng = np.random.default_rng(2)
    classes = rng.integers(0, 4, size=32)
    predicted = np.where(rng.random(32) < 0.7, classes, (classes + 1) % 4)
    summary = accuracy_summary(predicted, classes, rng.integers(0, 4, size=100), n_permutations=300)
    correct = int(np.sum(predicted == classes))
    assert summary["test_accuracy"] == pytest.approx(correct / 32)
    assert summary["accuracy_ci95"] == pytest.approx(list(wilson_interval(correct, 32)))
    assert summary["accuracy_ci95"][0] < summary["test_accuracy"] < summary["accuracy_ci95"][1]
    assert summary["chance_accuracy"] == pytest.approx(np.bincount(classes).max() / 32)
    assert summary["distinguishable_from_chance"] and "distinguishable from chance" in chance_verdict(summary)


def test_mismatched_predictions_are_refused():
    with pytest.raises(InputError, match="predictions"):
        permutation_p_value(np.zeros(3, dtype=int), np.zeros(4, dtype=int))

"""How far a test accuracy can be trusted: its interval, the baselines, and a permutation test.

A 4-class accuracy on a few dozen test trials means little alone: its 95 % Wilson interval is
often ±0.15 wide, and a classifier that always predicts the most frequent training class
already scores the share of that class among the test trials. The permutation test asks
whether the predictions carry anything about the labels: the test labels are shuffled against
the fixed predictions, and the p-value is the share of shuffles that score at least as high.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from pipeline.errors import InputError

CONFIDENCE = 0.95
DEFAULT_PERMUTATIONS = 10_000
DEFAULT_ALPHA = 0.05


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``.

    Unlike the normal approximation it stays inside [0, 1] and keeps its coverage for small
    ``n`` and proportions near 0 or 1.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InputError("n", f"{n!r} must be a positive integer")
    if isinstance(successes, bool) or not isinstance(successes, int | np.integer) or not 0 <= successes <= n:
        raise InputError("successes", f"{successes!r} must be an integer in [0, {n}]")
    if not 0 < confidence < 1:
        raise InputError("confidence", f"{confidence!r} must lie in (0, 1)")
    z = float(norm.ppf(0.5 + confidence / 2))
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half_width = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def _classes(values, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise InputError(
            name, f"shape {values.shape}, dtype {values.dtype}; expected a non-empty 1-D int array"
        )
    return values.astype(np.int64)


def majority_accuracy(train_classes, test_classes) -> float:
    """Accuracy on the test trials of always predicting the training split's most frequent class.

    Ties go to the smallest class index, so the baseline never looks at the test labels.
    """
    train_classes = _classes(train_classes, "train_classes")
    test_classes = _classes(test_classes, "test_classes")
    majority = int(np.argmax(np.bincount(train_classes)))
    return float(np.mean(test_classes == majority))


def permutation_p_value(
    predicted, classes, n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0
) -> float:
    """P-value of the accuracy of fixed ``predicted`` classes against shuffled true ``classes``.

    ``(1 + #{shuffles scoring >= the observed accuracy}) / (1 + n_permutations)``: never 0, and
    exact under the null that predictions and labels are unrelated.
    """
    predicted = _classes(predicted, "predicted")
    classes = _classes(classes, "classes")
    if predicted.shape != classes.shape:
        raise InputError("predicted", f"{predicted.size} predictions for {classes.size} trials")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, int) or n_permutations < 1:
        raise InputError("n_permutations", f"{n_permutations!r} must be a positive integer")
    observed = int(np.sum(predicted == classes))
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.broadcast_to(classes, (n_permutations, classes.size)), axis=1)
    as_good = int(np.sum((shuffled == predicted).sum(axis=1) >= observed))
    return (1 + as_good) / (1 + n_permutations)


def accuracy_summary(
    predicted,
    classes,
    train_classes,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
) -> dict:
    """The honest figures for one protocol's test trials, JSON-native.

    Returns
    -------
    dict
        ``test_accuracy``, ``accuracy_ci95`` [lo, hi], ``chance_accuracy`` (the test split's
        largest class share), ``majority_accuracy``, ``permutation_p_value``,
        ``n_permutations`` and ``distinguishable_from_chance`` (p < ``alpha``).
    """
    predicted = _classes(predicted, "predicted")
    classes = _classes(classes, "classes")
    if predicted.shape != classes.shape:
        raise InputError("predicted", f"{predicted.size} predictions for {classes.size} trials")
    correct = int(np.sum(predicted == classes))
    low, high = wilson_interval(correct, classes.size)
    p_value = permutation_p_value(predicted, classes, n_permutations, seed)
    return {
        "test_accuracy": correct / classes.size,
        "accuracy_ci95": [low, high],
        "chance_accuracy": float(np.bincount(classes).max() / classes.size),
        "majority_accuracy": majority_accuracy(train_classes, classes),
        "permutation_p_value": p_value,
        "n_permutations": n_permutations,
        "distinguishable_from_chance": bool(p_value < alpha),
    }


def chance_verdict(summary: dict) -> str:
    """One sentence for a headline: is the accuracy distinguishable from chance?"""
    low, high = summary["accuracy_ci95"]
    figures = (
        f"accuracy {summary['test_accuracy']:.2f} (95 % CI {low:.2f}–{high:.2f}; majority class "
        f"{summary['majority_accuracy']:.2f}; permutation p = {summary['permutation_p_value']:.3g})"
    )
    if summary["distinguishable_from_chance"]:
        return f"{figures}: distinguishable from chance"
    return f"{figures}: NOT distinguishable from chance"

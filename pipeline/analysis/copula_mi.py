"""The estimator behind :mod:`pipeline.analysis.relevance`: Gaussian-copula information about a class.

Each trial is summarised per factor by statistics of its latent means ``mu_j`` over the
trial's frames (by default the trial mean and the trial standard deviation: a factor may
shift with emotion, or fluctuate more or less within a trial). Each summary is replaced by
its normal scores (rank-based Gaussian copula transform, as in Ince et al. 2017, "A
statistical framework for neuroimaging data analysis based on mutual information estimated
via a Gaussian copula"), which makes the estimate insensitive to outliers and to any
monotone distortion of the latent axis. Then, with T the total and W the pooled
within-class scatter matrix of the d summaries,

    Î(Z_j; Y) = ½ log(det T / det W)        (nats; = −½ log of Wilks' Λ)

which is the mutual information between a Gaussian with class-dependent mean and the
class. It needs only class sums, so all factors and all label permutations are evaluated
in one batched matrix product.

Arrays in, arrays out; the inputs are checked by the callers in :mod:`pipeline.analysis.relevance`.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata

from pipeline.progress import Progress, report

# Relative to the ~unit variance of normal scores: keeps det W > 0 for a constant summary or a
# perfectly separated class, and caps each summary's contribution at about ½ log(1e6) ≈ 7 nats.
_RIDGE = 1e-6
# Bounds the one-hot class matrices to about 16 MB per 1000 trials.
_LABELINGS_PER_BATCH = 500


def information_and_permuted(
    scores: np.ndarray,
    codes: np.ndarray,
    groups: np.ndarray,
    n_classes: int,
    n_permutations: int,
    seed: int,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Î of every factor on the true class codes (H,) and on ``n_permutations`` shuffles (P, H).

    ``scores`` (n, H, d) are normal scores; each shuffle moves classes only among the trials
    of one group (:func:`permuted_within_groups`), drawn from ``numpy.random.default_rng(seed)``
    in batches; ``progress`` follows the labelings.
    """
    rng = np.random.default_rng(seed)
    stage = "permutation tests (labelings)"
    parts = [gaussian_label_information(scores, np.asarray(codes)[None, :], n_classes)]
    report(progress, stage, 0, n_permutations)
    for start in range(0, n_permutations, _LABELINGS_PER_BATCH):
        n_batch = min(_LABELINGS_PER_BATCH, n_permutations - start)
        labelings = permuted_within_groups(codes, groups, n_batch, rng)
        parts.append(gaussian_label_information(scores, labelings, n_classes))
        report(progress, stage, start + n_batch, n_permutations)
    information = np.concatenate(parts)
    return information[0], information[1:]


def centred_per_group(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` (n, ...) minus the mean of its group along the first axis."""
    counts = np.bincount(groups).astype(np.float64)
    sums = np.zeros((counts.size, *values.shape[1:]))
    np.add.at(sums, groups, values)
    means = sums / counts.reshape(-1, *([1] * (values.ndim - 1)))
    return values - means[groups]


def permuted_within_groups(
    codes: np.ndarray, groups: np.ndarray, n_labelings: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_labelings, n) shuffles of ``codes`` in which each value stays within its group.

    Sorting random keys offset by the group code lists every group's positions together, in a
    random order within the group; the stable sort of the group codes lists them in their own
    order. Mapping one onto the other moves each trial's class to a random trial of its group.
    """
    order = np.argsort(groups, kind="stable")
    shuffled = np.argsort(groups[None, :] + rng.random((n_labelings, groups.size)), axis=1)
    labelings = np.empty((n_labelings, groups.size), dtype=codes.dtype)
    labelings[:, order] = codes[shuffled]
    return labelings


def trial_summaries(mu: np.ndarray, summaries: tuple[str, ...]) -> np.ndarray:
    """(n_trials, H, d) statistics of each factor's latent mean over a trial's frames."""
    compute = {"mean": lambda: mu.mean(axis=1), "std": lambda: mu.std(axis=1)}
    return np.stack([compute[name]() for name in summaries], axis=-1)


def normal_scores(values: np.ndarray) -> np.ndarray:
    """Rank-based Gaussianisation along the trial axis (ties share their average rank)."""
    ranks = rankdata(values, axis=0)
    return norm.ppf(ranks / (values.shape[0] + 1.0))


def gaussian_label_information(scores: np.ndarray, labelings: np.ndarray, n_classes: int) -> np.ndarray:
    """½ log(det T / det W) for every labeling (rows) and factor (columns), shape (L, H).

    scores: (n, H, d); labelings: (L, n) class codes in [0, n_classes), all with the same class
    counts, so T and the counts are shared and only the class sums change per labeling.
    """
    n_trials, n_factors, n_summaries = scores.shape
    centred = scores - scores.mean(axis=0)
    ridge = _RIDGE * n_trials * np.eye(n_summaries)
    total = np.einsum("nhd,nhe->hde", centred, centred) + ridge

    counts = np.bincount(labelings[0], minlength=n_classes).astype(np.float64)
    one_hot = (labelings[:, None, :] == np.arange(n_classes)[None, :, None]).astype(np.float64)
    class_sums = (one_hot @ centred.reshape(n_trials, -1)).reshape(
        len(labelings), n_classes, n_factors, n_summaries
    )
    # The grand mean is zero, so the between-class scatter is Σ_k S_k S_kᵀ / n_k.
    between = np.einsum("lkhd,lkhe->lhde", class_sums / counts[None, :, None, None], class_sums)
    _, logdet_total = np.linalg.slogdet(total)
    _, logdet_within = np.linalg.slogdet(total[None] - between)
    # W ≥ 0 in exact arithmetic; clipping removes rounding below zero for label-free factors.
    return np.maximum(0.5 * (logdet_total[None] - logdet_within), 0.0)

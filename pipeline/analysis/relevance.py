"""Which latent factors carry emotion: label information, ablation, and the emotion-linked rule.

Everything here must only ever see the *selection* trials (training + validation): the
relevance of a factor decides which factors are reported, so computing it on test trials
would leak the test labels into the choice. The caller slices the trials; these functions
cannot tell, so they trust it.

Label information
    Î(Z_j; Y), the Gaussian-copula information between each factor's trial summaries (by
    default the trial mean and standard deviation of ``mu_j``) and the class; the estimator is
    described in :mod:`pipeline.analysis.copula_mi`. Under the null it is positive by about
    d(K−1)/(2n) nats; ``relevance_nats`` subtracts the mean over the permutations to remove
    that bias.

Significance
    Class labels are shuffled ``n_permutations`` times (the same permutations for every
    factor) and p = (1 + #{permuted Î ≥ observed Î}) / (1 + n_permutations). The p-values of
    the tested factors are corrected together with Benjamini–Hochberg into q-values. A
    permutation p-value is never below 1/(1 + n_permutations), so with m tested factors no
    q-value can fall below m/(1 + n_permutations): 200 permutations can never pass q < 0.05
    for more than 10 tested factors. Hence the default of 2000 permutations (well under a
    second for 128 factors and 1000 trials), and testing only the influential factors.

Within subject
    Subjects differ far more than emotions do, and subjects use the rating scales differently
    (some rate almost every video high-arousal). Pooled over subjects, a factor that encodes
    only *who* was recorded then carries information about the class. So the same estimate is
    also made *within subject*: each trial summary has its subject's mean removed before the
    normal scores, and the labels are shuffled only among the trials of one subject (each
    subject keeps its own class counts, so its habit is part of the null). A factor that
    encodes the subject alone then has no within-subject information, whatever its pooled
    value. With a single subject the two analyses are one and the same.

    A factor's *subject share* is η², the fraction of the variance of its trial summaries that
    the subject explains (between-subject over total sum of squares; averaged over the
    summaries): near 1 for a factor that tells subjects apart, near 1/n_trials-per-subject for
    one that does not.

Emotion-linked rule
    A factor j is *emotion-linked* if and only if it is **influential**, Î(X; Z_j) >
    ``influential_threshold_nats`` (0.05 nats by default), **and** its label information is
    **significant**, BH q-value < ``alpha`` (0.05 by default), **and**, when a minimum is given,
    its bias-corrected label information reaches ``min_relevance_nats``. The minimum keeps a
    factor that is mostly something else (a label-free rhythm, say) but mixes in a trace of an
    emotion factor from being called emotion-linked just because many trials make the trace
    significant. A factor that was not tested (q-value NaN) is never linked. Reports apply the
    rule to the *within-subject* q-values and relevance.

Subject-driven
    A factor is *subject-driven* when its pooled test is significant while within subject it
    does not pass (q >= ``alpha``, or less than ``min_relevance_nats``), and the within-subject
    relevance is under half the pooled one: most of what it tells about the class, it tells by
    telling subjects apart. The last condition keeps a factor whose pooled and within-subject
    figures agree (a weak but genuine effect) from being called subject-driven; the middle one
    keeps a linked factor from being called both. A VAE factor that carries a subject's rhythm
    often mixes in a trace of a genuine effect, significant within subject but far below the
    minimum; a plain "within not significant" would let such a factor through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import false_discovery_control

from pipeline.analysis.copula_mi import (
    centred_per_group,
    information_and_permuted,
    normal_scores,
    trial_summaries,
)
from pipeline.errors import InputError
from pipeline.progress import Progress
from pipeline.validators import check_positive_int

SUMMARIES: tuple[str, ...] = ("mean", "std")
# Permuted values this close to the observed one count as ties (and so against significance).
_TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class LabelInformation:
    """Per-factor information about the class label, with permutation significance.

    Attributes
    ----------
    information_nats : ndarray, shape (H,)
        Plug-in estimate of I(Z_j; Y) on the true labels.
    null_mean_nats : ndarray, shape (H,)
        Its mean over the label permutations (the estimator's bias at this sample size).
    relevance_nats : ndarray, shape (H,)
        ``information_nats - null_mean_nats`` floored at 0: the value to report.
    p_values : ndarray, shape (H,)
        Permutation p-values of every factor.
    q_values : ndarray, shape (H,)
        Benjamini–Hochberg over the ``tested`` factors only; NaN elsewhere.
    tested : ndarray of int
        The factors forming the multiple-testing family.
    n_subjects : int
        Number of subjects the permutations were confined to: 1 for the pooled analysis.
    """

    information_nats: np.ndarray
    null_mean_nats: np.ndarray
    relevance_nats: np.ndarray
    p_values: np.ndarray
    q_values: np.ndarray
    tested: np.ndarray
    summaries: tuple[str, ...]
    n_trials: int
    n_classes: int
    n_permutations: int
    seed: int
    n_subjects: int = 1

    def to_dict(self) -> dict:
        """JSON-native form (NaN becomes None)."""

        def listed(values: np.ndarray) -> list:
            return [None if np.isnan(v) else float(v) for v in values]

        return {
            "estimator": "gaussian-copula pooled-covariance (-1/2 log Wilks lambda)",
            "information_nats": listed(self.information_nats),
            "null_mean_nats": listed(self.null_mean_nats),
            "relevance_nats": listed(self.relevance_nats),
            "p_values": listed(self.p_values),
            "q_values": listed(self.q_values),
            "tested": self.tested.tolist(),
            "summaries": list(self.summaries),
            "n_trials": self.n_trials,
            "n_classes": self.n_classes,
            "n_permutations": self.n_permutations,
            "smallest_possible_q": min(1.0, self.tested.size / (1.0 + self.n_permutations)),
            "seed": self.seed,
            "n_subjects": self.n_subjects,
        }


def factor_label_information(
    mu: np.ndarray,
    classes: np.ndarray,
    n_permutations: int = 2000,
    seed: int = 0,
    summaries: Sequence[str] = SUMMARIES,
    factors: Sequence[int] | None = None,
    subjects: np.ndarray | None = None,
    progress: Progress | None = None,
) -> LabelInformation:
    """Estimate I(Z_j; Y) per latent factor with a permutation p-value and a BH q-value.

    Parameters
    ----------
    mu : ndarray, shape (n_trials, n_frames, H)
        Latent means of every frame of the **selection trials only** (training + validation);
        never pass test trials.
    classes : ndarray of int, shape (n_trials,)
        Emotion class of each trial. Every class present needs at least 2 trials.
    n_permutations : int
        Number of label shuffles for the p-values. The smallest possible q-value is
        len(factors)/(1 + n_permutations); keep it well below the false discovery rate used.
    seed : int
        Seed of the permutations; the result is deterministic given it.
    summaries : sequence of {"mean", "std"}
        Trial-level statistics of ``mu_j`` over the frames that the estimate sees.
    factors : sequence of int, optional
        The factors forming the multiple-testing family for the q-values (for example the
        influential ones); all factors by default.
    subjects : ndarray, shape (n_trials,), optional
        Subject of each trial. When given, the estimate is *within subject*: each summary is
        centred on its subject's mean and labels are shuffled only within a subject. Without
        it (or with one subject) the analysis is pooled.
    progress : callable, optional
        ``progress(stage, done, total)`` over the labelings (see :mod:`pipeline.progress`).

    Returns
    -------
    LabelInformation
        ``information_nats`` (plug-in estimate), ``null_mean_nats`` (its mean under shuffled
        labels), ``relevance_nats`` (the difference, floored at 0), ``p_values``, ``q_values``.
    """
    mu = _check_mu(mu)
    n_trials, _, n_factors = mu.shape
    codes, n_classes = _check_classes(classes, n_trials)
    summaries = _check_summaries(summaries, mu.shape[1])
    check_positive_int("n_permutations", n_permutations)
    if n_trials < n_classes + len(summaries) + 1:
        raise InputError(
            "mu", f"{n_trials} trials are too few for {n_classes} classes and {len(summaries)} summaries"
        )
    tested = _check_factor_indices(factors, n_factors, "factors")
    groups = _subject_codes(subjects, n_trials)

    summary_values = trial_summaries(mu, summaries)
    if groups.max() > 0:
        summary_values = centred_per_group(summary_values, groups)
    observed, null = information_and_permuted(
        normal_scores(summary_values), codes, groups, n_classes, n_permutations, seed, progress
    )

    p_values = (1.0 + np.sum(null >= observed - _TIE_TOLERANCE, axis=0)) / (1.0 + n_permutations)
    q_values = np.full(n_factors, np.nan)
    q_values[tested] = benjamini_hochberg(p_values[tested])
    null_mean = null.mean(axis=0)
    return LabelInformation(
        information_nats=observed,
        null_mean_nats=null_mean,
        relevance_nats=np.maximum(observed - null_mean, 0.0),
        p_values=p_values,
        q_values=q_values,
        tested=tested,
        summaries=summaries,
        n_trials=n_trials,
        n_classes=n_classes,
        n_permutations=int(n_permutations),
        seed=seed,
        n_subjects=int(groups.max()) + 1,
    )


def subject_share(mu: np.ndarray, subjects: np.ndarray, summaries: Sequence[str] = ("mean",)) -> np.ndarray:
    """η² per factor: the share of the variance of its trial summaries that the subject explains.

    Parameters
    ----------
    mu : ndarray, shape (n_trials, n_frames, H)
        Latent means of each trial's frames (the frames the relevance sees).
    subjects : ndarray, shape (n_trials,)
        Subject of each trial.
    summaries : sequence of {"mean", "std"}
        Trial statistics, as in :func:`factor_label_information`; η² is averaged over them.

    Returns
    -------
    ndarray of float64, shape (H,)
        Between-subject over total sum of squares, in [0, 1]; 0 for a factor that is constant
        over the trials.
    """
    mu = _check_mu(mu)
    summaries = _check_summaries(summaries, mu.shape[1])
    groups = _subject_codes(subjects, mu.shape[0])
    values = trial_summaries(mu, summaries)
    total = ((values - values.mean(axis=0)) ** 2).sum(axis=0)
    within = (centred_per_group(values, groups) ** 2).sum(axis=0)
    share = np.divide(total - within, total, out=np.zeros_like(total), where=total > 0)
    return np.clip(share, 0.0, 1.0).mean(axis=-1)


@dataclass(frozen=True)
class SubjectAwareRelevance:
    """Label information of each factor pooled over subjects and within subject, and its subject share.

    ``within`` is the analysis the emotion-linked rule uses; ``pooled`` is kept for comparison.
    With one subject both are the same object (``within_equals_pooled``).
    """

    pooled: LabelInformation
    within: LabelInformation
    subject_share: np.ndarray

    @property
    def n_subjects(self) -> int:
        return self.within.n_subjects

    @property
    def within_equals_pooled(self) -> bool:
        return self.within is self.pooled

    def subject_driven(self, alpha: float, min_relevance_nats: float = 0.0) -> np.ndarray:
        """Tested factors significant pooled, not passing within subject, and mostly between subjects.

        See the module docstring: pooled q < ``alpha``; within subject q >= ``alpha`` or relevance
        below ``min_relevance_nats``; within-subject relevance under half the pooled relevance.
        """
        within_passes = _significant(self.within.q_values, alpha) & (
            self.within.relevance_nats >= min_relevance_nats
        )
        mostly_between = self.within.relevance_nats < 0.5 * self.pooled.relevance_nats
        return _significant(self.pooled.q_values, alpha) & ~within_passes & mostly_between

    def to_dict(self) -> dict:
        return {
            "within_subject": self.within.to_dict(),
            "pooled": self.pooled.to_dict(),
            "subject_share": self.subject_share.tolist(),
            "n_subjects": self.n_subjects,
            "within_equals_pooled": self.within_equals_pooled,
        }


def subject_aware_label_information(
    mu: np.ndarray, classes: np.ndarray, subjects: np.ndarray, **test: Any
) -> SubjectAwareRelevance:
    """:func:`factor_label_information` pooled and within subject, with each factor's subject share.

    ``test`` holds :func:`factor_label_information`'s keyword parameters (``n_permutations``,
    ``seed``, ``summaries``, ``factors``, ``progress``), shared by both analyses, so they use the
    same permutation count, seed, summaries and testing family; with a single subject the
    within-subject analysis is the pooled one. ``progress`` follows the labelings of each
    analysis in turn.
    """
    pooled = factor_label_information(mu, classes, **test)
    groups = _subject_codes(subjects, pooled.n_trials)
    within = pooled
    if groups.max() > 0:
        within = factor_label_information(mu, classes, subjects=subjects, **test)
    return SubjectAwareRelevance(
        pooled=pooled,
        within=within,
        subject_share=subject_share(mu, subjects, test.get("summaries", SUMMARIES)),
    )


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values (step-up, independent or positively dependent tests).

    q_(i) = min over k ≥ i of min(1, m p_(k) / k) for the p-values sorted ascending.
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    if p_values.ndim != 1 or p_values.size == 0:
        raise InputError("p_values", f"shape {p_values.shape}; expected a non-empty 1-D array")
    if not np.all((p_values >= 0) & (p_values <= 1)):
        raise InputError("p_values", "every p-value must lie in [0, 1]")
    return false_discovery_control(p_values, method="bh")


def ablation_accuracy_drop(
    accuracy_with_mask: Callable[[np.ndarray], float], n_factors: int, factors: Sequence[int]
) -> np.ndarray:
    """Accuracy lost when one factor alone is zeroed, for each factor in ``factors``.

    Parameters
    ----------
    accuracy_with_mask : callable
        Takes a bool mask of shape (n_factors,) (True = factor kept, False = set to zero) and
        returns the classifier's accuracy, evaluated by the caller on validation trials.
    n_factors : int
        Number of latent factors H.
    factors : sequence of int
        The factors to ablate, one at a time.

    Returns
    -------
    ndarray of float64, shape (len(factors),)
        accuracy(all factors) − accuracy(all but factor j); positive means the factor helps.
    """
    if not callable(accuracy_with_mask):
        raise InputError("accuracy_with_mask", "must be a callable taking a bool mask")
    check_positive_int("n_factors", n_factors)
    indices = _check_factor_indices(factors, int(n_factors), "factors")

    def accuracy(mask: np.ndarray) -> float:
        value = accuracy_with_mask(mask)
        if not np.isscalar(value) or not np.isfinite(value):
            raise InputError("accuracy_with_mask", f"returned {value!r}; expected a finite number")
        return float(value)

    baseline = accuracy(np.ones(n_factors, dtype=bool))
    drops = np.empty(indices.size)
    for position, factor in enumerate(indices):
        mask = np.ones(n_factors, dtype=bool)
        mask[factor] = False
        drops[position] = baseline - accuracy(mask)
    return drops


def linked_factors(
    mi_nats: np.ndarray,
    label_q_values: np.ndarray,
    influential_threshold_nats: float = 0.05,
    alpha: float = 0.05,
    relevance_nats: np.ndarray | None = None,
    min_relevance_nats: float = 0.0,
) -> np.ndarray:
    """Apply the emotion-linked rule (module docstring): influential, significant and large enough.

    Parameters
    ----------
    mi_nats : ndarray, shape (H,)
        Î(X; Z_j) per factor in nats.
    label_q_values : ndarray, shape (H,)
        BH q-values of the label information; NaN for factors that were not tested.
    influential_threshold_nats : float
        A factor is influential when Î(X; Z_j) is strictly above this.
    alpha : float
        False discovery rate; significant means q strictly below it.
    relevance_nats : ndarray, shape (H,), optional
        Bias-corrected label information (``LabelInformation.relevance_nats``).
    min_relevance_nats : float
        With ``relevance_nats``, a linked factor must also carry at least this much.

    Returns
    -------
    ndarray of bool, shape (H,)
    """
    mi_nats = np.asarray(mi_nats, dtype=np.float64)
    label_q_values = np.asarray(label_q_values, dtype=np.float64)
    if mi_nats.ndim != 1 or not np.all(np.isfinite(mi_nats)):
        raise InputError("mi_nats", f"shape {mi_nats.shape}; expected a finite 1-D array")
    if label_q_values.shape != mi_nats.shape:
        raise InputError(
            "label_q_values", f"shape {label_q_values.shape} differs from mi_nats {mi_nats.shape}"
        )
    known = label_q_values[~np.isnan(label_q_values)]
    if not np.all((known >= 0) & (known <= 1)):
        raise InputError("label_q_values", "q-values must lie in [0, 1] (or be NaN when not tested)")
    if not np.isfinite(influential_threshold_nats) or influential_threshold_nats < 0:
        raise InputError("influential_threshold_nats", f"{influential_threshold_nats!r}; expected >= 0")
    if not 0 < alpha < 1:
        raise InputError("alpha", f"{alpha!r}; expected a number in (0, 1)")
    linked = (mi_nats > influential_threshold_nats) & _significant(label_q_values, alpha)
    if relevance_nats is not None:
        relevance_nats = np.asarray(relevance_nats, dtype=np.float64)
        if relevance_nats.shape != mi_nats.shape:
            raise InputError(
                "relevance_nats", f"shape {relevance_nats.shape} differs from mi_nats {mi_nats.shape}"
            )
        if not np.isfinite(min_relevance_nats) or min_relevance_nats < 0:
            raise InputError("min_relevance_nats", f"{min_relevance_nats!r}; expected >= 0")
        linked &= relevance_nats >= min_relevance_nats
    return linked


def _significant(q_values: np.ndarray, alpha: float) -> np.ndarray:
    """q < alpha, False where the factor was not tested (NaN)."""
    significant = np.zeros(q_values.shape, dtype=bool)
    np.less(q_values, alpha, out=significant, where=~np.isnan(q_values))
    return significant


def _subject_codes(subjects: np.ndarray | None, n_trials: int) -> np.ndarray:
    """Subjects as codes 0..S-1 (all 0 when ``subjects`` is None)."""
    if subjects is None:
        return np.zeros(n_trials, dtype=np.int64)
    subjects = np.asarray(subjects)
    if subjects.shape != (n_trials,):
        raise InputError("subjects", f"shape {subjects.shape}; expected ({n_trials},), one subject per trial")
    return np.unique(subjects, return_inverse=True)[1].astype(np.int64)


def _check_mu(mu: np.ndarray) -> np.ndarray:
    mu = np.asarray(mu)
    if mu.ndim != 3 or 0 in mu.shape:
        raise InputError("mu", f"shape {mu.shape}; expected (n_trials, n_frames, n_factors), none empty")
    if not np.issubdtype(mu.dtype, np.floating):
        raise InputError("mu", f"dtype {mu.dtype}; expected floating point latent means")
    if not np.all(np.isfinite(mu)):
        raise InputError("mu", "contains NaN or infinite values")
    return mu.astype(np.float64, copy=False)


def _check_classes(classes: np.ndarray, n_trials: int) -> tuple[np.ndarray, int]:
    classes = np.asarray(classes)
    if classes.shape != (n_trials,):
        raise InputError("classes", f"shape {classes.shape}; expected ({n_trials},), one class per trial")
    if not np.issubdtype(classes.dtype, np.integer):
        raise InputError("classes", f"dtype {classes.dtype}; expected integer class indices")
    values, codes, counts = np.unique(classes, return_inverse=True, return_counts=True)
    if values.size < 2:
        raise InputError("classes", "all trials have the same class; label information is undefined")
    if counts.min() < 2:
        raise InputError("classes", f"class {values[counts.argmin()]} has a single trial; need at least 2")
    return codes.astype(np.int64), int(values.size)


def _check_summaries(summaries: Sequence[str], n_frames: int) -> tuple[str, ...]:
    summaries = tuple(summaries)
    if not summaries or len(set(summaries)) != len(summaries) or not set(summaries) <= set(SUMMARIES):
        raise InputError("summaries", f"{summaries!r}; expected distinct names among {SUMMARIES}")
    if "std" in summaries and n_frames < 2:
        raise InputError("mu", "a trial needs at least 2 frames for the 'std' summary")
    return summaries


def _check_factor_indices(factors: Sequence[int] | None, n_factors: int, name: str) -> np.ndarray:
    if factors is None:
        return np.arange(n_factors)
    indices = np.asarray(factors)
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise InputError(name, f"{factors!r}; expected a non-empty sequence of integer factor indices")
    if indices.min() < 0 or indices.max() >= n_factors:
        raise InputError(name, f"indices must lie in [0, {n_factors}), got {indices.min()}..{indices.max()}")
    if np.unique(indices).size != indices.size:
        raise InputError(name, "contains repeated factor indices")
    return indices.astype(np.int64)

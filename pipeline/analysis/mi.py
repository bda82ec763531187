"""Mutual information Î(X;Z_j) between the data and each latent factor of a Gaussian encoder.

The encoder gives q(z|x) = N(μ(x), diag σ²(x)). The aggregate posterior q(z_j) is replaced by
the zero-mean Gaussian N(0, s_j²) with s_j² = mean_i(μ_ij² + σ_ij²), the zero-mean choice that
makes the variational bound tightest, giving

    Î(X;Z_j) = mean_i KL(N(μ_ij, σ_ij²) ‖ N(0, s_j²)) = ½ (log s_j² − mean_i log σ_ij²)   (nats)
    Î(X;Z)   = Σ_j Î(X;Z_j)

Everything is computed from a handful of float64 sums per factor gathered in one streaming pass
(:class:`MIAccumulator`), so millions of frames need no more memory than one batch.

Alongside Î the estimate carries the variance of μ_j over the data (the classical "active unit"
indicator, which the paper argues is not enough) and the mean KL of each factor to the prior
N(0, 1) (the per-dimension rate of the VAE objective), which bounds Î_j from above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from pipeline.errors import InputError

# log σ² is clamped to this range before exp: exp(20) ≈ 4.9e8 and exp(-30) ≈ 9.4e-14 stay far
# from float64 overflow/underflow however many frames are summed, and no trained encoder produces
# posterior variances outside it without being broken anyway.
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0

# A factor is reported as influential above this many nats. 0.05 nats is what a linear Gaussian
# factor carries when its posterior mean moves over the data by about a third of its posterior
# standard deviation (½ log(1 + 0.105) = 0.05). A collapsed factor (μ ≈ 0, σ ≈ 1) carries
# ½ log(1 + var μ_j) ≈ 0, well below it.
DEFAULT_THRESHOLD_NATS = 0.05

# The ratios of Tables 2 and 3 of the paper (top % of factors kept, by Î).
DEFAULT_TOPK_PERCENTS: tuple[int, ...] = (100, 50, 20, 10, 7, 5, 4, 3, 2, 1, 0)


@dataclass(frozen=True, eq=False)
class MIEstimate:
    """Per-factor information estimate of one encoder over one data set.

    Attributes
    ----------
    per_factor_nats : ndarray of float64, shape (H,)
        Î(X;Z_j) in nats, never negative.
    total_nats : float
        Î(X;Z) = sum of ``per_factor_nats``.
    variance : ndarray of float64, shape (H,)
        Population variance of μ_j over the data (``np.var`` convention, ddof=0).
    kl_prior_nats : ndarray of float64, shape (H,)
        mean_i KL(N(μ_ij, σ_ij²) ‖ N(0, 1)) in nats; always >= ``per_factor_nats``.
    ranking : ndarray of int64, shape (H,)
        Factor indices by decreasing Î; equal values keep increasing index order.
    n_samples : int
        Number of encoded frames (rows) the estimate is based on.
    """

    per_factor_nats: np.ndarray
    total_nats: float
    variance: np.ndarray
    kl_prior_nats: np.ndarray
    ranking: np.ndarray
    n_samples: int

    @property
    def n_factors(self) -> int:
        return int(self.per_factor_nats.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form: the ``mi`` section of report.json, plus ``n_samples``."""
        return {
            "per_factor_nats": [float(value) for value in self.per_factor_nats],
            "variance": [float(value) for value in self.variance],
            "kl_prior_nats": [float(value) for value in self.kl_prior_nats],
            "total_nats": float(self.total_nats),
            "ranking": [int(index) for index in self.ranking],
            "n_samples": int(self.n_samples),
        }


def _as_real_array(values: Any, name: str, batch_index: int) -> np.ndarray:
    """``values`` as a finite real array with >= 2 axes and >= 1 factor; InputError naming ``name``."""
    where = f"{name} (batch {batch_index})"
    try:
        array = np.asarray(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(where, f"cannot be read as an array: {err}") from err
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(where, f"dtype {array.dtype} is not a real number type")
    if array.ndim < 2:
        raise InputError(where, f"shape {array.shape}; expected (n_samples, H) or (..., H)")
    if array.shape[-1] == 0:
        raise InputError(where, f"shape {array.shape} has no latent factors")
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(where, f"{bad} non-finite value(s) (NaN or inf)")
    return array


class MIAccumulator:
    """Streaming estimator of Î(X;Z_j): feed batches of (μ, log σ²), then read :meth:`result`.

    Holds only float64 sums per factor: count, Σ log σ², Σ σ², Σ μ², and the running mean and
    sum of squared deviations of μ (Chan et al.'s pairwise update, so the variance of μ stays
    accurate even when μ_j has a large offset).

    Examples
    --------
    >>> accumulator = MIAccumulator()
    >>> for mu, logvar in batches:  # doctest: +SKIP
    ...     accumulator.update(mu, logvar)
    >>> estimate = accumulator.result()  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._n_factors: int | None = None
        self._n_batches = 0
        self._count = 0
        self._sum_logvar: np.ndarray | None = None
        self._sum_var: np.ndarray | None = None
        self._sum_mu_sq: np.ndarray | None = None
        self._mean_mu: np.ndarray | None = None
        self._m2_mu: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        return self._count

    def update(self, mu: Any, logvar: Any) -> MIAccumulator:
        """Add one batch of posterior parameters.

        Parameters
        ----------
        mu, logvar : array-like, shape (batch, H) or (batch, T, H) (any leading axes)
            Posterior means and log variances of the same frames, same shape. Leading axes are
            flattened into frames. ``logvar`` is clamped to [``LOGVAR_MIN``, ``LOGVAR_MAX``] before
            use, and the estimate is that of the clamped encoder. A batch of zero frames is a no-op.

        Returns
        -------
        self

        Raises
        ------
        InputError
            If either array is not real-valued, has fewer than two axes, holds NaN/inf, the two
            shapes differ, or H differs from earlier batches.
        """
        batch_index = self._n_batches
        mu_array = _as_real_array(mu, "mu", batch_index)
        logvar_array = _as_real_array(logvar, "logvar", batch_index)
        if mu_array.shape != logvar_array.shape:
            raise InputError(
                f"logvar (batch {batch_index})",
                f"shape {logvar_array.shape} differs from mu shape {mu_array.shape}",
            )
        mu_rows = mu_array.reshape(-1, mu_array.shape[-1]).astype(np.float64, copy=False)
        logvar_rows = logvar_array.reshape(-1, logvar_array.shape[-1]).astype(np.float64, copy=False)
        n_factors = mu_rows.shape[1]
        if self._n_factors is not None and n_factors != self._n_factors:
            raise InputError(
                f"mu (batch {batch_index})", f"has {n_factors} factors; earlier batches had {self._n_factors}"
            )
        if self._n_factors is None:
            self._start(n_factors)
        self._n_batches += 1
        n_new = mu_rows.shape[0]
        if n_new == 0:
            return self

        logvar_rows = np.clip(logvar_rows, LOGVAR_MIN, LOGVAR_MAX)
        self._sum_logvar += logvar_rows.sum(axis=0)
        self._sum_var += np.exp(logvar_rows).sum(axis=0)
        self._sum_mu_sq += np.square(mu_rows).sum(axis=0)

        batch_mean = mu_rows.mean(axis=0)
        batch_m2 = np.square(mu_rows - batch_mean).sum(axis=0)
        n_old = self._count
        n_total = n_old + n_new
        delta = batch_mean - self._mean_mu
        self._mean_mu += delta * (n_new / n_total)
        self._m2_mu += batch_m2 + np.square(delta) * (n_old * n_new / n_total)
        self._count = n_total
        return self

    def _start(self, n_factors: int) -> None:
        self._n_factors = n_factors
        self._sum_logvar = np.zeros(n_factors)
        self._sum_var = np.zeros(n_factors)
        self._sum_mu_sq = np.zeros(n_factors)
        self._mean_mu = np.zeros(n_factors)
        self._m2_mu = np.zeros(n_factors)

    def result(self) -> MIEstimate:
        """The estimate over every frame added so far.

        Î_j = ½ (log s_j² − mean log σ_j²) is >= 0 by Jensen's inequality; rounding can leave it a
        few ulps below zero (e.g. for a collapsed factor with μ = 0, σ = 1), so it is clipped at 0.
        The KL to N(0, 1) is evaluated as Î_j + ½ (s_j² − 1 − log s_j²), an exact rewrite whose
        second term is >= 0, so ``kl_prior_nats >= per_factor_nats`` holds in floating point too.

        Raises
        ------
        InputError
            If no frame has been added.
        """
        if self._count == 0:
            raise InputError("mu", "no samples were added; call update() with at least one frame first")
        count = self._count
        mean_logvar = self._sum_logvar / count
        aggregate_var = (self._sum_mu_sq + self._sum_var) / count
        log_aggregate_var = np.log(aggregate_var)
        per_factor = np.maximum(0.5 * (log_aggregate_var - mean_logvar), 0.0)
        # s² − 1 − log s² computed as u − log1p(u) keeps precision when s² is close to 1.
        excess = aggregate_var - 1.0
        prior_gap = np.maximum(0.5 * (excess - np.log1p(excess)), 0.0)
        kl_prior = per_factor + prior_gap
        variance = self._m2_mu / count
        ranking = np.argsort(-per_factor, kind="stable").astype(np.int64)
        for array in (per_factor, kl_prior, variance, ranking):
            array.flags.writeable = False
        return MIEstimate(
            per_factor_nats=per_factor,
            total_nats=float(per_factor.sum()),
            variance=variance,
            kl_prior_nats=kl_prior,
            ranking=ranking,
            n_samples=count,
        )


def estimate_mi(mu: Any, logvar: Any) -> MIEstimate:
    """Î(X;Z_j) of every factor from all posterior parameters at once.

    Parameters
    ----------
    mu, logvar : array-like, shape (N, H) or (..., H)
        Posterior means and log variances of N frames (leading axes are flattened).

    Returns
    -------
    MIEstimate
        See :class:`MIAccumulator` for the numerics; the result equals streaming the same rows.
    """
    return MIAccumulator().update(mu, logvar).result()


def influential_factors(estimate: MIEstimate, threshold_nats: float = DEFAULT_THRESHOLD_NATS) -> np.ndarray:
    """Indices of factors with Î_j strictly above ``threshold_nats``, most informative first.

    Parameters
    ----------
    estimate : MIEstimate
    threshold_nats : float, default ``DEFAULT_THRESHOLD_NATS`` (0.05)
        Non-negative cut in nats. 0.05 nats is the information of a linear Gaussian factor whose
        posterior mean spreads over the data by about a third of its posterior standard deviation.

    Returns
    -------
    ndarray of int64
        A prefix of ``estimate.ranking`` (possibly empty).
    """
    if not isinstance(estimate, MIEstimate):
        raise InputError("estimate", f"expected an MIEstimate, got {type(estimate).__name__}")
    if (
        isinstance(threshold_nats, bool)
        or not isinstance(threshold_nats, Real)
        or not math.isfinite(threshold_nats)
        or threshold_nats < 0
    ):
        raise InputError("threshold_nats", f"{threshold_nats!r} must be a finite non-negative number")
    ranked_values = estimate.per_factor_nats[estimate.ranking]
    n_above = int(np.count_nonzero(ranked_values > threshold_nats))
    return estimate.ranking[:n_above].copy()


def topk_factor_counts(
    n_factors: int, percents: tuple[int, ...] = DEFAULT_TOPK_PERCENTS
) -> list[tuple[int, int]]:
    """How many factors each "top p %" keeps, as in the paper's Tables 2 and 3.

    The count is ceil(p · H / 100), computed in integer arithmetic: any non-zero percent keeps at
    least one factor (so the 1 % row of a 32-factor model is not the same as the 0 % row), 100 %
    keeps all H, 0 % keeps none.

    Parameters
    ----------
    n_factors : int
        Number of latent factors H (>= 1).
    percents : sequence of int, default (100, 50, 20, 10, 7, 5, 4, 3, 2, 1, 0)
        Integer percentages in [0, 100], kept in the given order.

    Returns
    -------
    list of (percent, n_kept) tuples
    """
    if isinstance(n_factors, bool) or not isinstance(n_factors, Integral) or n_factors < 1:
        raise InputError("n_factors", f"{n_factors!r} must be a positive integer")
    try:
        percent_list = list(percents)
    except TypeError as err:
        raise InputError("percents", f"{percents!r} is not a sequence of integers") from err
    if not percent_list:
        raise InputError("percents", "is empty")
    counts = []
    for percent in percent_list:
        if isinstance(percent, bool) or not isinstance(percent, Integral) or not 0 <= percent <= 100:
            raise InputError("percents", f"{percent!r} must be an integer between 0 and 100")
        counts.append((int(percent), -(-int(percent) * int(n_factors) // 100)))
    return counts


def topk_mask(ranking: Any, k: int) -> np.ndarray:
    """Boolean mask over factors that keeps the ``k`` most informative ones.

    Parameters
    ----------
    ranking : array-like of int, shape (H,)
        A permutation of 0..H-1, most informative first (``MIEstimate.ranking``).
    k : int
        Number of factors to keep, 0 <= k <= H.

    Returns
    -------
    ndarray of bool, shape (H,)
        True for the kept factors; the others are the ones set to zero downstream.
    """
    ranking = np.asarray(ranking)
    if ranking.ndim != 1 or ranking.size == 0 or not np.issubdtype(ranking.dtype, np.integer):
        raise InputError("ranking", f"shape {ranking.shape}, dtype {ranking.dtype}; expected 1-D integers")
    n_factors = ranking.size
    if not np.array_equal(np.sort(ranking), np.arange(n_factors)):
        raise InputError("ranking", f"is not a permutation of 0..{n_factors - 1}")
    if isinstance(k, bool) or not isinstance(k, Integral) or not 0 <= k <= n_factors:
        raise InputError("k", f"{k!r} must be an integer between 0 and {n_factors}")
    mask = np.zeros(n_factors, dtype=bool)
    mask[ranking[:k]] = True
    return mask

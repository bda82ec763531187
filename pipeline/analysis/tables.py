"""The paper's top-k tables: what the few most informative factors keep.

For each percent p, keep the top ⌈p·H/100⌉ factors by Î(X;Z_j), set the others to zero, and
measure (Table 2) the total Î of the kept factors and the reconstruction error of the test
frames, and (Table 3) the test accuracy of the already-trained classifier.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.analysis.mi import DEFAULT_TOPK_PERCENTS, MIEstimate, topk_factor_counts, topk_mask
from pipeline.errors import InputError

MaskMetric = Callable[[np.ndarray], float]


def topk_table(
    estimate: MIEstimate,
    reconstruction_mse: MaskMetric | None = None,
    accuracy: MaskMetric | None = None,
    percents: tuple[int, ...] = DEFAULT_TOPK_PERCENTS,
) -> list[dict]:
    """One row per percent: ``percent``, ``n_factors``, ``total_mi_nats``, and ``mse``/``accuracy`` if given.

    Parameters
    ----------
    estimate : MIEstimate
        Supplies the ranking and the per-factor Î.
    reconstruction_mse, accuracy : callable(keep_mask) -> float, optional
        Evaluate the test split with only the factors in the boolean ``keep_mask`` (shape (H,))
        left as inferred and the others set to zero. A metric left out is left out of the rows.
    percents : tuple of int
        The paper's 100, 50, 20, 10, 7, 5, 4, 3, 2, 1, 0 by default.
    """
    if not isinstance(estimate, MIEstimate):
        raise InputError("estimate", f"expected an MIEstimate, got {type(estimate).__name__}")
    rows = []
    for percent, n_kept in topk_factor_counts(estimate.n_factors, percents):
        keep = topk_mask(estimate.ranking, n_kept)
        row = {
            "percent": percent,
            "n_factors": n_kept,
            "total_mi_nats": float(estimate.per_factor_nats[keep].sum()),
        }
        if reconstruction_mse is not None:
            row["mse"] = float(reconstruction_mse(keep))
        if accuracy is not None:
            row["accuracy"] = float(accuracy(keep))
        rows.append(row)
    return rows

import numpy as np
import pytest

from pipeline.analysis.mi import estimate_mi
from pipeline.analysis.tables import topk_table
from pipeline.errors import InputError


def _linear_encoder(n=4000, seed=0):
    """Three informative factors of decreasing strength and five collapsed ones."""
    rng = np.random.default_rng(seed)
    scale = np.array([3.0, 1.5, 0.5, 0, 0, 0, 0, 0])
    mu = rng.normal(size=(n, 8)) * scale
    logvar = np.where(scale > 0, np.log(0.1), 0.0) * np.ones((n, 1))
    return mu, logvar


def test_rows_follow_the_ranking_and_the_paper_percents():
    estimate = estimate_mi(*_linear_encoder())
    rows = topk_table(estimate)
    assert [r["percent"] for r in rows] == [100, 50, 20, 10, 7, 5, 4, 3, 2, 1, 0]
    by_percent = {r["percent"]: r for r in rows}
    assert by_percent[100]["n_factors"] == 8
    assert by_percent[0]["n_factors"] == 0 and by_percent[0]["total_mi_nats"] == 0.0
    assert by_percent[100]["total_mi_nats"] == pytest.approx(estimate.total_nats)
    # ceil(0.2 * 8) = 2 keeps the two strongest factors only.
    assert by_percent[20]["total_mi_nats"] == pytest.approx(estimate.per_factor_nats[[0, 1]].sum())
    totals = [r["total_mi_nats"] for r in rows]
    assert totals == sorted(totals, reverse=True)
    assert "mse" not in rows[0] and "accuracy" not in rows[0]


def test_metrics_receive_the_keep_mask_of_each_row():
    estimate = estimate_mi(*_linear_encoder())
    seen = []

    def kept_count(mask):
        seen.append(mask.copy())
        return float(mask.sum())

    rows = topk_table(estimate, reconstruction_mse=kept_count, accuracy=lambda mask: float(mask[0]))
    assert [r["mse"] for r in rows] == [float(r["n_factors"]) for r in rows]
    # Factor 0 is the most informative, so it is kept by every row but the 0 % one.
    assert [r["accuracy"] for r in rows] == [1.0] * 10 + [0.0]
    assert all(mask.dtype == bool and mask.shape == (8,) for mask in seen)


def test_rejects_what_is_not_an_estimate():
    with pytest.raises(InputError, match="estimate"):
        topk_table({"per_factor_nats": [1.0]})

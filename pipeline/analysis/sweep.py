"""Choosing β by a sweep scored on validation trials (the paper enumerated β values).

Each candidate β-VAE is scored on what a user needs from it: how many factors stay influential,
how much Î they carry in total (training frames, as for the ranking), and how well it
reconstructs the frames of the validation trials, which no model trained on.

Rule: among the candidates, keep the largest β whose validation reconstruction error is within
``MSE_TOLERANCE`` (10 %) of the best candidate's. A larger β compresses harder and separates
factors more cleanly (the reason for β > 1), but past some point it discards structure that is
in the data; a held-out reconstruction error that rises by more than a tenth marks that point.
The rule reads no label and no test trial.
"""

from __future__ import annotations

import numpy as np

from pipeline.analysis.mi import MIAccumulator, influential_factors
from pipeline.errors import InputError
from pipeline.models.encoding import iter_encode_frames
from pipeline.models.learn import store_normaliser, vae_validation_scores
from pipeline.models.vae import BetaVAE
from pipeline.store.frames import FrameStore

MSE_TOLERANCE = 0.10
RULE = (
    "the largest β whose validation reconstruction error (MSE per scalp pixel) is within "
    f"{MSE_TOLERANCE:.0%} of the lowest in the sweep"
)


def score_candidate(
    model: BetaVAE, store: FrameStore, train_rows: np.ndarray, val_rows: np.ndarray, threshold_nats: float
) -> dict:
    """One sweep row for a candidate model (the store's main normalisation; nothing is written).

    Returns ``beta``, ``n_influential``, ``total_mi_nats`` (training trials) and the
    validation scores of :func:`pipeline.models.learn.vae_validation_scores` (``val_mse``,
    ``val_negative_elbo``).
    """
    accumulator = MIAccumulator()
    for _, mu, logvar in iter_encode_frames(model, store.frames, train_rows, 1024, store_normaliser(store)):
        accumulator.update(mu, logvar)
    estimate = accumulator.result()
    scores = vae_validation_scores(model, store, val_rows)
    return {
        "beta": float(model.beta),
        "n_influential": int(influential_factors(estimate, threshold_nats).size),
        "total_mi_nats": float(estimate.total_nats),
        "val_mse": float(scores["mse"]),
        "val_negative_elbo": float(scores["negative_elbo"]),
    }


def choose_beta(rows: list[dict], tolerance: float = MSE_TOLERANCE) -> float:
    """The β that :data:`RULE` keeps among sweep ``rows`` (each with ``beta`` and ``val_mse``)."""
    if not rows:
        raise InputError("beta sweep", "has no candidates")
    errors = np.asarray([row["val_mse"] for row in rows], dtype=np.float64)
    if not np.all(np.isfinite(errors)):
        raise InputError("beta sweep", f"validation errors {errors.tolist()} are not all finite")
    acceptable = [row["beta"] for row in rows if row["val_mse"] <= (1 + tolerance) * errors.min()]
    return float(max(acceptable))

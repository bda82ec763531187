"""Describe the reported factors of a DEAP run: emotion relevance, electrode blocks, figures.

Selection uses the training and validation trials only (see :mod:`pipeline.relevance`); the
test trials are left for the accuracy figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.blocks import DEFAULT_TRAVERSAL_VALUES, electrode_change, find_blocks, traverse_factor
from pipeline.errors import InputError
from pipeline.imaging import ImagingOperator
from pipeline.mi import MIEstimate, influential_factors
from pipeline.models.sequence import EmotionLSTM, evaluate_classifier
from pipeline.models.vae import BetaVAE
from pipeline.montage import neighbour_graph
from pipeline.progress import Progress, counted
from pipeline.relevance import ablation_accuracy_drop, factor_label_information, linked_factors
from pipeline.report.figures import topomap_figure, traversal_strip
from pipeline.sources.trials import DEAP_CHANNELS


@dataclass(frozen=True)
class FactorRules:
    """The documented thresholds that decide what is reported, linked and grouped into blocks."""

    influential_threshold_nats: float = 0.05
    min_reported: int = 10
    alpha: float = 0.05
    n_permutations: int = 2000
    # Emotion is a property of the whole trial: relevance is measured on each trial's mean of μ_j
    # over the stimulus frames (the baseline seconds carry no label effect).
    relevance_summaries: tuple[str, ...] = ("mean",)
    baseline_frames: int = 3
    # 0.1 nats is 7 % of the 4-class label entropy (log 4): an emotion-linked factor must carry
    # that much, not merely a trace that becomes significant over many trials.
    min_relevance_nats: float = 0.1
    block_relative_threshold: float = 0.5
    # Changes below this (normalised band-power units over z in [-3, 3]) are decoder noise, not blocks.
    block_min_change: float = 0.05
    n_seed_frames: int = 16

    def to_dict(self) -> dict:
        return {**self.__dict__, "relevance_summaries": list(self.relevance_summaries)}

    @classmethod
    def from_dict(cls, values: dict) -> FactorRules:
        return cls(**{**values, "relevance_summaries": tuple(values.get("relevance_summaries", ("mean",)))})


def reported_factors(estimate: MIEstimate, rules: FactorRules) -> np.ndarray:
    """Every influential factor, and at least the top ``min_reported`` by Î, in ranking order."""
    influential = influential_factors(estimate, rules.influential_threshold_nats)
    n_reported = max(influential.size, min(rules.min_reported, estimate.n_factors))
    return estimate.ranking[:n_reported].copy()


def seed_latents(selection_mu: np.ndarray, n_seeds: int, seed: int = 0) -> np.ndarray:
    """Posterior means of ``n_seeds`` frames drawn from distinct selection trials (seeded)."""
    rng = np.random.default_rng(seed)
    n_trials, n_frames, _ = selection_mu.shape
    trials = rng.choice(n_trials, size=min(n_seeds, n_trials), replace=False)
    frames = rng.integers(0, n_frames, size=trials.size)
    return selection_mu[trials, frames]


def _decoder(model: BetaVAE):
    device = next(model.parameters()).device

    def decode(latents: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.decode(torch.from_numpy(latents).to(device)).float().cpu().numpy()

    return decode


def describe_factors(
    model: BetaVAE,
    classifier: EmotionLSTM | None,
    estimate: MIEstimate,
    selection_mu: np.ndarray,
    selection_classes: np.ndarray,
    val_mu: np.ndarray,
    val_classes: np.ndarray,
    operator: ImagingOperator,
    band_names: tuple[str, ...],
    rules: FactorRules = FactorRules(),
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[list[dict], dict[int, dict[str, bytes]], dict]:
    """The ``factors`` entries of report.json, their figures, and the relevance analysis.

    Parameters
    ----------
    selection_mu, selection_classes : (n, 63, H) and (n,)
        Training + validation trials: relevance, p-values and traversal seeds come from them.
    val_mu, val_classes :
        Validation trials, for the classifier's accuracy drop when one factor is zeroed.
    progress : callable, optional
        ``progress(stage, done, total)`` for the permutation tests and the factors traversed
        and drawn (see :mod:`pipeline.progress`).

    Returns
    -------
    (factors, figures, relevance) : the report entries (rank is 1-based), PNG figures per factor
    index, and the JSON-native label-information analysis.
    """
    if selection_mu.ndim != 3 or selection_mu.shape[2] != estimate.n_factors:
        raise InputError("selection_mu", f"shape {selection_mu.shape}; expected (n, T, {estimate.n_factors})")
    reported = reported_factors(estimate, rules)
    influential = influential_factors(estimate, rules.influential_threshold_nats)
    # The multiple-testing family is the influential factors: only they can be linked.
    tested = influential if influential.size else reported
    information = factor_label_information(
        selection_mu[:, rules.baseline_frames :],
        selection_classes,
        n_permutations=rules.n_permutations,
        seed=seed,
        summaries=rules.relevance_summaries,
        factors=tested,
        progress=progress,
    )
    linked = linked_factors(
        estimate.per_factor_nats,
        information.q_values,
        rules.influential_threshold_nats,
        rules.alpha,
        information.relevance_nats,
        rules.min_relevance_nats,
    )
    accuracy_drop = np.full(estimate.n_factors, np.nan)
    if classifier is not None and val_classes.size:
        accuracy_drop[reported] = ablation_accuracy_drop(
            lambda keep: evaluate_classifier(classifier, val_mu, val_classes, keep)["accuracy"],
            estimate.n_factors,
            reported,
        )
    adjacency = neighbour_graph(operator.positions_2d)
    seeds = seed_latents(selection_mu, rules.n_seed_frames, seed)
    decode = _decoder(model)
    factors, figures = [], {}
    stage = "traversals and figures (factors)"
    for rank, index in enumerate(counted(reported, progress, stage, len(reported)), start=1):
        traversal = traverse_factor(decode, seeds, int(index), DEFAULT_TRAVERSAL_VALUES)
        change = electrode_change(traversal, operator.electrode_pixels, mask=operator.mask)
        blocks = find_blocks(
            change,
            adjacency,
            DEAP_CHANNELS,
            band_names,
            relative_threshold=rules.block_relative_threshold,
            min_change=rules.block_min_change,
        )
        q_value = information.q_values[index]
        factors.append(
            {
                "index": int(index),
                "rank": rank,
                "mi_nats": float(estimate.per_factor_nats[index]),
                "variance": float(estimate.variance[index]),
                "kl_prior_nats": float(estimate.kl_prior_nats[index]),
                "influential": bool(index in influential),
                "emotion": {
                    "relevance": float(information.relevance_nats[index]),
                    "p_value": float(information.p_values[index]),
                    "q_value": None if np.isnan(q_value) else float(q_value),
                    "accuracy_drop": None if np.isnan(accuracy_drop[index]) else float(accuracy_drop[index]),
                    "linked": bool(linked[index]),
                },
                "blocks": [
                    {key: block[key] for key in ("band", "electrodes", "name", "strength", "peak")}
                    for block in blocks
                ],
                "change_per_electrode": np.round(change, 5).tolist(),
            }
        )
        highlight: dict[str, list[str]] = {}
        for block in blocks:
            highlight.setdefault(block["band"], []).extend(block["electrodes"])
        figures[int(index)] = {
            "topomap": topomap_figure(change, DEAP_CHANNELS, band_names, highlight=highlight),
            "traversal": traversal_strip(traversal[:, 0], DEFAULT_TRAVERSAL_VALUES, band_names),
        }
    return factors, figures, information.to_dict()

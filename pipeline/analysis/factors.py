"""Describe the reported factors of a DEAP run: emotion relevance and electrode blocks.

Selection uses the training and validation trials only (see :mod:`pipeline.analysis.relevance`); the
test trials are left for the accuracy figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.analysis.blocks import (
    DEFAULT_TRAVERSAL_VALUES,
    electrode_change,
    find_blocks,
    sample_at_electrodes,
    signed_change,
    traverse_factor,
)
from pipeline.analysis.mi import MIEstimate, influential_factors
from pipeline.analysis.relevance import (
    LabelInformation,
    SubjectAwareRelevance,
    ablation_accuracy_drop,
    factor_label_information,
    linked_factors,
    subject_aware_label_information,
)
from pipeline.analysis.stability import SeedFactors
from pipeline.errors import InputError
from pipeline.models.decoding import latent_decoder
from pipeline.models.sequence import EmotionLSTM, evaluate_classifier
from pipeline.models.vae import BetaVAE
from pipeline.progress import Progress, counted
from pipeline.signal.imaging import ImagingOperator
from pipeline.signal.montage import neighbour_graph
from pipeline.sources.trials import DEAP_CHANNELS
from pipeline.validators import ConfigModel, NonNegativeInt, NonNegativeNumber, PositiveInt, PositiveNumber


class FactorRules(ConfigModel):
    """The documented thresholds that decide what is reported, linked and grouped into blocks."""

    influential_threshold_nats: NonNegativeNumber = 0.05
    min_reported: NonNegativeInt = 10
    alpha: PositiveNumber = 0.05
    n_permutations: PositiveInt = 2000
    # Emotion is a property of the whole trial: relevance is measured on each trial's mean of μ_j
    # over the stimulus frames (the baseline seconds carry no label effect).
    relevance_summaries: tuple[str, ...] = ("mean",)
    baseline_frames: NonNegativeInt = 3
    # 0.1 nats is 7 % of the 4-class label entropy (log 4): an emotion-linked factor must carry
    # that much, not merely a trace that becomes significant over many trials.
    min_relevance_nats: NonNegativeNumber = 0.1
    block_relative_threshold: NonNegativeNumber = 0.5
    # Changes below this (normalised band-power units over z in [-3, 3]) are decoder noise, not blocks.
    block_min_change: NonNegativeNumber = 0.05
    n_seed_frames: PositiveInt = 16


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


def _not_tested() -> dict:
    return {"relevance": None, "p_value": None, "q_value": None}


def _tested_values(information: LabelInformation, index: int) -> dict:
    """``{relevance, p_value, q_value}`` of one tested factor in one analysis."""
    return {
        "relevance": float(information.relevance_nats[index]),
        "p_value": float(information.p_values[index]),
        "q_value": float(information.q_values[index]),
    }


def block_band_power(electrode_power: np.ndarray, band: int, electrodes: list[int]) -> np.ndarray:
    """(n_trials, n_frames) band power of one block: the mean over its electrodes of ``electrode_power``
    (n_trials, n_frames, n_bands, n_electrodes) in band ``band``."""
    return electrode_power[:, :, band][:, :, electrodes].mean(axis=-1)


def check_blocks_against_data(
    blocks: list[dict],
    electrode_power: np.ndarray,
    classes: np.ndarray,
    subjects: np.ndarray,
    band_names: tuple[str, ...],
    rules: FactorRules,
    seed: int = 0,
) -> list[dict]:
    """The within-subject label test of each block's own band power, BH over the distinct ``blocks``.

    A factor can mix a rhythm that only tells subjects apart with a genuine emotion effect, and
    its traversal then shows both blocks. So each block of a linked factor is tested on the data:
    its band power (the stored frames sampled at its electrodes, averaged over the trial's
    stimulus seconds) is centred per subject and tested like a factor's trial mean, with labels
    shuffled within subject.

    Parameters
    ----------
    blocks : list of dict
        The blocks (``band``, ``electrodes``) of every linked factor: the multiple-testing family.
    electrode_power : ndarray, shape (n_trials, n_frames, n_bands, n_electrodes)
        Stored (not normalised) band power of the selection trials at each electrode.
    classes, subjects : ndarray, shape (n_trials,)

    Returns
    -------
    list of dict
        Per block, in order: ``emotion_linked`` (q < alpha), ``p_value``, ``q_value`` and
        ``relevance`` (nats, bias-corrected).
    """
    if not blocks:
        return []
    # Two factors often show the same block: its band power is one hypothesis, tested once, so
    # that repeats of a strong block do not crowd the BH family and lower a weak block's q-value.
    distinct = sorted({(block["band"], tuple(block["electrodes"])) for block in blocks})
    stimulus = electrode_power[:, rules.baseline_frames :]
    power = np.stack(
        [
            block_band_power(stimulus, band_names.index(band), [DEAP_CHANNELS.index(n) for n in electrodes])
            for band, electrodes in distinct
        ],
        axis=-1,
    )
    information = factor_label_information(
        power,
        classes,
        n_permutations=rules.n_permutations,
        seed=seed,
        summaries=("mean",),
        subjects=subjects,
    )
    verdicts = {
        key: {
            "emotion_linked": bool(information.q_values[position] < rules.alpha),
            "p_value": float(information.p_values[position]),
            "q_value": float(information.q_values[position]),
            "relevance": float(information.relevance_nats[position]),
        }
        for position, key in enumerate(distinct)
    }
    return [dict(verdicts[(block["band"], tuple(block["electrodes"]))]) for block in blocks]


@dataclass(frozen=True)
class FactorTraversal:
    """One traversed factor's data for its figures: ``change`` (n_bands, n_electrodes), the change
    of the decoded band power per electrode, and ``frames`` (n_values, n_bands, H, W), the first
    seed frame decoded at each traversal value."""

    change: np.ndarray
    frames: np.ndarray


@dataclass(frozen=True)
class _EmotionTests:
    """The label-information tests of the influential factors (``relevance`` None when there are none)."""

    relevance: SubjectAwareRelevance | None
    linked: np.ndarray
    subject_driven: np.ndarray


def _check_selection(
    estimate: MIEstimate, selection_mu: np.ndarray, electrode_power: np.ndarray, band_names: tuple[str, ...]
) -> None:
    if selection_mu.ndim != 3 or selection_mu.shape[2] != estimate.n_factors:
        raise InputError("selection_mu", f"shape {selection_mu.shape}; expected (n, T, {estimate.n_factors})")
    expected_power = (selection_mu.shape[0], selection_mu.shape[1], len(band_names), len(DEAP_CHANNELS))
    if electrode_power.shape != expected_power:
        raise InputError(
            "selection_electrode_power", f"shape {electrode_power.shape}; expected {expected_power}"
        )


def _test_emotion(
    estimate: MIEstimate,
    influential: np.ndarray,
    selection_mu: np.ndarray,
    classes: np.ndarray,
    subjects: np.ndarray,
    rules: FactorRules,
    seed: int,
    progress: Progress | None,
) -> _EmotionTests:
    """Label information of the influential factors (the multiple-testing family: only they can be linked)."""
    linked = np.zeros(estimate.n_factors, dtype=bool)
    subject_driven = np.zeros(estimate.n_factors, dtype=bool)
    if not influential.size:
        return _EmotionTests(None, linked, subject_driven)
    relevance = subject_aware_label_information(
        selection_mu[:, rules.baseline_frames :],
        classes,
        subjects,
        n_permutations=rules.n_permutations,
        seed=seed,
        summaries=rules.relevance_summaries,
        factors=influential,
        progress=progress,
    )
    linked = linked_factors(
        estimate.per_factor_nats,
        relevance.within.q_values,
        rules.influential_threshold_nats,
        rules.alpha,
        relevance.within.relevance_nats,
        rules.min_relevance_nats,
    )
    return _EmotionTests(relevance, linked, relevance.subject_driven(rules.alpha, rules.min_relevance_nats))


def _accuracy_drops(
    classifier: EmotionLSTM | None, val_mu: np.ndarray, val_classes: np.ndarray, n_factors: int, reported
) -> np.ndarray:
    """Validation accuracy lost when each reported factor is zeroed (NaN without a classifier)."""
    drops = np.full(n_factors, np.nan)
    if classifier is not None and val_classes.size:
        drops[reported] = ablation_accuracy_drop(
            lambda keep: evaluate_classifier(classifier, val_mu, val_classes, keep)["accuracy"],
            n_factors,
            reported,
        )
    return drops


def _factor_entry(
    index: int, rank: int, estimate: MIEstimate, tested: bool, emotion: _EmotionTests, drop: float
) -> dict:
    """A factor's report entry without its blocks and electrode changes."""
    within, pooled = _not_tested(), _not_tested()
    if tested:
        within = _tested_values(emotion.relevance.within, index)
        pooled = _tested_values(emotion.relevance.pooled, index)
    return {
        "index": index,
        "rank": rank,
        "mi_nats": float(estimate.per_factor_nats[index]),
        "variance": float(estimate.variance[index]),
        "kl_prior_nats": float(estimate.kl_prior_nats[index]),
        "influential": tested,
        "emotion": {
            "tested": tested,
            # The within-subject figures decide; the pooled ones are kept beside them.
            **within,
            "within_subject": within,
            "pooled": pooled,
            "subject_share": float(emotion.relevance.subject_share[index]) if tested else None,
            "subject_driven": bool(emotion.subject_driven[index]),
            "accuracy_drop": None if np.isnan(drop) else float(drop),
            "linked": bool(emotion.linked[index]),
        },
    }


def _test_blocks(
    factors: list[dict],
    electrode_power: np.ndarray,
    classes: np.ndarray,
    subjects: np.ndarray,
    band_names: tuple[str, ...],
    rules: FactorRules,
    seed: int,
) -> int:
    """Add each block's data test to ``factors`` (only linked factors' blocks); return how many."""
    linked_blocks = [block for factor in factors if factor["emotion"]["linked"] for block in factor["blocks"]]
    block_tests = iter(
        check_blocks_against_data(linked_blocks, electrode_power, classes, subjects, band_names, rules, seed)
    )
    for factor in factors:
        for block in factor["blocks"]:
            if factor["emotion"]["linked"]:
                block.update(next(block_tests))
            else:
                block.update({"emotion_linked": False, "p_value": None, "q_value": None, "relevance": None})
    return len(linked_blocks)


def describe_factors(
    model: BetaVAE,
    classifier: EmotionLSTM | None,
    estimate: MIEstimate,
    selection_mu: np.ndarray,
    selection_classes: np.ndarray,
    selection_subjects: np.ndarray,
    selection_electrode_power: np.ndarray,
    val_mu: np.ndarray,
    val_classes: np.ndarray,
    operator: ImagingOperator,
    band_names: tuple[str, ...],
    rules: FactorRules = FactorRules(),
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[list[dict], dict[int, FactorTraversal], dict]:
    """The ``factors`` entries of report.json, the traversals to draw, and the relevance analysis.

    Only influential factors are tested, traversed into blocks and drawn: a factor below the
    threshold carries (almost) nothing about the frames, so any block or relevance shown for it
    would describe the decoder's noise. Its entry keeps Î and the electrode changes, with
    ``blocks`` empty and every emotion statistic None.

    Parameters
    ----------
    selection_mu, selection_classes, selection_subjects : (n, 63, H), (n,) and (n,)
        Training + validation trials: relevance, p-values and traversal seeds come from them.
    selection_electrode_power : (n, 63, n_bands, 32)
        The same trials' stored band power at each electrode, to check blocks against the data.
    val_mu, val_classes :
        Validation trials, for the classifier's accuracy drop when one factor is zeroed.
    progress : callable, optional
        ``progress(stage, done, total)`` for the permutation tests and the factors traversed
        (see :mod:`pipeline.progress`).

    Returns
    -------
    (factors, traversals, relevance) : the report entries (rank is 1-based), the
    :class:`FactorTraversal` of each influential factor by index (for
    :func:`pipeline.report.traversals.eeg_factor_figures`), and the JSON-native
    label-information analysis.
    """
    _check_selection(estimate, selection_mu, selection_electrode_power, band_names)
    reported = reported_factors(estimate, rules)
    influential = influential_factors(estimate, rules.influential_threshold_nats)
    is_influential = np.isin(np.arange(estimate.n_factors), influential)
    emotion = _test_emotion(
        estimate, influential, selection_mu, selection_classes, selection_subjects, rules, seed, progress
    )
    accuracy_drop = _accuracy_drops(classifier, val_mu, val_classes, estimate.n_factors, reported)
    adjacency = neighbour_graph(operator.positions_2d)
    seeds = seed_latents(selection_mu, rules.n_seed_frames, seed)
    decode = latent_decoder(model)
    factors, traversals = [], {}
    for rank, index in enumerate(counted(reported, progress, "traversals (factors)", len(reported)), start=1):
        tested = bool(is_influential[index])
        traversal = traverse_factor(decode, seeds, int(index), DEFAULT_TRAVERSAL_VALUES)
        change = electrode_change(traversal, operator.electrode_pixels, mask=operator.mask)
        blocks = []
        if tested:
            blocks = find_blocks(
                change,
                adjacency,
                DEAP_CHANNELS,
                band_names,
                relative_threshold=rules.block_relative_threshold,
                min_change=rules.block_min_change,
            )
            traversals[int(index)] = FactorTraversal(change=change, frames=traversal[:, 0])
        entry = _factor_entry(int(index), rank, estimate, tested, emotion, accuracy_drop[index])
        shown = ("band", "electrodes", "name", "strength", "peak")
        entry["blocks"] = [{key: block[key] for key in shown} for block in blocks]
        entry["change_per_electrode"] = np.round(change, 5).tolist()
        factors.append(entry)
    n_blocks_tested = _test_blocks(
        factors, selection_electrode_power, selection_classes, selection_subjects, band_names, rules, seed
    )
    relevance = emotion.relevance
    analysis = {"tested": influential.tolist(), **(relevance.to_dict() if relevance else {})}
    analysis["blocks_tested"] = n_blocks_tested
    return factors, traversals, analysis


def eeg_seed_factors(
    model: BetaVAE,
    factors: list[dict],
    selection_mu: np.ndarray,
    operator: ImagingOperator,
    rules: FactorRules,
    model_seed: int,
    seed: int = 0,
) -> SeedFactors:
    """The influential ``factors`` of one model (report entries) with their signed effects.

    Each effect is the decoded band power at z_j = +3 minus that at z_j = −3, averaged over the
    traversal's seed frames (the same ones :func:`describe_factors` draws with ``seed``) and
    sampled at the electrodes: shape (n_bands, n_electrodes) per factor.
    """
    influential = [factor for factor in factors if factor["influential"]]
    seeds = seed_latents(selection_mu, rules.n_seed_frames, seed)
    decode = latent_decoder(model)
    effects = [
        sample_at_electrodes(
            signed_change(decode, seeds, int(factor["index"])), operator.electrode_pixels, operator.mask
        )
        for factor in influential
    ]
    n_bands = len(factors[0]["change_per_electrode"]) if factors else 0
    return SeedFactors(
        seed=model_seed,
        indices=np.array([factor["index"] for factor in influential], dtype=np.int64),
        effects=np.array(effects) if effects else np.zeros((0, n_bands, len(DEAP_CHANNELS))),
        mi_nats=np.array([factor["mi_nats"] for factor in influential], dtype=np.float64),
        linked=np.array([factor["emotion"]["linked"] for factor in influential], dtype=bool),
        blocks=[
            [{"band": block["band"], "electrodes": list(block["electrodes"])} for block in factor["blocks"]]
            for factor in influential
        ],
    )

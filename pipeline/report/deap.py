"""Assemble a DEAP run's report.json and report.html from the store, the models and the settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.analysis.blocks import DEFAULT_TRAVERSAL_VALUES, sample_at_electrodes
from pipeline.analysis.classification import accuracy_summary, chance_verdict
from pipeline.analysis.factors import FactorRules, FactorTraversal, describe_factors, eeg_seed_factors
from pipeline.analysis.mi import MIEstimate, influential_factors
from pipeline.analysis.splits import CLASS_NAMES, Split
from pipeline.analysis.stability import BLOCK_JACCARD, MATCH_THRESHOLD, SeedFactors
from pipeline.analysis.tables import topk_table
from pipeline.analysis.validation import check_planted_blocks
from pipeline.models.classifier import load_classifier
from pipeline.models.learn import (
    LearnConfig,
    classifier_dir,
    latent_set,
    reconstruction_mse,
    secondary_protocols,
    store_classes,
    store_mi,
    stored_split,
)
from pipeline.models.sequence import EmotionLSTM, evaluate_classifier, predict_classes
from pipeline.models.vae import BetaVAE
from pipeline.progress import Progress
from pipeline.report import assemble
from pipeline.report.figures import confusion_figure
from pipeline.report.traversals import eeg_factor_figures
from pipeline.signal.config import PreprocessConfig
from pipeline.signal.imaging import ImagingOperator, deap_imaging_operator
from pipeline.sources.trials import DEAP_CHANNELS
from pipeline.store.frames import FrameStore


def _latents_and_classes(store: FrameStore, rows: np.ndarray, threshold: float, group: str = "latents"):
    committed, classes = store_classes(store, threshold)
    # Read even when ``rows`` is empty: the empty block keeps the latent width, so parts concatenate.
    return store.read_latents(rows, group=group)[0], classes[np.searchsorted(committed, rows)]


def protocol_classification(
    store: FrameStore,
    classifier: EmotionLSTM,
    learn: LearnConfig,
    slot: str | None = None,
    group: str | None = None,
) -> dict:
    """Test accuracy of one protocol's LSTM with its interval, baselines and permutation p-value.

    Only that protocol's own split and latents (``group``: default the slot's) are read; the
    majority class comes from its training trials. Classes follow ``learn.class_threshold``;
    the permutation test is seeded with ``learn.split_seed``.
    """
    threshold, seed = learn.class_threshold, learn.split_seed
    split = stored_split(store, slot)
    group = latent_set(slot) if group is None else group
    test_mu, test_classes = _latents_and_classes(store, split.test, threshold, group)
    committed, classes = store_classes(store, threshold)
    train_classes = classes[np.searchsorted(committed, split.train)]
    evaluation = evaluate_classifier(classifier, test_mu, test_classes)
    summary = accuracy_summary(predict_classes(classifier, test_mu), test_classes, train_classes, seed=seed)
    summary["verdict"] = chance_verdict(summary)
    return {
        "protocol": split.protocol,
        **summary,
        "confusion": evaluation["confusion"],
        "n_test_trials": evaluation["n"],
        "n_test_subjects": int(np.unique(store.subject[np.searchsorted(committed, split.test)]).size),
        "split_sizes": assemble.split_sizes(split),
    }


def _variance_explained(
    model: BetaVAE, store: FrameStore, rows: np.ndarray, estimate: MIEstimate, rules: FactorRules
) -> dict:
    """1 − MSE(influential factors kept) / MSE(no factor kept), on the frames of ``rows``."""
    influential = influential_factors(estimate, rules.influential_threshold_nats)
    keep = np.zeros(estimate.n_factors, dtype=bool)
    keep[influential] = True
    mse_top = reconstruction_mse(model, store, rows, keep)
    mse_none = reconstruction_mse(model, store, rows, np.zeros(estimate.n_factors, dtype=bool))
    return {
        "n_factors": int(influential.size),
        "mse_influential": mse_top,
        "mse_none": mse_none,
        "fraction": 1.0 - mse_top / mse_none if mse_none > 0 else 0.0,
        "measured_on": "test trials",
    }


def _subjects(store: FrameStore, rows: np.ndarray) -> np.ndarray:
    return store.subject[np.searchsorted(store.committed_rows(), rows)]


def electrode_band_power(
    store: FrameStore, rows: np.ndarray, operator: ImagingOperator, trials_per_read: int = 16
) -> np.ndarray:
    """(n_rows, n_frames, n_bands, n_electrodes) stored band power of ``rows`` at each electrode.

    Read a few trials at a time and sampled at once, so only the small electrode array is kept.
    """
    parts = [
        sample_at_electrodes(
            store.read_frames(rows[start : start + trials_per_read]), operator.electrode_pixels, operator.mask
        ).astype(np.float32)
        for start in range(0, len(rows), trials_per_read)
    ]
    n_frames, n_bands = store.frame_shape[:2]
    empty = np.empty((0, n_frames, n_bands, len(operator.electrode_pixels)), dtype=np.float32)
    return np.concatenate(parts) if parts else empty


# How the seeds of an EEG ensemble are matched, in the report's words.
EEG_MATCH_RULE = (
    "Hungarian assignment to the reference seed on |cosine| of the signed effect maps "
    f"(z = +3 minus z = -3, per band at the electrodes), a match needs |cosine| >= {MATCH_THRESHOLD:g}"
)
EEG_BLOCK_RULES = {
    "block_rule": "a block is found in a seed when one of its influential factors has a block of the "
    f"same band with electrode Jaccard >= {BLOCK_JACCARD:g}",
    "block_jaccard": BLOCK_JACCARD,
}
TOPK_UNITS = {
    "mse": "mean squared error per scalp pixel of the test frames, in band-normalised units",
    "accuracy": "test accuracy of the trained LSTM with the other factors set to zero",
}


def _classification(
    out_dir: str | Path, store: FrameStore, classifier: EmotionLSTM, learn: LearnConfig, group: str
) -> dict:
    """report.json's ``classification``: the main protocol's, with every protocol's under
    ``by_protocol`` when the store holds a second one (its LSTM read from ``out_dir``)."""
    threshold = learn.class_threshold
    classification = protocol_classification(store, classifier, learn, group=group)
    by_protocol = {classification["protocol"]: classification}
    for slot in secondary_protocols(store):
        other = load_classifier(classifier_dir(out_dir, slot), "classifier")
        by_protocol[slot] = protocol_classification(store, other, learn, slot)
    summary = {
        **classification,
        "class_names": list(CLASS_NAMES),
        "class_rule": f"high = score > {threshold:g} (valence, arousal)",
        "test_accuracy_note": "95 % Wilson interval; majority = always the training split's most "
        "frequent class; p from shuffling the test labels against the fixed predictions",
    }
    if len(by_protocol) > 1:
        summary["by_protocol"] = by_protocol
    return summary


def _test_trial_mi(store: FrameStore, split: Split, group: str, factors: list[dict]) -> dict:
    """Î on the test trials' frames (None without test trials), also set on each of ``factors``."""
    test_estimate = store_mi(store, split.test, group=group) if split.test.size else None
    for factor in factors:
        factor["mi_test_nats"] = (
            None if test_estimate is None else float(test_estimate.per_factor_nats[factor["index"]])
        )
    return {
        "per_factor_test_nats": None if test_estimate is None else test_estimate.per_factor_nats.tolist(),
        "total_test_nats": None if test_estimate is None else test_estimate.total_nats,
    }


def _source(store: FrameStore, source_path: str) -> dict:
    n_trials = len(store.committed_rows())
    return {
        "kind": store.attrs["data_kind"],
        "path": source_path,
        "n_trials": n_trials,
        "n_frames": n_trials * store.frame_shape[0],
        # Which synthetic data set (planted, null or confound); None for recorded data.
        "scenario": store.attrs.get("synthetic", {}).get("scenario"),
    }


def build_deap_report(
    run: assemble.ReportedRun,
    classifier: EmotionLSTM,
    learn: LearnConfig,
    rules: FactorRules,
    source_path: str,
    beta_sweep: dict | None = None,
    progress: Progress | None = None,
) -> dict:
    """Compute Î, the top-k tables and the factor descriptions; write report.json/.html; return the report.

    Î is estimated on the frames of the training trials (no test trial influences any choice),
    and again on the test trials' frames for comparison (the paper's figure: a factor whose Î
    drops on unseen trials memorises rather than represents); accuracies and reconstruction
    errors are measured on the test trials. When the store holds a second protocol's models
    (``--protocol both``), its classification is reported beside the main one in
    ``classification.by_protocol``; its LSTM is read from ``OUT/checkpoints/<protocol>``.
    ``beta_sweep`` (from the chosen checkpoint) is reported as it is. ``progress`` follows the
    permutation tests and the factors' traversals and figures (see :mod:`pipeline.progress`).

    Seed ensembles (``--seeds``): ``run.model`` is the seed ``learn.train.seed`` whose latents are
    in ``run.group``, and ``run.seed_analyses`` holds every seed's :func:`analyse_seed` (the
    reference seed first, this one among them); each factor and block then says in how many seeds
    it was found. Without it the run has one seed and each is found in 1 of 1.
    """
    store, model, group = run.store, run.model, run.group
    split = stored_split(store)
    estimate: MIEstimate = store_mi(store, split.train, group=group)
    test_mu, test_classes = _latents_and_classes(store, split.test, learn.class_threshold, group)
    classification = _classification(run.out_dir, store, classifier, learn, group)
    topk = topk_table(
        estimate,
        reconstruction_mse=lambda keep: reconstruction_mse(model, store, split.test, keep),
        accuracy=lambda keep: evaluate_classifier(classifier, test_mu, test_classes, keep)["accuracy"],
    )
    analysis = _analyse_factors(store, split, model, classifier, estimate, learn, rules, group, progress)
    factors = analysis.factors
    test_mi = _test_trial_mi(store, split, group, factors)
    seed_analyses = run.seed_analyses
    if seed_analyses is None:
        seed_analyses = [analysis.seed_factors(model, rules, learn)]
    model_seed = learn.train.seed
    stability = assemble.seed_stability(factors, seed_analyses, model_seed, EEG_MATCH_RULE, **EEG_BLOCK_RULES)
    ground_truth = run.ground_truth
    check = None if ground_truth is None else check_planted_blocks(factors, ground_truth)
    report = assemble.assemble_report(
        "deap",
        _source(store, source_path),
        {
            **run.run_config,
            "preprocessing": analysis.preprocess.model_dump(mode="json"),
            "rules": rules.model_dump(mode="json"),
        },
        assemble.mi_summary(estimate, "training trials", rules.influential_threshold_nats, **test_mi),
        topk,
        TOPK_UNITS,
        {
            "influential_variance_explained": _variance_explained(model, store, split.test, estimate, rules),
            "classification": classification,
        },
        factors,
        stability,
        assemble.provenance(store, normalisation=store.attrs.get("normalisation")),
        analyses={"emotion_relevance": analysis.relevance},
        optional={"beta_sweep": beta_sweep, "ground_truth": ground_truth, "ground_truth_check": check},
    )
    band_names = analysis.preprocess.band_names
    figures = eeg_factor_figures(
        factors, analysis.traversals, DEFAULT_TRAVERSAL_VALUES, DEAP_CHANNELS, band_names, progress
    )
    confusion = confusion_figure(classification["confusion"], CLASS_NAMES)
    return assemble.write_run_report(run.out_dir, report, estimate, figures, confusion)


@dataclass(frozen=True)
class _FactorAnalysis:
    """The factor analysis on the training and validation trials that the report and every seed
    of an ensemble share (:func:`describe_factors`), with what its seed comparison needs."""

    preprocess: PreprocessConfig
    operator: ImagingOperator
    factors: list[dict]
    traversals: dict[int, FactorTraversal]
    relevance: dict
    selection_mu: np.ndarray

    def seed_factors(self, model: BetaVAE, rules: FactorRules, learn: LearnConfig) -> SeedFactors:
        """The influential factors with their effect maps, for the matching of the seeds."""
        return eeg_seed_factors(
            model, self.factors, self.selection_mu, self.operator, rules, learn.train.seed, learn.split_seed
        )


def _analyse_factors(
    store: FrameStore,
    split: Split,
    model: BetaVAE,
    classifier: EmotionLSTM | None,
    estimate: MIEstimate,
    learn: LearnConfig,
    rules: FactorRules,
    group: str,
    progress: Progress | None,
) -> _FactorAnalysis:
    """:func:`describe_factors` on the training and validation trials of ``split``."""
    preprocess = PreprocessConfig.model_validate(store.attrs["preprocessing"])
    operator = deap_imaging_operator(preprocess)
    threshold = learn.class_threshold
    val_mu, val_classes = _latents_and_classes(store, split.val, threshold, group)
    train_mu, train_classes = _latents_and_classes(store, split.train, threshold, group)
    selection = np.concatenate([split.train, split.val])
    selection_mu = np.concatenate([train_mu, val_mu])
    factors, traversals, relevance = describe_factors(
        model,
        classifier,
        estimate,
        selection_mu,
        np.concatenate([train_classes, val_classes]),
        _subjects(store, selection),
        electrode_band_power(store, selection, operator),
        val_mu,
        val_classes,
        operator,
        preprocess.band_names,
        rules,
        seed=learn.split_seed,
        progress=progress,
    )
    return _FactorAnalysis(preprocess, operator, factors, traversals, relevance, selection_mu)


def analyse_seed(
    store: FrameStore,
    model: BetaVAE,
    learn: LearnConfig,
    rules: FactorRules,
    group: str,
    progress: Progress | None = None,
) -> SeedFactors:
    """Î, relevance and blocks of one seed's β-VAE (its latents in ``group``), for the matching.

    The same analysis as the report's (:func:`describe_factors` on the training and validation
    trials, the same traversal seeds and permutations), without the classifier and the figures.
    """
    split = stored_split(store)
    estimate = store_mi(store, split.train, group=group)
    analysis = _analyse_factors(store, split, model, None, estimate, learn, rules, group, progress)
    return analysis.seed_factors(model, rules, learn)


def majority_linked_blocks(report: dict) -> list[dict]:
    """The emotion-linked blocks of the report found in a majority of its seeds: what a headline
    may name. Each: ``factor``, ``band``, ``electrodes``, ``seeds_found``, ``seeds_linked``
    (seeds in which an emotion-linked factor shows it), ``n_seeds``."""
    stability = report["stability"]
    return [
        {
            "factor": factor["index"],
            "band": block["band"],
            "electrodes": block["electrodes"],
            "seeds_found": block["seeds_found"],
            "seeds_linked": block.get("seeds_linked"),
            "n_seeds": stability["n_seeds"],
        }
        for factor in report["factors"]
        if factor["emotion"]["linked"]
        for block in factor["blocks"]
        if block.get("emotion_linked") and block["seeds_found"] >= stability["majority"]
    ]

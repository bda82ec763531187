"""Assemble a DEAP run's report.json and report.html from the store, the models and the settings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.blocks import sample_at_electrodes
from pipeline.classification import accuracy_summary, chance_verdict
from pipeline.config import PreprocessConfig
from pipeline.factors import FactorRules, describe_factors, eeg_seed_factors
from pipeline.imaging import ImagingOperator, deap_imaging_operator
from pipeline.learn import (
    LearnConfig,
    classifier_dir,
    latent_set,
    reconstruction_mse,
    secondary_protocols,
    store_classes,
    store_mi,
    stored_split,
)
from pipeline.mi import MIEstimate, influential_factors
from pipeline.models.classifier import load_classifier
from pipeline.models.sequence import EmotionLSTM, evaluate_classifier, predict_classes
from pipeline.models.vae import BetaVAE
from pipeline.progress import Progress
from pipeline.report import ReportAssets, write_report
from pipeline.report.figures import confusion_figure, mi_variance_figure, topk_figure
from pipeline.splits import CLASS_NAMES, Split
from pipeline.stability import (
    BLOCK_JACCARD,
    MATCH_THRESHOLD,
    SeedFactors,
    annotate_factors,
    consensus_factors,
    consensus_summary,
    majority,
    representative_seed,
)
from pipeline.store import LATENTS_GROUP, FrameStore
from pipeline.tables import topk_table
from pipeline.validation import check_planted_blocks


def _latents_and_classes(store: FrameStore, rows: np.ndarray, threshold: float, group: str = "latents"):
    committed, classes = store_classes(store, threshold)
    # Read even when ``rows`` is empty: the empty block keeps the latent width, so parts concatenate.
    return store.read_latents(rows, group=group)[0], classes[np.searchsorted(committed, rows)]


def protocol_classification(
    store: FrameStore,
    classifier: EmotionLSTM,
    threshold: float,
    seed: int,
    slot: str | None = None,
    group: str | None = None,
) -> dict:
    """Test accuracy of one protocol's LSTM with its interval, baselines and permutation p-value.

    Only that protocol's own split and latents (``group``: default the slot's) are read; the
    majority class comes from its training trials.
    """
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
        "split_sizes": {
            "train": int(split.train.size),
            "val": int(split.val.size),
            "test": int(split.test.size),
        },
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


def build_deap_report(
    out_dir: str | Path,
    store: FrameStore,
    model: BetaVAE,
    classifier: EmotionLSTM,
    learn: LearnConfig,
    rules: FactorRules,
    run_config: dict,
    source_path: str,
    ground_truth: dict | None = None,
    beta_sweep: dict | None = None,
    progress: Progress | None = None,
    group: str = LATENTS_GROUP,
    seed_analyses: list[SeedFactors] | None = None,
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

    Seed ensembles (``--seeds``): ``model`` is the seed ``learn.train.seed`` whose latents are in
    ``group``, and ``seed_analyses`` holds every seed's :func:`analyse_seed` (the reference seed
    first, this one among them); each factor and block then says in how many seeds it was found.
    Without it the run has one seed and each is found in 1 of 1.
    """
    split = stored_split(store)
    estimate: MIEstimate = store_mi(store, split.train, group=group)
    test_estimate = store_mi(store, split.test, group=group) if split.test.size else None
    threshold = learn.class_threshold
    test_mu, test_classes = _latents_and_classes(store, split.test, threshold, group)
    classification = protocol_classification(store, classifier, threshold, learn.split_seed, group=group)
    by_protocol = {classification["protocol"]: classification}
    for slot in secondary_protocols(store):
        other = load_classifier(classifier_dir(out_dir, slot), "classifier")
        by_protocol[slot] = protocol_classification(store, other, threshold, learn.split_seed, slot)
    topk = topk_table(
        estimate,
        reconstruction_mse=lambda keep: reconstruction_mse(model, store, split.test, keep),
        accuracy=lambda keep: evaluate_classifier(classifier, test_mu, test_classes, keep)["accuracy"],
    )
    preprocess = PreprocessConfig.model_validate(store.attrs["preprocessing"])
    operator = deap_imaging_operator(preprocess)
    factors, factor_figures, relevance, selection_mu = _describe_selection(
        store, split, model, classifier, estimate, preprocess, operator, learn, rules, group, progress
    )
    for factor in factors:
        factor["mi_test_nats"] = (
            None if test_estimate is None else float(test_estimate.per_factor_nats[factor["index"]])
        )
    model_seed = learn.train.seed
    if seed_analyses is None:
        seed_analyses = [
            eeg_seed_factors(model, factors, selection_mu, operator, rules, model_seed, learn.split_seed)
        ]
    stability = seed_stability(seed_analyses, model_seed)
    annotate_factors(factors, seed_analyses, stability.pop("consensus_records"), model_seed)
    n_trials = len(store.committed_rows())
    report = {
        "dataset": "deap",
        "source": {
            "kind": store.attrs["data_kind"],
            "path": source_path,
            "n_trials": n_trials,
            "n_frames": n_trials * store.frame_shape[0],
            # Which synthetic data set (planted, null or confound); None for recorded data.
            "scenario": store.attrs.get("synthetic", {}).get("scenario"),
        },
        "config": {
            **run_config,
            "preprocessing": preprocess.model_dump(mode="json"),
            "rules": rules.model_dump(mode="json"),
        },
        "mi": {
            **estimate.to_dict(),
            "estimated_on": "training trials",
            "influential_threshold_nats": rules.influential_threshold_nats,
            "per_factor_test_nats": None if test_estimate is None else test_estimate.per_factor_nats.tolist(),
            "total_test_nats": None if test_estimate is None else test_estimate.total_nats,
        },
        "topk": topk,
        "topk_units": {
            "mse": "mean squared error per scalp pixel of the test frames, in band-normalised units",
            "accuracy": "test accuracy of the trained LSTM with the other factors set to zero",
        },
        "influential_variance_explained": _variance_explained(model, store, split.test, estimate, rules),
        "classification": {
            **classification,
            "class_names": list(CLASS_NAMES),
            "class_rule": f"high = score > {threshold:g} (valence, arousal)",
            "test_accuracy_note": "95 % Wilson interval; majority = always the training split's most "
            "frequent class; p from shuffling the test labels against the fixed predictions",
        },
        "factors": factors,
        "stability": stability,
        "emotion_relevance": relevance,
        "provenance": {
            "package_version": __version__,
            "store": str(store.path),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "normalisation": store.attrs.get("normalisation"),
        },
    }
    if len(by_protocol) > 1:
        report["classification"]["by_protocol"] = by_protocol
    if beta_sweep is not None:
        report["beta_sweep"] = beta_sweep
    if ground_truth is not None:
        report["ground_truth"] = ground_truth
        report["ground_truth_check"] = check_planted_blocks(factors, ground_truth)
    assets = ReportAssets(
        mi_variance=mi_variance_figure(
            estimate.per_factor_nats, estimate.variance, estimate.ranking, rules.influential_threshold_nats
        ),
        topk=topk_figure(topk),
        confusion=confusion_figure(classification["confusion"], CLASS_NAMES),
        factors=factor_figures,
    )
    write_report(out_dir, report, assets)
    return report


def seed_stability(seed_analyses: list[SeedFactors], model_seed: int) -> dict:
    """report.json's ``stability``: the consensus of the seeds (the first is the reference) and
    which seed the report's factors, LSTM and top-k tables come from (``model_seed``).

    ``consensus_records`` (with the effect maps) is for :func:`annotate_factors`; pop it before
    the dict is written.
    """
    consensus = consensus_factors(seed_analyses)
    chosen, scores = representative_seed(seed_analyses, consensus)
    return {
        "n_seeds": len(seed_analyses),
        "seeds": [analysis.seed for analysis in seed_analyses],
        "reference_seed": seed_analyses[0].seed,
        "reported_seed": model_seed,
        "most_representative_seed": chosen,
        "similarity_to_consensus": {str(seed): round(score, 4) for seed, score in scores.items()},
        "majority": majority(len(seed_analyses)),
        "match_rule": f"Hungarian assignment to the reference seed on |cosine| of the signed effect maps "
        f"(z = +3 minus z = -3, per band at the electrodes), a match needs |cosine| >= {MATCH_THRESHOLD:g}",
        "match_threshold": MATCH_THRESHOLD,
        "block_rule": f"a block is found in a seed when one of its influential factors has a block of the "
        f"same band with electrode Jaccard >= {BLOCK_JACCARD:g}",
        "block_jaccard": BLOCK_JACCARD,
        "consensus": consensus_summary(consensus),
        "consensus_records": consensus,
    }


def _describe_selection(
    store: FrameStore,
    split: Split,
    model: BetaVAE,
    classifier: EmotionLSTM | None,
    estimate: MIEstimate,
    preprocess: PreprocessConfig,
    operator: ImagingOperator,
    learn: LearnConfig,
    rules: FactorRules,
    group: str,
    progress: Progress | None,
    draw: bool = True,
) -> tuple[list[dict], dict[int, dict[str, bytes]], dict, np.ndarray]:
    """:func:`describe_factors` on the training and validation trials of ``split``, the analysis
    the report and every seed of an ensemble share; also returns those trials' latent means."""
    threshold = learn.class_threshold
    val_mu, val_classes = _latents_and_classes(store, split.val, threshold, group)
    train_mu, train_classes = _latents_and_classes(store, split.train, threshold, group)
    selection = np.concatenate([split.train, split.val])
    selection_mu = np.concatenate([train_mu, val_mu])
    factors, figures, relevance = describe_factors(
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
        draw=draw,
    )
    return factors, figures, relevance, selection_mu


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
    preprocess = PreprocessConfig.model_validate(store.attrs["preprocessing"])
    operator = deap_imaging_operator(preprocess)
    factors, _, _, selection_mu = _describe_selection(
        store, split, model, None, estimate, preprocess, operator, learn, rules, group, progress, draw=False
    )
    return eeg_seed_factors(model, factors, selection_mu, operator, rules, learn.train.seed, learn.split_seed)


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

"""The skeleton every run's report shares: its key order, Î, split sizes, seed stability,
provenance, and the figures every page shows (Î and variance per factor, the top-k table).

The DEAP and image report builders (:mod:`pipeline.report.deap`, :mod:`pipeline.report.images`)
compute what differs (classification and electrode blocks; the information cut-off and
traversal montages) and hand it to :func:`assemble_report` and :func:`write_run_report`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline import __version__
from pipeline.analysis.mi import MIEstimate
from pipeline.analysis.splits import Split
from pipeline.analysis.stability import (
    MATCH_THRESHOLD,
    SeedFactors,
    annotate_factors,
    consensus_factors,
    consensus_summary,
    majority,
    representative_seed,
)
from pipeline.models.vae import BetaVAE
from pipeline.report.figures import ReportAssets, mi_variance_figure, topk_figure
from pipeline.report.writer import write_report
from pipeline.store.frames import FrameStore
from pipeline.store.layout import LATENTS_GROUP


@dataclass(frozen=True)
class ReportedRun:
    """What a report describes, whatever the data set: the run folder it is written into, the
    encoded store, the β-VAE whose latents are in ``group``, the settings that re-run it
    (``run_config``, recorded under ``config``), every seed's analysis of an ensemble
    (``seed_analyses``, the reference seed first; None for one seed) and, for generated data,
    the truth the report is checked against."""

    out_dir: str | os.PathLike
    store: FrameStore
    model: BetaVAE
    run_config: dict
    group: str = LATENTS_GROUP
    seed_analyses: list[SeedFactors] | None = None
    ground_truth: dict | None = None


def mi_summary(estimate: MIEstimate, estimated_on: str, threshold_nats: float, **extra) -> dict:
    """report.json's ``mi``: the estimate, what it was estimated on and the influential threshold,
    then the data set's ``extra`` keys."""
    return {
        **estimate.to_dict(),
        "estimated_on": estimated_on,
        "influential_threshold_nats": threshold_nats,
        **extra,
    }


def split_sizes(split: Split) -> dict[str, int]:
    """How many trials (or images) each part of ``split`` holds."""
    return {"train": int(split.train.size), "val": int(split.val.size), "test": int(split.test.size)}


def seed_stability(
    factors: list[dict],
    seed_analyses: Sequence[SeedFactors],
    reported_seed: int,
    match_rule: str,
    **rules,
) -> dict:
    """report.json's ``stability``, and each of ``factors`` annotated with its seed counts.

    The consensus of the seeds (the first is the reference), which seed the report's factors
    come from (``reported_seed``), how factors are matched (``match_rule``, the data set's words
    for :data:`~pipeline.analysis.stability.MATCH_THRESHOLD`) and any further ``rules`` (EEG blocks).
    """
    consensus = consensus_factors(seed_analyses)
    chosen, scores = representative_seed(seed_analyses, consensus)
    annotate_factors(factors, seed_analyses, consensus, reported_seed)
    return {
        "n_seeds": len(seed_analyses),
        "seeds": [analysis.seed for analysis in seed_analyses],
        "reference_seed": seed_analyses[0].seed,
        "reported_seed": reported_seed,
        "most_representative_seed": chosen,
        "similarity_to_consensus": {str(seed): round(score, 4) for seed, score in scores.items()},
        "majority": majority(len(seed_analyses)),
        "match_rule": match_rule,
        "match_threshold": MATCH_THRESHOLD,
        **rules,
        "consensus": consensus_summary(consensus),
    }


def provenance(store: FrameStore, **extra) -> dict:
    """report.json's ``provenance``: package version, store, time written, then ``extra``."""
    return {
        "package_version": __version__,
        "store": str(store.path),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def assemble_report(
    dataset: str,
    source: dict,
    config: dict,
    mi: dict,
    topk: list[dict],
    topk_units: dict[str, str],
    findings: Mapping,
    factors: list[dict],
    stability: dict,
    provenance: dict,
    analyses: Mapping | None = None,
    optional: Mapping | None = None,
) -> dict:
    """One report in the contract's key order.

    ``findings`` (the data set's measures: classification, variance explained, information
    cut-off, split sizes) follow the top-k table; ``analyses`` (e.g. the emotion relevance)
    follow the stability; ``optional`` keys (training, β sweep, ground truth) come last and are
    left out where their value is None.
    """
    report = {
        "dataset": dataset,
        "source": source,
        "config": config,
        "mi": mi,
        "topk": topk,
        "topk_units": topk_units,
        **findings,
        "factors": factors,
        "stability": stability,
        **(analyses or {}),
        "provenance": provenance,
    }
    report.update({key: value for key, value in (optional or {}).items() if value is not None})
    return report


def write_run_report(
    out_dir: str | os.PathLike,
    report: dict,
    estimate: MIEstimate,
    factor_figures: dict[int, dict[str, bytes]],
    confusion: bytes | None = None,
) -> dict:
    """Draw the figures every report has (Î and variance per factor at the report's threshold,
    the top-k table), write them with ``factor_figures`` and ``confusion``; return ``report``."""
    assets = ReportAssets(
        mi_variance=mi_variance_figure(
            estimate.per_factor_nats,
            estimate.variance,
            estimate.ranking,
            report["mi"]["influential_threshold_nats"],
        ),
        topk=topk_figure(report["topk"]),
        confusion=confusion,
        factors=factor_figures,
    )
    write_report(out_dir, report, assets)
    return report

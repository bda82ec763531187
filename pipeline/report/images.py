"""Assemble an image run's report.json and report.html: Î per factor, Table 2, traversal montages.

The image counterpart of :mod:`pipeline.report.deap`, without classifier, emotion or electrode
blocks. As in the paper (appendix A.1, A.2), Î, the top-k table and the traversal seeds come
from the test images: the β-VAE never saw them, and no choice of the run depends on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.analysis.blocks import signed_change, traverse_factor
from pipeline.analysis.mi import MIEstimate, influential_factors
from pipeline.analysis.splits import Split
from pipeline.analysis.stability import MATCH_THRESHOLD, SeedFactors
from pipeline.analysis.tables import topk_table
from pipeline.errors import InputError
from pipeline.models.decoding import latent_decoder
from pipeline.models.encoding import masked_reconstruction_mse
from pipeline.models.learn import store_mi
from pipeline.models.presets import ImagePreset
from pipeline.models.vae import BetaVAE
from pipeline.report import assemble
from pipeline.report.traversals import traversal_montage
from pipeline.store.frames import FrameStore
from pipeline.store.ingest_images import image_split

# The smallest top-k holding this share of the total Î should reconstruct about as well as all
# factors (the paper's Table 2: the top factors hold almost all information and reconstruct
# almost as well); a rise of the error above MSE_TOLERANCE is reported as a failure.
INFORMATION_SHARE = 0.99
MSE_TOLERANCE = 0.05
# How the seeds of an image ensemble are matched, in the report's words.
IMAGE_MATCH_RULE = (
    "Hungarian assignment to the reference seed on |cosine| of the signed mean "
    f"change images (z = +3 minus z = -3), a match needs |cosine| >= {MATCH_THRESHOLD:g}"
)
TOPK_UNITS = {
    "mse": "mean squared error per pixel of the test images (pixels in [0, 1]), decoded from μ "
    "with the other factors set to zero",
    "sse_per_image": "the same error summed over the pixels of one image (the paper's Table 2 scale)",
}
_DECODE_BATCH = 256
_MI_READ_ROWS = 4096


def information_cutoff(
    estimate: MIEstimate,
    mse_of: Callable[[np.ndarray], float],
    share: float = INFORMATION_SHARE,
    tolerance: float = MSE_TOLERANCE,
) -> dict:
    """The smallest top-k holding ``share`` of the total Î, and its error against all factors.

    Parameters
    ----------
    estimate : MIEstimate
    mse_of : callable(keep_mask) -> float
        Reconstruction error with only the factors of ``keep_mask``.
    share : float
        Share of the total Î the top-k must hold, in (0, 1].
    tolerance : float
        Largest relative rise of the error over the all-factor error that counts as a pass.

    Returns
    -------
    dict
        ``share``, ``n_factors`` (k), ``mi_nats`` held by them, ``mse``, ``mse_all_factors``,
        ``relative_increase`` and ``within_tolerance``.
    """
    if not isinstance(estimate, MIEstimate):
        raise InputError("estimate", f"expected an MIEstimate, got {type(estimate).__name__}")
    if not 0.0 < share <= 1.0 or not tolerance >= 0.0:
        raise InputError(
            "share/tolerance", f"share {share!r} must lie in (0, 1], tolerance {tolerance!r} >= 0"
        )
    ranked = estimate.per_factor_nats[estimate.ranking]
    cumulative = np.cumsum(ranked)
    total = float(cumulative[-1])
    # A relative slack of 1e-12 keeps rounding in the cumulative sum from demanding one factor more.
    n_kept = int(np.searchsorted(cumulative, share * total * (1.0 - 1e-12))) + 1 if total > 0 else 0
    n_kept = min(n_kept, estimate.n_factors)
    keep = np.zeros(estimate.n_factors, dtype=bool)
    keep[estimate.ranking[:n_kept]] = True
    mse_all = float(mse_of(np.ones(estimate.n_factors, dtype=bool)))
    mse_kept = float(mse_of(keep))
    relative = (mse_kept - mse_all) / mse_all if mse_all > 0 else 0.0
    return {
        "share": float(share),
        "n_factors": n_kept,
        "mi_nats": float(ranked[:n_kept].sum()),
        "mse": mse_kept,
        "mse_all_factors": mse_all,
        "relative_increase": float(relative),
        "tolerance": float(tolerance),
        "within_tolerance": bool(relative <= tolerance),
    }


def _seed_positions(labels: np.ndarray, n_seeds: int, seed: int) -> np.ndarray:
    """Seed images: one per class first (so a montage shows different digits), then random others."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(labels.size)
    chosen: list[int] = []
    seen: set[float] = set()
    for position in order:
        label = float(labels[position])
        if label >= 0 and label not in seen:
            seen.add(label)
            chosen.append(int(position))
    chosen = chosen[:n_seeds]
    chosen += [int(p) for p in order if int(p) not in chosen][: n_seeds - len(chosen)]
    return np.array(chosen, dtype=np.int64)


def _row_label(label: float, index: int) -> str:
    return f"image {index + 1}" if label < 0 else f"class {int(label)}"


def build_image_report(
    run: assemble.ReportedRun,
    preset: ImagePreset,
    source: dict,
    training: dict | None = None,
    reference_seed: int | None = None,
) -> dict:
    """Compute Î, Table 2 and the traversal montages of an encoded image store; write the report.

    Parameters
    ----------
    run : ReportedRun
        The run folder (receives report.json, report.html and figures/), the image store encoded
        by ``run.model`` (at least its test images) into ``run.group``, ``run.run_config``
        (everything needed to re-run, recorded under ``config``), ``run.seed_analyses`` (every
        seed's :func:`image_seed_factors`, the reference seed first, ``model``'s among them: each
        influential factor then says in how many seeds it was found; None for one seed) and
        ``run.ground_truth`` (procedural images' ``ProceduralSpec.ground_truth()``: the report
        then compares its ``n_factors`` with the number of influential factors).
    preset : ImagePreset
        Caps, evaluation size, threshold, traversal settings.
    source : dict
        ``kind`` and ``path`` of the data (and extra keys such as ``skipped``); the counts
        are filled in here.
    training : dict, optional
        How training went (epochs run, best epoch, ...), recorded under ``training``.
    reference_seed : int, optional
        The ensemble's reference seed (the run's ``--seed``; default ``preset.train.seed``): it
        chooses the test images the traversals start from, the same for every seed.

    Returns
    -------
    dict
        The report as written to report.json.
    """
    if not isinstance(preset, ImagePreset):
        raise InputError("preset", f"expected an ImagePreset, got {type(preset).__name__}")
    store, model, group, ground_truth = run.store, run.model, run.group, run.ground_truth
    if not isinstance(source, dict) or not isinstance(run.run_config, dict):
        raise InputError("source/run_config", "must both be dicts")
    if not isinstance(model, BetaVAE) or model.input_shape != tuple(store.frame_shape[1:]):
        raise InputError("model", f"must be a BetaVAE for the store's images {tuple(store.frame_shape[1:])}")
    split = image_split(store, preset.caps)
    test = _test_images(store, model, split, preset, group)
    topk = test.topk()
    influential = influential_factors(test.estimate, preset.threshold_nats)
    if reference_seed is None:
        reference_seed = preset.train.seed
    factors, factor_figures = _traversed_factors(store, model, preset, test, reference_seed)
    seed_analyses = run.seed_analyses
    if seed_analyses is None:
        seed_analyses = [image_seed_factors(store, model, preset, group, reference_seed)]
    stability = assemble.seed_stability(factors, seed_analyses, preset.train.seed, IMAGE_MATCH_RULE)
    n_images = int(store.committed_rows().size)
    report = assemble.assemble_report(
        preset.dataset,
        {**source, "n_trials": n_images, "n_frames": n_images, "n_images": n_images},
        run.run_config,
        assemble.mi_summary(
            test.estimate,
            f"{test.rows.size} test images",
            float(preset.threshold_nats),
            n_influential=int(influential.size),
            influential=[int(j) for j in influential],
        ),
        topk,
        TOPK_UNITS,
        {
            "information_cutoff": information_cutoff(test.estimate, test.mse_of),
            "split_sizes": assemble.split_sizes(split),
        },
        factors,
        stability,
        assemble.provenance(store, store_config_hash=store.config_hash),
        optional={
            "training": training,
            "ground_truth": ground_truth,
            "ground_truth_check": None if ground_truth is None else _count_check(ground_truth, influential),
        },
    )
    return assemble.write_run_report(run.out_dir, report, test.estimate, factor_figures)


@dataclass(frozen=True)
class _TestImages:
    """The test images a report measures on: their rows, Î, targets and posterior means."""

    rows: np.ndarray
    estimate: MIEstimate
    targets: np.ndarray
    mu: np.ndarray
    model: BetaVAE

    def mse_of(self, keep: np.ndarray) -> float:
        """Reconstruction error of the test images with only the factors of ``keep``."""
        positions = np.arange(self.rows.size)
        return masked_reconstruction_mse(
            self.model,
            self.targets[:, None],
            positions,
            keep,
            mu=self.mu[:, None],
            trials_per_read=_DECODE_BATCH,
        )

    def topk(self) -> list[dict]:
        """Table 2: Î and the reconstruction error of the top-k factors, also per image."""
        rows = topk_table(self.estimate, reconstruction_mse=self.mse_of)
        for row in rows:
            row["accuracy"] = None  # no classifier on image data
            row["sse_per_image"] = row["mse"] * int(np.prod(self.model.input_shape))
        return rows


def _test_images(
    store: FrameStore, model: BetaVAE, split: Split, preset: ImagePreset, group: str
) -> _TestImages:
    rows = split.test[: preset.eval_images]
    if rows.size == 0:
        raise InputError(store.path, "holds no test image; Î and the top-k table are computed on test images")
    estimate = store_mi(store, rows, trials_per_read=_MI_READ_ROWS, group=group)
    targets = store.read_frames(rows)[:, 0]
    mu = store.read_latents(rows, group=group)[0][:, 0, :]
    return _TestImages(rows, estimate, targets, mu, model)


def _traversed_factors(
    store: FrameStore, model: BetaVAE, preset: ImagePreset, test: _TestImages, reference_seed: int
) -> tuple[list[dict], dict[int, dict[str, bytes]]]:
    """The report entries and traversal montages of the top factors by Î, each traversed from
    the same seed test images (one per class first, chosen with ``reference_seed``)."""
    estimate = test.estimate
    labels = store.labels[np.searchsorted(store.committed_rows(), test.rows), 0]
    seeds = _seed_positions(labels, min(preset.n_seed_images, test.rows.size), reference_seed)
    row_labels = [_row_label(labels[p], i) for i, p in enumerate(seeds)]
    values = np.asarray(preset.traversal_values)
    decode = latent_decoder(model)
    factors, factor_figures = [], {}
    for rank, index in enumerate(estimate.ranking[: preset.n_reported_factors], start=1):
        index = int(index)
        traversal = traverse_factor(decode, test.mu[seeds], index, values)
        shown = np.clip(traversal, 0.0, 1.0)
        factors.append(
            {
                "index": index,
                "rank": rank,
                "mi_nats": float(estimate.per_factor_nats[index]),
                "variance": float(estimate.variance[index]),
                "kl_prior_nats": float(estimate.kl_prior_nats[index]),
                "influential": bool(estimate.per_factor_nats[index] > preset.threshold_nats),
                # How far the decoded pixels move over the traversal, averaged over seeds and pixels.
                "traversal_pixel_range": float(np.mean(shown.max(axis=0) - shown.min(axis=0))),
            }
        )
        factor_figures[index] = {"traversal": traversal_montage(traversal, values, row_labels)}
    return factors, factor_figures


def _count_check(ground_truth: dict, influential: np.ndarray) -> dict:
    """Procedural images: is the number of influential factors within one of the true number?"""
    n_true = int(ground_truth["n_factors"])
    return {
        "n_true_factors": n_true,
        "n_influential": int(influential.size),
        "within_one": bool(abs(int(influential.size) - n_true) <= 1),
    }


def image_seed_factors(
    store: FrameStore, model: BetaVAE, preset: ImagePreset, group: str, reference_seed: int
) -> SeedFactors:
    """The influential factors of one seed's β-VAE (its latents in ``group``) with their effects.

    A factor's effect is the signed mean change image: decoded at z_j = +3 minus at z_j = −3,
    averaged over the test images the report's traversals start from (chosen with
    ``reference_seed``, so every seed of an ensemble is traversed from the same images).
    """
    split = image_split(store, preset.caps)
    eval_rows = split.test[: preset.eval_images]
    if eval_rows.size == 0:
        raise InputError(store.path, "holds no test image; factors are compared on test images")
    estimate = store_mi(store, eval_rows, trials_per_read=_MI_READ_ROWS, group=group)
    influential = influential_factors(estimate, preset.threshold_nats)
    # In ranking order, as the report lists them.
    indices = np.array([j for j in estimate.ranking if j in set(influential.tolist())], dtype=np.int64)
    mu = store.read_latents(eval_rows, group=group)[0][:, 0, :]
    labels = store.labels[np.searchsorted(store.committed_rows(), eval_rows), 0]
    seeds = _seed_positions(labels, min(preset.n_seed_images, eval_rows.size), reference_seed)
    decode = latent_decoder(model)
    effects = [signed_change(decode, mu[seeds], int(index)) for index in indices]
    return SeedFactors(
        seed=preset.train.seed,
        indices=indices,
        effects=np.array(effects) if effects else np.zeros((0, *model.input_shape)),
        mi_nats=estimate.per_factor_nats[indices],
    )

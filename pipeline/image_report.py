"""Assemble an image run's report.json and report.html: Î per factor, Table 2, traversal montages.

The image counterpart of :mod:`pipeline.deap_report`, without classifier, emotion or electrode
blocks. As in the paper (appendix A.1, A.2), Î, the top-k table and the traversal seeds come
from the test images: the β-VAE never saw them, and no choice of the run depends on them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from pipeline import __version__
from pipeline.blocks import signed_change, traverse_factor
from pipeline.errors import InputError
from pipeline.image_ingest import image_split
from pipeline.learn import store_mi
from pipeline.mi import MIEstimate, influential_factors
from pipeline.models.encoding import masked_reconstruction_mse
from pipeline.models.vae import BetaVAE
from pipeline.presets import ImagePreset
from pipeline.report import ReportAssets, write_report
from pipeline.report.figures import FIGURE_DPI, mi_variance_figure, topk_figure
from pipeline.stability import (
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

# The smallest top-k holding this share of the total Î should reconstruct about as well as all
# factors (the paper's Table 2: the top factors hold almost all information and reconstruct
# almost as well); a rise of the error above MSE_TOLERANCE is reported as a failure.
INFORMATION_SHARE = 0.99
MSE_TOLERANCE = 0.05
_DECODE_BATCH = 256
_MI_READ_ROWS = 4096


def latent_decoder(model: BetaVAE) -> Callable[[np.ndarray], np.ndarray]:
    """The mean of p(x|z) as a numpy function: float32 latents (m, n_latents) -> images (m, C, H, W).

    The form :func:`pipeline.blocks.traverse_factor` takes; the output is not clipped.
    """
    if not isinstance(model, BetaVAE):
        raise InputError("model", f"expected a BetaVAE, got {type(model).__name__}")
    device = next(model.parameters()).device

    def decode(latents: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (
                model.decode(torch.from_numpy(np.ascontiguousarray(latents)).to(device)).float().cpu().numpy()
            )

    return decode


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


def traversal_montage(traversal, values, row_labels: Sequence[str] | None = None) -> bytes:
    """One factor's traversal as a grid: one row per seed image, one column per value of the factor.

    Parameters
    ----------
    traversal : array (n_values, n_seeds, C, H, W)
        Output of :func:`pipeline.blocks.traverse_factor`, C = 1 (grayscale) or 3 (RGB).
        Values are clipped to [0, 1] for display (a Gaussian decoder's mean may overshoot).
    values : array (n_values,)
        The factor's value in each column, printed above it.
    row_labels : sequence of n_seeds str, optional
        Printed left of each row (e.g. the seed image's class).

    Returns
    -------
    bytes
        PNG of the montage, all cells on one fixed [0, 1] scale so rows compare directly.
    """
    frames = np.asarray(traversal, dtype=np.float64)
    if frames.ndim != 5 or 0 in frames.shape or frames.shape[2] not in (1, 3):
        raise InputError("traversal", f"shape {frames.shape}; expected (n_values, n_seeds, 1 or 3, H, W)")
    if not np.isfinite(frames).all():
        raise InputError("traversal", "contains NaN or infinite values")
    z_values = np.asarray(values, dtype=np.float64)
    n_values, n_seeds, n_channels, height, width = frames.shape
    if z_values.shape != (n_values,):
        raise InputError("values", f"has shape {z_values.shape}; the traversal has {n_values} values")
    labels = [f"seed {i + 1}" for i in range(n_seeds)] if row_labels is None else [str(s) for s in row_labels]
    if len(labels) != n_seeds:
        raise InputError("row_labels", f"has {len(labels)} labels for {n_seeds} seed images")

    gap = max(1, width // 10)
    mosaic = np.ones((n_seeds * (height + gap) - gap, n_values * (width + gap) - gap, 3))
    cells = np.clip(frames, 0.0, 1.0)
    if n_channels == 1:
        cells = np.repeat(cells, 3, axis=2)
    for v in range(n_values):
        for s in range(n_seeds):
            top, left = s * (height + gap), v * (width + gap)
            mosaic[top : top + height, left : left + width] = np.moveaxis(cells[v, s], 0, -1)
    scale = 0.85 if height <= 32 else 1.1
    fig = Figure(figsize=(0.9 + scale * n_values, 0.45 + scale * n_seeds), layout="constrained")
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    ax.xaxis.tick_top()
    ax.set_xticks(
        np.arange(n_values) * (width + gap) + (width - 1) / 2,
        [f"{z:+.2g}" if z != 0 else "0" for z in z_values],
        fontsize=8,
    )
    ax.set_yticks(np.arange(n_seeds) * (height + gap) + (height - 1) / 2, labels, fontsize=8)
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


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
    out_dir: str | Path,
    store: FrameStore,
    model: BetaVAE,
    preset: ImagePreset,
    run_config: dict,
    source: dict,
    training: dict | None = None,
    ground_truth: dict | None = None,
    group: str = LATENTS_GROUP,
    seed_analyses: list[SeedFactors] | None = None,
    reference_seed: int | None = None,
) -> dict:
    """Compute Î, Table 2 and the traversal montages of an encoded image store; write the report.

    Parameters
    ----------
    out_dir : str or Path
        Run folder; receives report.json, report.html and figures/.
    store : FrameStore
        The image store, encoded by ``model`` (at least its test images).
    model : BetaVAE
        The trained β-VAE.
    preset : ImagePreset
        Caps, evaluation size, threshold, traversal settings.
    run_config : dict
        Everything needed to re-run (JSON-native), recorded under ``config``.
    source : dict
        ``kind`` and ``path`` of the data (and extra keys such as ``skipped``); the counts
        are filled in here.
    training : dict, optional
        How training went (epochs run, best epoch, ...), recorded under ``training``.
    ground_truth : dict, optional
        The generating process of procedural images (``ProceduralSpec.ground_truth()``); the
        report then compares its ``n_factors`` with the number of influential factors.
    group : str
        The latent group ``model`` wrote (another seed's of an ensemble: ``latents_seed<k>``).
    seed_analyses : list of SeedFactors, optional
        Every seed's :func:`image_seed_factors` (the reference seed first, ``model``'s among
        them): each influential factor then says in how many seeds it was found. Without it the
        run has one seed.
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
    if not isinstance(source, dict) or not isinstance(run_config, dict):
        raise InputError("source/run_config", "must both be dicts")
    if not isinstance(model, BetaVAE) or model.input_shape != tuple(store.frame_shape[1:]):
        raise InputError("model", f"must be a BetaVAE for the store's images {tuple(store.frame_shape[1:])}")
    split = image_split(store, preset.caps)
    eval_rows = split.test[: preset.eval_images]
    if eval_rows.size == 0:
        raise InputError(store.path, "holds no test image; Î and the top-k table are computed on test images")
    estimate = store_mi(store, eval_rows, trials_per_read=_MI_READ_ROWS, group=group)
    targets = store.read_frames(eval_rows)
    stored_mu = store.read_latents(eval_rows, group=group)[0]
    mu = stored_mu[:, 0, :]

    def mse_of(keep: np.ndarray) -> float:
        positions = np.arange(eval_rows.size)
        return masked_reconstruction_mse(
            model, targets, positions, keep, mu=stored_mu, trials_per_read=_DECODE_BATCH
        )

    pixels_per_image = int(np.prod(model.input_shape))
    topk = topk_table(estimate, reconstruction_mse=mse_of)
    for row in topk:
        row["accuracy"] = None  # no classifier on image data
        row["sse_per_image"] = row["mse"] * pixels_per_image
    cutoff = information_cutoff(estimate, mse_of)
    influential = influential_factors(estimate, preset.threshold_nats)

    if reference_seed is None:
        reference_seed = preset.train.seed
    committed_rows = store.committed_rows()
    labels = store.labels[np.searchsorted(committed_rows, eval_rows), 0]
    seeds = _seed_positions(labels, min(preset.n_seed_images, eval_rows.size), reference_seed)
    row_labels = [_row_label(labels[p], i) for i, p in enumerate(seeds)]
    values = np.asarray(preset.traversal_values)
    decode = latent_decoder(model)
    factors, factor_figures = [], {}
    for rank, index in enumerate(estimate.ranking[: preset.n_reported_factors], start=1):
        index = int(index)
        traversal = traverse_factor(decode, mu[seeds], index, values)
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

    if seed_analyses is None:
        seed_analyses = [image_seed_factors(store, model, preset, group, reference_seed)]
    consensus = consensus_factors(seed_analyses)
    chosen, scores = representative_seed(seed_analyses, consensus)
    annotate_factors(factors, seed_analyses, consensus, preset.train.seed)
    n_images = int(committed_rows.size)
    report = {
        "dataset": preset.dataset,
        "source": {**source, "n_trials": n_images, "n_frames": n_images, "n_images": n_images},
        "config": run_config,
        "mi": {
            **estimate.to_dict(),
            "estimated_on": f"{eval_rows.size} test images",
            "influential_threshold_nats": float(preset.threshold_nats),
            "n_influential": int(influential.size),
            "influential": [int(j) for j in influential],
        },
        "topk": topk,
        "topk_units": {
            "mse": "mean squared error per pixel of the test images (pixels in [0, 1]), decoded from μ "
            "with the other factors set to zero",
            "sse_per_image": "the same error summed over the pixels of one image (the paper's Table 2 scale)",
        },
        "information_cutoff": cutoff,
        "split_sizes": {
            "train": int(split.train.size),
            "val": int(split.val.size),
            "test": int(split.test.size),
        },
        "factors": factors,
        "stability": {
            "n_seeds": len(seed_analyses),
            "seeds": [analysis.seed for analysis in seed_analyses],
            "reference_seed": seed_analyses[0].seed,
            "reported_seed": preset.train.seed,
            "most_representative_seed": chosen,
            "similarity_to_consensus": {str(seed): round(score, 4) for seed, score in scores.items()},
            "majority": majority(len(seed_analyses)),
            "match_rule": "Hungarian assignment to the reference seed on |cosine| of the signed mean "
            f"change images (z = +3 minus z = -3), a match needs |cosine| >= {MATCH_THRESHOLD:g}",
            "match_threshold": MATCH_THRESHOLD,
            "consensus": consensus_summary(consensus),
        },
        "provenance": {
            "package_version": __version__,
            "store": str(store.path),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "store_config_hash": store.config_hash,
        },
    }
    if training is not None:
        report["training"] = training
    if ground_truth is not None:
        n_true = int(ground_truth["n_factors"])
        report["ground_truth"] = ground_truth
        report["ground_truth_check"] = {
            "n_true_factors": n_true,
            "n_influential": int(influential.size),
            "within_one": bool(abs(int(influential.size) - n_true) <= 1),
        }
    assets = ReportAssets(
        mi_variance=mi_variance_figure(
            estimate.per_factor_nats, estimate.variance, estimate.ranking, preset.threshold_nats
        ),
        topk=topk_figure(topk),
        factors=factor_figures,
    )
    write_report(out_dir, report, assets)
    return report


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

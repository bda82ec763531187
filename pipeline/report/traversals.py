"""Traversal figures as PNG bytes: a factor swept over its values, decoded, laid out as a grid.

Like :mod:`pipeline.report.figures`, every function takes plain arrays (no model objects),
validates them and draws off-screen on a bare :class:`~matplotlib.figure.Figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from pipeline.errors import InputError
from pipeline.progress import Progress, counted
from pipeline.report.figures import finite_array, png_bytes, topomap_figure


def _strip_row_labels(images: np.ndarray, band_names: Sequence[str] | None, rgb: bool) -> list[str]:
    """A strip's row labels: one unlabelled row for RGB frames, else one row per channel."""
    n_channels = images.shape[1]
    if rgb:
        if n_channels != 3:
            raise InputError("frames", f"has {n_channels} channel(s); an RGB strip needs 3")
        if images.min() < 0.0 or images.max() > 1.0:
            raise InputError("frames", "RGB frames must lie in [0, 1]")
        return [""]
    if band_names is None:
        return [f"channel {c}" for c in range(n_channels)]
    row_labels = [str(name) for name in band_names]
    if len(row_labels) != n_channels:
        raise InputError("band_names", f"has {len(row_labels)} name(s); frames have {n_channels} channels")
    return row_labels


def _draw_strip_row(
    fig: Figure, ax, images: np.ndarray, row: int, column_starts: np.ndarray, rgb: bool
) -> None:
    """Row ``row`` of a strip as one mosaic image (frames side by side, blank gaps between)."""
    n_channels, height, width = images.shape[1:]
    mosaic_width = column_starts[-1] + width
    if rgb:
        mosaic = np.ones((height, mosaic_width, 3))
        for k, start in enumerate(column_starts):
            mosaic[:, start : start + width] = np.moveaxis(images[k], 0, -1)
        ax.imshow(mosaic, interpolation="nearest")
        return
    mosaic = np.full((height, mosaic_width), np.nan)
    for k, start in enumerate(column_starts):
        mosaic[:, start : start + width] = images[k, row]
    cmap = matplotlib.colormaps["gray" if n_channels == 1 else "viridis"].with_extremes(bad="white")
    shown = ax.imshow(
        mosaic,
        interpolation="nearest",
        cmap=cmap,
        vmin=float(images[:, row].min()),
        vmax=float(images[:, row].max()),
    )
    fig.colorbar(shown, ax=ax, shrink=0.9, pad=0.01, format="%.2g")


def traversal_strip(frames, values, band_names: Sequence[str] | None = None, rgb: bool = False) -> bytes:
    """Decoded frames of one factor traversal, one column per traversal value.

    Parameters
    ----------
    frames : array (n_values, C, H, W)
        Decoder outputs while one latent factor sweeps ``values`` and the others stay fixed.
    values : array (n_values,)
        The factor's value for each frame, printed above its column.
    band_names : sequence of C str, optional
        Row labels (frequency bands for EEG); defaults to ``channel 0..C-1``.
    rgb : bool
        Draw each frame as one colour image (needs C == 3, values in [0, 1]); otherwise draw one
        row per channel with a colour scale shared along the row (grayscale when C == 1).

    Returns
    -------
    bytes
        PNG of the strip.
    """
    images = finite_array(frames, "frames", ndim=4)
    z_values = finite_array(values, "values", ndim=1)
    n_values = images.shape[0]
    if z_values.shape[0] != n_values:
        raise InputError("values", f"has {z_values.shape[0]} entries; frames has {n_values} traversal steps")
    row_labels = _strip_row_labels(images, band_names, rgb)
    n_rows = len(row_labels)
    width = images.shape[3]
    gap = max(1, width // 12)
    # One mosaic image per row draws far faster than one axes per frame and keeps the frames
    # of a row on exactly one colour scale.
    column_starts = np.arange(n_values) * (width + gap)
    fig = Figure(
        figsize=(0.22 + 1.05 * n_values * (width + gap) / width, 0.5 + 1.05 * n_rows), layout="constrained"
    )
    axes = fig.subplots(n_rows, 1, squeeze=False)[:, 0]
    for row, (ax, label) in enumerate(zip(axes, row_labels, strict=True)):
        _draw_strip_row(fig, ax, images, row, column_starts, rgb)
        ax.set_yticks([])
        ax.set_ylabel(label, fontsize=9)
        ax.spines[:].set_visible(False)
        if row == 0:
            ax.xaxis.tick_top()
            ax.set_xticks(
                column_starts + (width - 1) / 2,
                [f"z = {z:+.2g}" if z != 0 else "z = 0" for z in z_values],
                fontsize=8,
            )
            ax.tick_params(axis="x", length=0)
        else:
            ax.set_xticks([])
    return png_bytes(fig)


def eeg_factor_figures(
    factors: Sequence[Mapping],
    traversals: Mapping[int, object],
    values,
    ch_names: Sequence[str],
    band_names: Sequence[str],
    progress: Progress | None = None,
) -> dict[int, dict[str, bytes]]:
    """The scalp map and traversal strip of each traversed EEG factor, its blocks highlighted.

    Parameters
    ----------
    factors : sequence of mapping
        The report's factor entries (``index``, ``blocks``).
    traversals : mapping int -> traversal
        Per factor index to draw, an object with ``change`` (n_bands, n_electrodes), the change
        per electrode, and ``frames`` (n_values, n_bands, H, W), one seed frame's decoded traversal
        (:class:`pipeline.analysis.factors.FactorTraversal`).
    values : array (n_values,)
        The traversal's values of the factor.
    progress : callable, optional
        ``progress(stage, done, total)`` per factor drawn (see :mod:`pipeline.progress`).
    """
    drawn = [factor for factor in factors if int(factor["index"]) in traversals]
    figures: dict[int, dict[str, bytes]] = {}
    for factor in counted(drawn, progress, "figures (factors)", len(drawn)):
        index = int(factor["index"])
        highlight: dict[str, list[str]] = {}
        for block in factor["blocks"]:
            highlight.setdefault(block["band"], []).extend(block["electrodes"])
        traversal = traversals[index]
        figures[index] = {
            "topomap": topomap_figure(traversal.change, ch_names, band_names, highlight=highlight),
            "traversal": traversal_strip(traversal.frames, values, band_names),
        }
    return figures


def traversal_montage(traversal, values, row_labels: Sequence[str] | None = None) -> bytes:
    """One factor's traversal as a grid: one row per seed image, one column per value of the factor.

    Parameters
    ----------
    traversal : array (n_values, n_seeds, C, H, W)
        Output of :func:`pipeline.analysis.blocks.traverse_factor`, C = 1 (grayscale) or 3 (RGB).
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
    return png_bytes(fig)

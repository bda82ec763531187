"""Report figures as PNG bytes: small, self-describing and rendered off-screen.

Every function takes plain arrays (no model objects), validates them, draws on a bare
:class:`~matplotlib.figure.Figure` (rendered by Agg, without pyplot, so the global backend
of a notebook or worker is left alone) and returns the encoded PNG so the HTML can embed it
and the writer can store it beside ``report.json``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure

from pipeline.errors import InputError

FIGURE_DPI = 100
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FACTOR_FIGURES = ("topomap", "traversal")
_INFLUENTIAL_COLOUR = "#1f5fa8"
_BELOW_THRESHOLD_COLOUR = "#a9b4c2"
_VARIANCE_COLOUR = "#c0703a"


def png_bytes(fig: Figure) -> bytes:
    """The figure encoded as PNG at the report's resolution."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def finite_array(values, name: str, ndim: int) -> np.ndarray:
    """``values`` as a non-empty float64 array of ``ndim`` dimensions, all finite, or one clear error."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(name, f"is not numeric ({err})") from err
    if array.ndim != ndim:
        raise InputError(name, f"has {array.ndim} dimension(s), shape {array.shape}; expected {ndim}")
    if array.size == 0:
        raise InputError(name, "is empty")
    if not np.all(np.isfinite(array)):
        raise InputError(name, f"holds {int(np.sum(~np.isfinite(array)))} non-finite value(s)")
    return array


def _ranking_permutation(ranking, n_factors: int, name: str) -> np.ndarray:
    order = np.asarray(ranking)
    if order.ndim != 1 or order.shape[0] != n_factors:
        raise InputError(name, f"has shape {order.shape}; expected ({n_factors},), one entry per factor")
    if not np.issubdtype(order.dtype, np.integer) or sorted(order.tolist()) != list(range(n_factors)):
        raise InputError(name, f"is not a permutation of the factor indices 0..{n_factors - 1}")
    return order


def _check_png(data, name: str) -> None:
    if not isinstance(data, bytes) or not data.startswith(PNG_SIGNATURE):
        raise InputError(name, "is not PNG bytes")


@dataclass(frozen=True)
class ReportAssets:
    """The figures of one report, as PNG bytes.

    Attributes
    ----------
    mi_variance : bytes
        Î and variance per factor (``figures.mi_variance_figure``).
    topk : bytes, optional
        Total Î, MSE and accuracy against the share of factors kept (``figures.topk_figure``).
    confusion : bytes, optional
        Test confusion matrix (``figures.confusion_figure``).
    factors : dict int -> dict str -> bytes
        Per reported factor index, its ``"topomap"`` and/or ``"traversal"`` figure.
    """

    mi_variance: bytes
    topk: bytes | None = None
    confusion: bytes | None = None
    factors: dict[int, dict[str, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_png(self.mi_variance, "ReportAssets.mi_variance")
        for name in ("topk", "confusion"):
            if getattr(self, name) is not None:
                _check_png(getattr(self, name), f"ReportAssets.{name}")
        for index, figures in self.factors.items():
            if not isinstance(index, int) or isinstance(index, bool):
                raise InputError("ReportAssets.factors", f"key {index!r} is not a factor index")
            unknown = set(figures) - set(FACTOR_FIGURES)
            if unknown:
                raise InputError(
                    f"ReportAssets.factors[{index}]",
                    f"has unknown figure(s) {sorted(unknown)}; expected {FACTOR_FIGURES}",
                )
            for kind, data in figures.items():
                _check_png(data, f"ReportAssets.factors[{index}][{kind!r}]")

    def check_matches(self, report: Mapping) -> None:
        """Refuse figures of a factor the (JSON-native) report does not list under ``factors``."""
        reported = {factor["index"] for factor in report.get("factors", [])}
        stray = sorted(set(self.factors) - reported)
        if stray:
            raise InputError(
                "ReportAssets.factors",
                f"has figures for factor(s) {stray}, which the report does not list under 'factors'",
            )


def mi_variance_figure(per_factor_nats, variance, ranking, threshold_nats: float | None = None) -> bytes:
    """Î(X;Z_j) and the variance of μ_j per factor, both in the order of the Î ranking.

    Parameters
    ----------
    per_factor_nats : array (H,)
        Estimated mutual information of each factor with the data, in nats.
    variance : array (H,)
        Variance of the posterior mean μ_j over all frames.
    ranking : int array (H,)
        Factor indices sorted by decreasing Î (a permutation of ``0..H-1``).
    threshold_nats : float, optional
        Î above which a factor counts as influential; drawn as a dashed line and used to
        colour the bars. ``None`` draws no line and colours every bar alike.

    Returns
    -------
    bytes
        The figure as PNG: Î bars on top, variance bars below, sharing the factor axis,
        so factors with high variance but little information stand out.
    """
    mi = finite_array(per_factor_nats, "per_factor_nats", ndim=1)
    var = finite_array(variance, "variance", ndim=1)
    if var.shape != mi.shape:
        raise InputError("variance", f"has shape {var.shape}; per_factor_nats has {mi.shape}")
    if np.any(mi < 0) or np.any(var < 0):
        raise InputError("per_factor_nats/variance", "hold negative values; both are non-negative quantities")
    order = _ranking_permutation(ranking, mi.shape[0], "ranking")
    if threshold_nats is not None and not (np.isfinite(threshold_nats) and threshold_nats >= 0):
        raise InputError("threshold_nats", f"is {threshold_nats!r}; expected a finite value >= 0")

    n_factors = mi.shape[0]
    positions = np.arange(n_factors)
    labels = [f"z{j}" for j in order]
    if threshold_nats is None:
        colours = [_INFLUENTIAL_COLOUR] * n_factors
    else:
        colours = [_INFLUENTIAL_COLOUR if mi[j] > threshold_nats else _BELOW_THRESHOLD_COLOUR for j in order]

    width = float(np.clip(0.28 * n_factors + 1.5, 5.0, 11.0))
    fig = Figure(figsize=(width, 4.4), layout="constrained")
    ax_mi, ax_var = fig.subplots(2, 1, sharex=True)
    ax_mi.bar(positions, mi[order], color=colours)
    ax_mi.set_ylabel("Î(X; z$_j$) [nats]")
    ax_mi.set_title("Information per factor, factors sorted by Î", fontsize=10, loc="left")
    if threshold_nats is not None:
        ax_mi.axhline(threshold_nats, color="#b0262c", linestyle="--", linewidth=1)
        ax_mi.text(
            n_factors - 0.5,
            threshold_nats,
            f" threshold {threshold_nats:.3g} nats",
            color="#b0262c",
            fontsize=8,
            ha="right",
            va="bottom",
        )
    ax_var.bar(positions, var[order], color=_VARIANCE_COLOUR)
    ax_var.set_ylabel("Var(μ$_j$)")
    ax_var.set_title("Variance of the posterior mean, same order", fontsize=10, loc="left")
    # Beyond ~48 factors the labels would overlap; every step-th one is enough to find a factor.
    step = int(np.ceil(n_factors / 48))
    ax_var.set_xticks(positions[::step], labels[::step], rotation=90 if n_factors > 24 else 0, fontsize=8)
    ax_var.set_xlim(-0.6, n_factors - 0.4)
    for ax in (ax_mi, ax_var):
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="#e3e6ea", linewidth=0.6)
        ax.set_axisbelow(True)
    return png_bytes(fig)


def topk_figure(topk_rows: Sequence[Mapping]) -> bytes:
    """Total Î, reconstruction MSE and accuracy against the percentage of top factors kept.

    Parameters
    ----------
    topk_rows : sequence of mappings
        Rows of the report's ``topk`` table, each with ``percent``, ``total_mi_nats``,
        ``mse`` and ``accuracy``; ``mse`` or ``accuracy`` may be ``None`` where the data set
        has no such measure, and a measure missing in every row gets no panel.

    Returns
    -------
    bytes
        PNG with one panel per available measure.
    """
    if not isinstance(topk_rows, Sequence) or len(topk_rows) == 0:
        raise InputError("topk", "must be a non-empty list of rows")
    measures = {"total_mi_nats": "total Î [nats]", "mse": "reconstruction MSE", "accuracy": "test accuracy"}
    for i, row in enumerate(topk_rows):
        if not isinstance(row, Mapping):
            raise InputError(f"topk[{i}]", f"is a {type(row).__name__}; expected a mapping")
        missing = [key for key in ("percent", *measures) if key not in row]
        if missing:
            raise InputError(f"topk[{i}]", f"lacks key(s) {missing}")
    percent = finite_array([row["percent"] for row in topk_rows], "topk percent", ndim=1)
    order = np.argsort(percent)

    panels = []
    for key, label in measures.items():
        values = [row[key] for row in topk_rows]
        if all(value is None for value in values):
            continue
        series = np.array([np.nan if value is None else float(value) for value in values])
        panels.append((label, series))

    fig = Figure(figsize=(3.3 * len(panels), 2.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (label, series) in zip(axes[0], panels, strict=True):
        known = order[np.isfinite(series[order])]
        ax.plot(percent[known], series[known], marker="o", color=_INFLUENTIAL_COLOUR, linewidth=1.5)
        ax.set_xlabel("top factors kept [%]")
        ax.set_title(label, fontsize=10, loc="left")
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(color="#e3e6ea", linewidth=0.6)
    return png_bytes(fig)


def confusion_figure(confusion, class_names: Sequence[str]) -> bytes:
    """Confusion matrix of the test trials: counts annotated, colour = fraction of the true class.

    Parameters
    ----------
    confusion : int array (K, K)
        ``confusion[i, k]`` counts test trials of true class ``i`` predicted as ``k``.
    class_names : sequence of K str
        Class labels in index order.

    Returns
    -------
    bytes
        PNG of the row-normalised matrix, so classes with few trials read as clearly as others.
    """
    counts = finite_array(confusion, "confusion", ndim=2)
    n_classes = counts.shape[0]
    if counts.shape != (n_classes, n_classes):
        raise InputError("confusion", f"has shape {counts.shape}; expected a square matrix")
    if np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise InputError("confusion", "must hold non-negative whole counts")
    names = [str(name) for name in class_names]
    if len(names) != n_classes:
        raise InputError(
            "class_names", f"has {len(names)} name(s); the confusion matrix has {n_classes} classes"
        )

    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)
    side = 1.4 + 0.95 * n_classes
    fig = Figure(figsize=(side + 1.1, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, k), count in np.ndenumerate(counts):
        ax.text(
            k,
            i,
            f"{int(count)}\n{fractions[i, k]:.0%}",
            ha="center",
            va="center",
            fontsize=10,
            color="white" if fractions[i, k] > 0.55 else "#1b1f24",
        )
    ax.set_xticks(range(n_classes), names, rotation=30, ha="right", fontsize=10)
    ax.set_yticks(range(n_classes), names, fontsize=10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class")
    return png_bytes(fig)


def topomap_figure(
    change,
    ch_names: Sequence[str],
    band_names: Sequence[str],
    montage: str = "biosemi32",
    highlight: Mapping[str, Sequence[str]] | None = None,
) -> bytes:
    """Scalp maps of how much each electrode changes when one factor is traversed, per band.

    Parameters
    ----------
    change : array (n_bands, n_channels)
        Per-electrode change of the decoded band power (e.g. max minus min over the traversal).
    ch_names : sequence of str
        Electrode names (10-20 names of ``montage``) in the column order of ``change``.
    band_names : sequence of str
        Band name per row of ``change``, used as panel titles.
    montage : str
        Name of an MNE built-in standard montage that holds every electrode.
    highlight : mapping band -> electrode names, optional
        Electrodes of the factor's blocks, drawn as white markers on that band's map.

    Returns
    -------
    bytes
        PNG with one head per band, each with its own symmetric colour scale.
    """
    import mne  # imported here because MNE is heavy and only the topomaps need it

    values = finite_array(change, "change", ndim=2)
    names = [str(name) for name in ch_names]
    bands = [str(band) for band in band_names]
    if values.shape != (len(bands), len(names)):
        raise InputError(
            "change", f"has shape {values.shape}; expected (n_bands={len(bands)}, n_channels={len(names)})"
        )
    if len(set(names)) != len(names):
        raise InputError("ch_names", "holds duplicate electrode names")
    try:
        standard = mne.channels.make_standard_montage(montage)
    except ValueError as err:
        raise InputError("montage", f"{montage!r} is not an MNE built-in montage") from err
    unknown = sorted(set(names) - set(standard.ch_names))
    if unknown:
        raise InputError("ch_names", f"electrode(s) {unknown} are not in montage {montage!r}")
    highlight = dict(highlight or {})
    mask = np.zeros(values.shape, dtype=bool)
    for band, electrodes in highlight.items():
        if band not in bands:
            raise InputError("highlight", f"names band {band!r}, which is not one of {bands}")
        missing = sorted(set(electrodes) - set(names))
        if missing:
            raise InputError("highlight", f"band {band!r} names electrode(s) {missing} not in ch_names")
        mask[bands.index(band)] = np.isin(names, list(electrodes))

    info = mne.create_info(names, sfreq=128.0, ch_types="eeg")
    info.set_montage(standard)
    fig = Figure(figsize=(2.5 * len(bands), 2.7), layout="constrained")
    axes = fig.subplots(1, len(bands), squeeze=False)
    for row, (ax, band) in enumerate(zip(axes[0], bands, strict=True)):
        limit = float(np.max(np.abs(values[row]))) or 1.0
        image, _ = mne.viz.plot_topomap(
            values[row],
            info,
            axes=ax,
            show=False,
            cmap="RdBu_r",
            vlim=(-limit, limit),
            contours=4,
            sensors=True,
            mask=mask[row],
            mask_params={
                "marker": "o",
                "markerfacecolor": "white",
                "markeredgecolor": "black",
                "linewidth": 0,
                "markersize": 7,
            },
        )
        ax.set_title(band, fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.7, orientation="horizontal", pad=0.02, format="%.2g")
    return png_bytes(fig)

"""The self-contained HTML page a neuroscientist opens, and the JSON-native form of a report.

``render_report_html`` checks the report against the ``report.json`` contract
(:func:`pipeline.report.schema.validate_report`), then fills a Jinja2 template with
autoescaping on, so every string that came from a file (paths, electrode names, config values)
reaches the page escaped, and embeds the figures as ``data:`` URIs so the page needs nothing
but itself.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath

import jinja2
import numpy as np

from pipeline.errors import InputError
from pipeline.report.figures import PNG_SIGNATURE
from pipeline.report.schema import validate_report, with_schema_version

DATASET_TITLES = {"deap": "DEAP", "mnist": "MNIST", "celeba": "CelebA"}
FACTOR_FIGURES = ("topomap", "traversal")
TOP_FACTORS_SHOWN = 10
# Provenance keys every report has; the page lists any others (normalisation, config hash) below them.
_PROVENANCE_KEYS = ("package_version", "store", "created")


# --------------------------------------------------------------------------- JSON-native form


def to_json_native(value, key: str = "report"):
    """Convert numpy scalars/arrays, tuples and paths to plain JSON types, recursively.

    Non-finite floats become ``None`` (JSON has no NaN); mapping keys become strings.

    Parameters
    ----------
    value : object
        A report or any part of it.
    key : str
        Dotted location of ``value``, used in error messages.

    Returns
    -------
    object
        The same structure built only from dict, list, str, int, float, bool and None.

    Raises
    ------
    InputError
        If a value has a type JSON cannot represent.
    """
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, PurePath):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return [to_json_native(item, f"{key}[{i}]") for i, item in enumerate(value.tolist())]
    if isinstance(value, Mapping):
        return {str(name): to_json_native(item, f"{key}.{name}") for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_native(item, f"{key}[{i}]") for i, item in enumerate(value)]
    raise InputError(key, f"holds a {type(value).__name__}, which JSON cannot represent")


# --------------------------------------------------------------------------- figures


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


def _data_uri(png: bytes | None) -> str | None:
    if png is None:
        return None
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --------------------------------------------------------------------------- formatting


def format_sig3(value) -> str:
    """A number with 3 significant digits, without exponent for everyday magnitudes."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return str(value)
    number = float(value)
    if not math.isfinite(number):
        return "–"
    if isinstance(value, int | np.integer):
        return f"{int(value):d}"
    if number == 0.0:
        return "0"
    magnitude = math.floor(math.log10(abs(number)))
    if -4 <= magnitude < 6:
        return f"{number:.{max(0, 2 - magnitude)}f}"
    return f"{number:.2e}"


def _config_text(value) -> str:
    # Config values are shown exactly (not rounded): they are what a re-run needs.
    return value if isinstance(value, str) else json.dumps(value)


def flatten_config(config: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    """Nested config as ``(dotted.key, text)`` rows in insertion order."""
    rows: list[tuple[str, str]] = []
    for name, value in config.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            rows.extend(flatten_config(value, f"{key}."))
        else:
            rows.append((key, _config_text(value)))
    return rows


def _top_factor_rows(mi: Mapping) -> list[dict]:
    per_factor = [float(v) for v in mi["per_factor_nats"]]
    total = sum(per_factor)
    rows, cumulative = [], 0.0
    for position, j in enumerate(mi["ranking"][:TOP_FACTORS_SHOWN]):
        j = int(j)
        cumulative += per_factor[j]
        rows.append(
            {
                "rank": position + 1,
                "index": j,
                "mi_nats": per_factor[j],
                "share": per_factor[j] / total if total > 0 else None,
                "cumulative": cumulative / total if total > 0 else None,
                "variance": float(mi["variance"][j]),
                "kl_prior_nats": float(mi["kl_prior_nats"][j]),
            }
        )
    return rows


def _factor_cards(report: Mapping, assets: ReportAssets) -> list[dict]:
    cards = []
    for factor in report.get("factors", []):
        figures = assets.factors.get(int(factor["index"]), {})
        cards.append(
            {
                **factor,
                "block_labels": [
                    {
                        "text": f"{'-'.join(block['electrodes'])} ({block['band']})",
                        "strength": block["strength"],
                        "emotion_linked": block.get("emotion_linked", False),
                        "q_value": block.get("q_value"),
                        "seeds_found": block.get("seeds_found"),
                        "seeds_linked": block.get("seeds_linked"),
                    }
                    for block in factor.get("blocks", [])
                ],
                "topomap_uri": _data_uri(figures.get("topomap")),
                "traversal_uri": _data_uri(figures.get("traversal")),
            }
        )
    return cards


def _headline_blocks(report: Mapping) -> list[str] | None:
    """The emotion-linked blocks the headline may name: those found in a majority of the seeds.

    None for a report without seed stability (images, or a report written before it existed).
    """
    stability = report.get("stability")
    if stability is None or report["dataset"] != "deap":
        return None
    majority = stability["n_seeds"] // 2 + 1
    return [
        f"{'-'.join(block['electrodes'])} ({block['band']})"
        for factor in report.get("factors", [])
        if factor.get("emotion", {}).get("linked")
        for block in factor.get("blocks", [])
        if block.get("emotion_linked") and block.get("seeds_found", 0) >= majority
    ]


# --------------------------------------------------------------------------- rendering


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.report", "templates"),
        autoescape=True,  # every string from a data file must reach the page escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sig3"] = format_sig3
    return env


def render_report_html(report: Mapping, assets: ReportAssets) -> str:
    """Render the report as one self-contained HTML page.

    Sections without data (no ``topk``, ``classification``, ``factors`` or ``emotion``)
    are left out, so the same page serves DEAP and the image data sets; an image data set's
    page speaks of images and traversals, DEAP's of frames and electrode blocks. A synthetic
    source gets a prominent banner saying the numbers describe generated data.

    Parameters
    ----------
    report : mapping
        A report satisfying the contract (checked with :func:`~pipeline.report.schema.validate_report`);
        numpy values are allowed. Without ``schema_version`` it is read as this package's version.
    assets : ReportAssets
        The figures to embed.

    Returns
    -------
    str
        HTML with inline CSS and ``data:`` images; no scripts and no external URLs.
    """
    report = with_schema_version(to_json_native(report))
    validate_report(report, "report")
    if not isinstance(assets, ReportAssets):
        raise InputError("assets", f"is a {type(assets).__name__}; expected ReportAssets")
    reported = {factor["index"] for factor in report.get("factors", [])}
    stray = sorted(set(assets.factors) - reported)
    if stray:
        raise InputError(
            "ReportAssets.factors",
            f"has figures for factor(s) {stray}, which the report does not list under 'factors'",
        )
    classification = report.get("classification")
    cards = _factor_cards(report, assets)
    with_emotion = [card for card in cards if "emotion" in card]
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            report=report,
            dataset_title=DATASET_TITLES[report["dataset"]],
            # Image data sets have images, factors and traversals; electrodes and emotion are DEAP's.
            image_data=report["dataset"] != "deap",
            n_factors=len(report["mi"]["per_factor_nats"]),
            top_factor_rows=_top_factor_rows(report["mi"]),
            config_rows=flatten_config(report["config"]),
            # Nested extras (e.g. the band normalisation and the split it was fitted on) as one row each.
            provenance_extra=flatten_config(
                {k: v for k, v in report["provenance"].items() if k not in _PROVENANCE_KEYS}
            ),
            n_classes=len(classification["confusion"]) if classification is not None else None,
            factor_cards=cards,
            stability=report.get("stability"),
            headline_blocks=_headline_blocks(report),
            n_linked=sum(card["emotion"]["linked"] for card in with_emotion) if with_emotion else None,
            n_with_emotion=len(with_emotion),
            mi_variance_uri=_data_uri(assets.mi_variance),
            topk_uri=_data_uri(assets.topk) if "topk" in report else None,
            confusion_uri=_data_uri(assets.confusion) if classification is not None else None,
        )
    )

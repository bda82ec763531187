"""The report contract check and the self-contained HTML page a neuroscientist opens.

``validate_report`` is the one place that knows which keys of ``report.json`` are
required (see the *Report* contract in DESIGN.md); the writer and the renderer both call
it. ``render_report_html`` fills a Jinja2 template with autoescaping on, so every string
that came from a file (paths, electrode names, config values) reaches the page escaped,
and embeds the figures as ``data:`` URIs so the page needs nothing but itself.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

import jinja2
import numpy as np

from pipeline.errors import InputError
from pipeline.report.figures import PNG_SIGNATURE

DATASETS = ("deap", "mnist", "celeba")
DATASET_TITLES = {"deap": "DEAP", "mnist": "MNIST", "celeba": "CelebA"}
SOURCE_KINDS = ("synthetic", "deap-python", "deap-matlab", "raw", "idx", "images")
PROTOCOLS = ("trial", "subject")
FACTOR_FIGURES = ("topomap", "traversal")
TOP_FACTORS_SHOWN = 10

_REQUIRED_SECTIONS: dict[str, tuple[str, ...]] = {
    "source": ("kind", "path", "n_trials", "n_frames"),
    "mi": ("per_factor_nats", "variance", "kl_prior_nats", "total_nats", "ranking"),
    "provenance": ("package_version", "store", "created"),
}
_TOPK_KEYS = ("percent", "n_factors", "total_mi_nats", "mse", "accuracy")
_CLASSIFICATION_KEYS = ("protocol", "test_accuracy", "chance_accuracy", "confusion")
_FACTOR_KEYS = ("index", "rank", "mi_nats", "variance")


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


# --------------------------------------------------------------------------- contract check


def _require(mapping: Mapping, name: str, where: str, prefix: str):
    if name not in mapping:
        raise InputError(where, f"missing key '{prefix}{name}' required by the report contract")
    return mapping[name]


def _as_mapping(value, where: str, key: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise InputError(where, f"'{key}' is a {type(value).__name__}; expected an object")
    return value


def _as_list(value, where: str, key: str) -> Sequence:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise InputError(where, f"'{key}' is a {type(value).__name__}; expected a list")
    return value


def _is_number(value) -> bool:
    numeric = isinstance(value, int | float | np.integer | np.floating)
    return numeric and not isinstance(value, bool | np.bool_)


def _check_number(value, where: str, key: str, *, optional: bool = False, low: float | None = None,
                  high: float | None = None) -> None:
    if value is None and optional:
        return
    if not _is_number(value) or not math.isfinite(float(value)):
        raise InputError(where, f"'{key}' is {value!r}; expected a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(where, f"'{key}' is {value!r}; expected a value in [{low}, {high}]")


def _check_count(value, where: str, key: str) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool | np.bool_) or value < 0:
        raise InputError(where, f"'{key}' is {value!r}; expected a whole number >= 0")


def _check_mi(mi: Mapping, where: str) -> int:
    per_factor = _as_list(mi["per_factor_nats"], where, "mi.per_factor_nats")
    n_factors = len(per_factor)
    if n_factors == 0:
        raise InputError(where, "'mi.per_factor_nats' is empty; expected one value per latent factor")
    for name in ("per_factor_nats", "variance", "kl_prior_nats"):
        values = _as_list(mi[name], where, f"mi.{name}")
        if len(values) != n_factors:
            raise InputError(where, f"'mi.{name}' has {len(values)} values; 'mi.per_factor_nats' has "
                                    f"{n_factors}")
        for j, value in enumerate(values):
            _check_number(value, where, f"mi.{name}[{j}]", low=0.0)
    _check_number(mi["total_nats"], where, "mi.total_nats", low=0.0)
    ranking = _as_list(mi["ranking"], where, "mi.ranking")
    whole = all(isinstance(j, int | np.integer) and not isinstance(j, bool) for j in ranking)
    if not whole or sorted(int(j) for j in ranking) != list(range(n_factors)):
        raise InputError(where, f"'mi.ranking' is not a permutation of the factor indices 0..{n_factors - 1}")
    return n_factors


def _check_topk(rows, where: str) -> None:
    for i, row in enumerate(_as_list(rows, where, "topk")):
        row = _as_mapping(row, where, f"topk[{i}]")
        for name in _TOPK_KEYS:
            _require(row, name, where, f"topk[{i}].")
        _check_number(row["percent"], where, f"topk[{i}].percent", low=0.0, high=100.0)
        _check_count(row["n_factors"], where, f"topk[{i}].n_factors")
        _check_number(row["total_mi_nats"], where, f"topk[{i}].total_mi_nats", low=0.0)
        _check_number(row["mse"], where, f"topk[{i}].mse", optional=True, low=0.0)
        _check_number(row["accuracy"], where, f"topk[{i}].accuracy", optional=True, low=0.0, high=1.0)


def _check_classification(classification, where: str, prefix: str = "classification") -> None:
    classification = _as_mapping(classification, where, prefix)
    for name in _CLASSIFICATION_KEYS:
        _require(classification, name, where, f"{prefix}.")
    if classification["protocol"] not in PROTOCOLS:
        raise InputError(where, f"'{prefix}.protocol' is {classification['protocol']!r}; "
                                f"expected one of {PROTOCOLS}")
    for name in ("test_accuracy", "chance_accuracy"):
        _check_number(classification[name], where, f"{prefix}.{name}", low=0.0, high=1.0)
    for name in ("majority_accuracy", "permutation_p_value"):
        if name in classification:
            _check_number(classification[name], where, f"{prefix}.{name}", low=0.0, high=1.0)
    if "accuracy_ci95" in classification:
        interval = _as_list(classification["accuracy_ci95"], where, f"{prefix}.accuracy_ci95")
        if len(interval) != 2:
            raise InputError(where, f"'{prefix}.accuracy_ci95' must be [low, high]")
        for bound in interval:
            _check_number(bound, where, f"{prefix}.accuracy_ci95", low=0.0, high=1.0)
        if interval[0] > interval[1]:
            raise InputError(where, f"'{prefix}.accuracy_ci95' has its low bound above its high one")
    confusion = _as_list(classification["confusion"], where, f"{prefix}.confusion")
    rows = [_as_list(row, where, f"{prefix}.confusion[]") for row in confusion]
    if not rows or any(len(row) != len(rows) for row in rows):
        raise InputError(where, f"'{prefix}.confusion' is not a non-empty square matrix")
    for i, row in enumerate(rows):
        for k, count in enumerate(row):
            _check_count(count, where, f"{prefix}.confusion[{i}][{k}]")
    if "class_names" in classification:
        class_names = _as_list(classification["class_names"], where, f"{prefix}.class_names")
        if len(class_names) != len(rows):
            raise InputError(where, f"'{prefix}.class_names' has {len(class_names)} names; the "
                                    f"confusion matrix has {len(rows)} classes")
    if "by_protocol" in classification:
        by_protocol = _as_mapping(classification["by_protocol"], where, f"{prefix}.by_protocol")
        for protocol, figures in by_protocol.items():
            _check_classification(figures, where, f"{prefix}.by_protocol.{protocol}")


def _check_factors(factors, n_factors: int, where: str) -> None:
    for i, factor in enumerate(_as_list(factors, where, "factors")):
        factor = _as_mapping(factor, where, f"factors[{i}]")
        for name in _FACTOR_KEYS:
            _require(factor, name, where, f"factors[{i}].")
        index = factor["index"]
        if not isinstance(index, int | np.integer) or isinstance(index, bool) or not 0 <= index < n_factors:
            raise InputError(where, f"'factors[{i}].index' is {index!r}; expected a factor index "
                                    f"0..{n_factors - 1}")
        _check_count(factor["rank"], where, f"factors[{i}].rank")
        _check_number(factor["mi_nats"], where, f"factors[{i}].mi_nats", low=0.0)
        _check_number(factor["variance"], where, f"factors[{i}].variance", low=0.0)
        if "emotion" in factor:
            emotion = _as_mapping(factor["emotion"], where, f"factors[{i}].emotion")
            for name in ("relevance", "p_value", "linked"):
                _require(emotion, name, where, f"factors[{i}].emotion.")
            _check_number(emotion["relevance"], where, f"factors[{i}].emotion.relevance", optional=True)
            _check_number(emotion["p_value"], where, f"factors[{i}].emotion.p_value", optional=True,
                          low=0.0, high=1.0)
            if not isinstance(emotion["linked"], bool | np.bool_):
                raise InputError(where, f"'factors[{i}].emotion.linked' is {emotion['linked']!r}; "
                                        "expected true or false")
        for b, block in enumerate(_as_list(factor.get("blocks", []), where, f"factors[{i}].blocks")):
            key = f"factors[{i}].blocks[{b}]"
            block = _as_mapping(block, where, key)
            for name in ("band", "electrodes", "strength"):
                _require(block, name, where, f"{key}.")
            electrodes = _as_list(block["electrodes"], where, f"{key}.electrodes")
            if not electrodes or not all(isinstance(name, str) for name in electrodes):
                raise InputError(where, f"'{key}.electrodes' must be a non-empty list of electrode names")
            if not isinstance(block["band"], str):
                raise InputError(where, f"'{key}.band' is {block['band']!r}; expected a band name")
            _check_number(block["strength"], where, f"{key}.strength")


def validate_report(report, where: str | os.PathLike = "report.json") -> None:
    """Check a report against the ``report.json`` contract.

    Required: ``dataset``, ``source`` {kind, path, n_trials, n_frames}, ``config``,
    ``mi`` {per_factor_nats, variance, kl_prior_nats, total_nats, ranking} and
    ``provenance`` {package_version, store, created}. ``topk``, ``classification`` and
    ``factors`` are optional (the image data sets have no emotion classifier), but are
    checked in full when present. Extra keys are allowed.

    Parameters
    ----------
    report : mapping
        The report, in JSON-native or numpy form.
    where : str or path-like
        Name used in error messages (usually the report file).

    Raises
    ------
    InputError
        Naming the first missing key (e.g. ``'mi.ranking'``) or malformed value.
    """
    where = os.fspath(where)
    report = _as_mapping(report, where, "report")
    dataset = _require(report, "dataset", where, "")
    if dataset not in DATASETS:
        raise InputError(where, f"'dataset' is {dataset!r}; expected one of {DATASETS}")
    sections = {
        name: _as_mapping(_require(report, name, where, ""), where, name) for name in _REQUIRED_SECTIONS
    }
    for section, keys in _REQUIRED_SECTIONS.items():
        for name in keys:
            _require(sections[section], name, where, f"{section}.")
    _as_mapping(_require(report, "config", where, ""), where, "config")
    source = sections["source"]
    if source["kind"] not in SOURCE_KINDS:
        raise InputError(where, f"'source.kind' is {source['kind']!r}; expected one of {SOURCE_KINDS}")
    _check_count(source["n_trials"], where, "source.n_trials")
    _check_count(source["n_frames"], where, "source.n_frames")
    n_factors = _check_mi(sections["mi"], where)
    if "topk" in report:
        _check_topk(report["topk"], where)
    if "classification" in report:
        _check_classification(report["classification"], where)
    if "factors" in report:
        _check_factors(report["factors"], n_factors, where)
    if "stability" in report:
        _check_stability(report, where)


def _check_stability(report: Mapping, where: str) -> None:
    """``stability.n_seeds``; per matched factor ``stability.seeds_found`` (and ``seeds_linked``
    for EEG) and per block ``seeds_found``, each a count from 0 (linked) or 1 (found) to n_seeds."""
    stability = _as_mapping(report["stability"], where, "stability")
    n_seeds = _require(stability, "n_seeds", where, "stability.")
    _check_count(n_seeds, where, "stability.n_seeds")
    if n_seeds < 1:
        raise InputError(where, f"'stability.n_seeds' is {n_seeds!r}; expected at least 1")

    def check_found(value, key: str, low: int = 1, high: int = n_seeds) -> None:
        _check_count(value, where, key)
        if not low <= value <= high:
            raise InputError(where, f"'{key}' is {value!r}; expected {low}..{high}")

    for i, factor in enumerate(report.get("factors", [])):
        if factor.get("stability") is None:
            if factor.get("influential", True):
                raise InputError(where, f"'factors[{i}].stability' is missing for an influential factor")
            continue
        found = _as_mapping(factor["stability"], where, f"factors[{i}].stability")
        check_found(_require(found, "seeds_found", where, f"factors[{i}].stability."),
                    f"factors[{i}].stability.seeds_found")
        if report["dataset"] == "deap":
            check_found(_require(found, "seeds_linked", where, f"factors[{i}].stability."),
                        f"factors[{i}].stability.seeds_linked", low=0, high=found["seeds_found"])
        for b, block in enumerate(factor.get("blocks", [])):
            key = f"factors[{i}].blocks[{b}]"
            check_found(_require(block, "seeds_found", where, f"{key}."), f"{key}.seeds_found",
                        high=found["seeds_found"])


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
                raise InputError(f"ReportAssets.factors[{index}]",
                                 f"has unknown figure(s) {sorted(unknown)}; expected {FACTOR_FIGURES}")
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
    if isinstance(value, bool) or not _is_number(value):
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
        rows.append({
            "rank": position + 1, "index": j, "mi_nats": per_factor[j],
            "share": per_factor[j] / total if total > 0 else None,
            "cumulative": cumulative / total if total > 0 else None,
            "variance": float(mi["variance"][j]), "kl_prior_nats": float(mi["kl_prior_nats"][j]),
        })
    return rows


def _factor_cards(report: Mapping, assets: ReportAssets) -> list[dict]:
    cards = []
    for factor in report.get("factors", []):
        figures = assets.factors.get(int(factor["index"]), {})
        cards.append({
            **factor,
            "block_labels": [
                {"text": f"{'-'.join(block['electrodes'])} ({block['band']})", "strength": block["strength"],
                 "emotion_linked": block.get("emotion_linked", False), "q_value": block.get("q_value"),
                 "seeds_found": block.get("seeds_found")}
                for block in factor.get("blocks", [])
            ],
            "topomap_uri": _data_uri(figures.get("topomap")),
            "traversal_uri": _data_uri(figures.get("traversal")),
        })
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
        A report satisfying the contract (checked with :func:`validate_report`).
    assets : ReportAssets
        The figures to embed.

    Returns
    -------
    str
        HTML with inline CSS and ``data:`` images; no scripts and no external URLs.
    """
    report = to_json_native(report)
    validate_report(report, "report")
    if not isinstance(assets, ReportAssets):
        raise InputError("assets", f"is a {type(assets).__name__}; expected ReportAssets")
    reported = {factor["index"] for factor in report.get("factors", [])}
    stray = sorted(set(assets.factors) - reported)
    if stray:
        raise InputError("ReportAssets.factors", f"has figures for factor(s) {stray}, which the report "
                                                 "does not list under 'factors'")
    classification = report.get("classification")
    cards = _factor_cards(report, assets)
    with_emotion = [card for card in cards if "emotion" in card]
    return _environment().get_template("report.html.j2").render(
        report=report,
        dataset_title=DATASET_TITLES[report["dataset"]],
        # Image data sets have images, factors and traversals; electrodes and emotion are DEAP's.
        image_data=report["dataset"] != "deap",
        n_factors=len(report["mi"]["per_factor_nats"]),
        top_factor_rows=_top_factor_rows(report["mi"]),
        config_rows=flatten_config(report["config"]),
        # Nested extras (e.g. the band normalisation and the split it was fitted on) as one row each.
        provenance_extra=flatten_config({k: v for k, v in report["provenance"].items()
                                         if k not in _REQUIRED_SECTIONS["provenance"]}),
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

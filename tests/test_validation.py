from pipeline.analysis.validation import check_planted_blocks

TRUTH = {
    "effects": [
        {"label": "arousal", "role": "emotion", "band": "gamma", "electrodes": ["C4", "T8", "P4", "P8"]},
        {
            "label": "none",
            "role": "distractor",
            "band": "beta",
            "electrodes": ["PO3", "O1", "Oz", "O2", "PO4"],
        },
    ]
}
HABIT = {"label": "arousal", "role": "subject_habit", "band": "beta", "electrodes": ["F4", "F8", "FC6", "T8"]}


def _factor(index, linked, blocks, influential=True):
    """``blocks``: (band, electrodes) or (band, electrodes, emotion_linked); linked factors' blocks
    default to emotion-linked, as when their band power passed the within-subject test."""
    return {
        "index": index,
        "influential": influential,
        "emotion": {"linked": linked},
        "blocks": [
            {
                "band": block[0],
                "electrodes": block[1],
                "name": "-".join(block[1]),
                "emotion_linked": block[2] if len(block) > 2 else linked,
            }
            for block in blocks
        ],
    }


def test_planted_blocks_recovered_when_linked_and_distractor_unlinked():
    factors = [
        _factor(0, True, [("gamma", ["C4", "T8", "P4"]), ("alpha", ["Fp1"])]),
        # The distractor split into two hemispheric blocks: their union is compared.
        _factor(1, False, [("beta", ["PO3", "O1"]), ("beta", ["PO4", "O2"])]),
    ]
    check = check_planted_blocks(factors, TRUTH)
    arousal, distractor = check["effects"]
    assert arousal["passed"] and arousal["match"]["factor"] == 0 and arousal["match"]["jaccard"] == 0.75
    assert distractor["passed"] and distractor["match"]["jaccard"] == 0.8
    assert check["passed"] and check["linked_factors"] == [0] and not check["nothing_linked_expected"]


def test_fails_when_the_distractor_is_linked_or_the_label_block_is_unlinked():
    factors = [
        _factor(0, False, [("gamma", ["C4", "T8", "P4", "P8"])]),
        _factor(1, True, [("beta", ["PO3", "O1", "Oz", "O2", "PO4"])]),
    ]
    check = check_planted_blocks(factors, TRUTH)
    arousal, distractor = check["effects"]
    assert arousal["match"] is None and not arousal["passed"]
    assert distractor["match"]["jaccard"] == 1.0 and distractor["match"]["linked"]
    assert not distractor["passed"]
    assert not check["passed"]


def test_an_emotion_block_counts_only_when_its_own_band_power_passed():
    factors = [_factor(0, True, [("gamma", ["C4", "T8", "P4", "P8"], False), ("alpha", ["Pz"], True)])]
    check = check_planted_blocks(factors, TRUTH)
    assert check["effects"][0]["match"] is None and not check["effects"][0]["passed"]


def test_a_subject_habit_block_fails_only_as_an_emotion_linked_block():
    truth = {"effects": [*TRUTH["effects"], HABIT]}
    habit_in_linked_factor_not_passing = [
        _factor(0, True, [("gamma", ["C4", "T8", "P4", "P8"]), ("beta", ["F4", "F8", "FC6"], False)]),
        _factor(1, False, [("beta", ["PO3", "O1", "Oz", "O2", "PO4"])]),
    ]
    check = check_planted_blocks(habit_in_linked_factor_not_passing, truth)
    assert check["effects"][2]["match"] is None and check["effects"][2]["passed"] and check["passed"]

    habit_as_emotion_block = [
        _factor(0, True, [("gamma", ["C4", "T8", "P4", "P8"]), ("beta", ["F4", "F8", "FC6"], True)]),
        _factor(1, False, [("beta", ["PO3", "O1", "Oz", "O2", "PO4"])]),
    ]
    check = check_planted_blocks(habit_as_emotion_block, truth)
    assert check["effects"][2]["match"]["jaccard"] == 0.75 and not check["effects"][2]["passed"]
    assert not check["passed"]


def test_without_emotion_effects_nothing_may_be_linked():
    null_truth = {"effects": [TRUTH["effects"][1]]}
    distractor = _factor(1, False, [("beta", ["PO3", "O1", "Oz", "O2", "PO4"])])
    check = check_planted_blocks([distractor], null_truth)
    assert check["nothing_linked_expected"] and check["passed"]
    # A linked factor with no matching block still fails the null expectation.
    check = check_planted_blocks([distractor, _factor(2, True, [("alpha", ["Pz"])])], null_truth)
    assert check["linked_factors"] == [2] and not check["passed"]


def test_a_block_in_the_wrong_band_does_not_count():
    factors = [_factor(0, True, [("alpha", ["C4", "T8", "P4", "P8"])])]
    assert check_planted_blocks(factors, TRUTH)["effects"][0]["match"] is None

from pipeline.validation import check_planted_blocks

TRUTH = {
    "effects": [
        {"label": "arousal", "band": "gamma", "electrodes": ["C4", "T8", "P4", "P8"]},
        {"label": "none", "band": "beta", "electrodes": ["PO3", "O1", "Oz", "O2", "PO4"]},
    ]
}


def _factor(index, linked, blocks, influential=True):
    return {
        "index": index,
        "influential": influential,
        "emotion": {"linked": linked},
        "blocks": [{"band": band, "electrodes": names, "name": "-".join(names)} for band, names in blocks],
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
    assert check["passed"]


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


def test_a_block_in_the_wrong_band_does_not_count():
    factors = [_factor(0, True, [("alpha", ["C4", "T8", "P4", "P8"])])]
    assert check_planted_blocks(factors, TRUTH)["effects"][0]["match"] is None

"""The subject-aware rule end to end (store, β-VAE, Î, report) on the null and confound scenarios.

The null runs use the settings of the planted ground-truth check (tests/test_ground_truth.py), which
is their positive control: under them the planted emotion blocks are linked, so a link is possible
(1000 permutations; the smallest possible q-value with every factor tested is 16/1001). The confound
run uses the demo preset's size and model, where its moderate genuine effect is kept by an
influential factor: there the genuine block must be linked and the subject-bound block never.
"""

from __future__ import annotations

import pytest
from scenario_runs import DEMO_LEARN, RULES, run_scenario

from pipeline.analysis.blocks import block_jaccard


@pytest.fixture(scope="module")
def scenario_report(tmp_path_factory):
    """report.json's content for (scenario, seed), computed once per module."""
    reports: dict[tuple[str, int], dict] = {}

    def report(scenario: str, seed: int = 0, **sizes) -> dict:
        key = (scenario, seed)
        if key not in reports:
            reports[key] = run_scenario(
                tmp_path_factory.mktemp(f"{scenario}-{seed}"), scenario, seed, **sizes
            )
        return reports[key]

    return report


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_null_scenario_links_no_factor(scenario_report, seed):
    report = scenario_report("null", seed)
    relevance = report["emotion_relevance"]
    assert relevance["tested"], "no influential factor: the test would have tested nothing"
    assert relevance["within_subject"]["smallest_possible_q"] < RULES.alpha
    assert [f["index"] for f in report["factors"] if f["emotion"]["linked"]] == []
    assert not any(block["emotion_linked"] for f in report["factors"] for block in f["blocks"])
    check = report["ground_truth_check"]
    assert check["nothing_linked_expected"] and check["linked_factors"] == []


def _matches(blocks: list[dict], effect: dict) -> bool:
    electrodes = {name for block in blocks if block["band"] == effect["band"] for name in block["electrodes"]}
    return block_jaccard(sorted(electrodes), effect["electrodes"]) >= 0.5


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_confound_links_the_genuine_block_and_never_the_subject_bound_one(scenario_report):
    # The demo preset's size: its parietal effect is moderate, as within-subject effects are.
    report = scenario_report("confound", n_subjects=8, n_trials=40, learn=DEMO_LEARN)
    habit = next(e for e in report["ground_truth"]["effects"] if e["role"] == "subject_habit")
    genuine = next(e for e in report["ground_truth"]["effects"] if e["role"] == "emotion")
    assert report["emotion_relevance"]["n_subjects"] == 8
    linked_blocks = [block for f in report["factors"] for block in f["blocks"] if block["emotion_linked"]]
    assert _matches(linked_blocks, genuine), linked_blocks
    for factor in report["factors"]:
        emotion = factor["emotion"]
        if not factor["influential"]:
            assert emotion["relevance"] is None and factor["blocks"] == []
            continue
        assert 0.0 <= emotion["subject_share"] <= 1.0
        within, pooled = emotion["within_subject"], emotion["pooled"]
        within_passes = within["q_value"] < RULES.alpha and within["relevance"] >= RULES.min_relevance_nats
        assert emotion["subject_driven"] == (
            pooled["q_value"] < RULES.alpha
            and not within_passes
            and within["relevance"] < 0.5 * pooled["relevance"]
        )
        for block in factor["blocks"]:
            if block["emotion_linked"]:
                assert not _matches([block], habit), (factor["index"], block)
        # A factor whose blocks are the habit block and nothing else only tells subjects apart.
        if factor["blocks"] and all(_matches([block], habit) for block in factor["blocks"]):
            assert emotion["subject_driven"] and not emotion["linked"], factor["index"]
    verdicts = {e["role"]: e for e in report["ground_truth_check"]["effects"]}
    assert verdicts["subject_habit"]["passed"]

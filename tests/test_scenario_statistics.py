"""The subject-aware statistics on the synthetic scenarios' own data, without a VAE.

Each scenario (6 subjects x 20 trials) is preprocessed into frames as a run would store them, and
the band power at every electrode stands in for the factors: the tests ask whether the statistics
link what is emotional within subject and nothing else. All scenarios run under the same settings
(1000 permutations: with 96 electrode-band series tested the smallest possible q-value is
96/1001 < 0.1, and with a handful of blocks it is below 0.01), and the planted scenario is the
positive control that shows a link is possible under them.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from pipeline.analysis.blocks import sample_at_electrodes
from pipeline.analysis.factors import FactorRules, block_band_power, check_blocks_against_data
from pipeline.analysis.relevance import subject_aware_label_information
from pipeline.analysis.splits import emotion_classes
from pipeline.signal.config import PreprocessConfig
from pipeline.signal.imaging import deap_imaging_operator
from pipeline.sources.synthetic import ground_truth
from pipeline.sources.synthetic_spec import scenario_spec
from pipeline.sources.trials import DEAP_CHANNELS
from pipeline.store.ingest_eeg import trials_to_frames

BANDS = ("alpha", "beta", "gamma")
RULES = FactorRules(n_permutations=1000)
BASELINE = RULES.baseline_frames


@cache
def scenario_data(scenario: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Electrode band power (n, 63, 3, 32) of the stored frames, classes, subjects, ground truth."""
    from pipeline.sources.synthetic import generate_subject

    spec = scenario_spec(scenario, n_subjects=6, seed=seed, n_trials=20)
    config = PreprocessConfig()
    operator = deap_imaging_operator(config)
    power, labels, subjects = [], [], []
    for subject in range(1, spec.n_subjects + 1):
        trials = generate_subject(spec, subject)
        frames = trials_to_frames(trials, config, operator)
        power.append(sample_at_electrodes(frames, operator.electrode_pixels, operator.mask))
        labels.append(trials.labels)
        subjects.append(trials.subject)
    classes = emotion_classes(np.concatenate(labels), 5.0)
    return np.concatenate(power), classes, np.concatenate(subjects), ground_truth(spec)


def every_series(power: np.ndarray) -> np.ndarray:
    """Every electrode's band power over the stimulus seconds as a 'factor': (n, 60, 96)."""
    return power[:, BASELINE:].reshape(power.shape[0], power.shape[1] - BASELINE, -1)


def planted_blocks(truth: dict) -> list[dict]:
    return [{"band": effect["band"], "electrodes": effect["electrodes"]} for effect in truth["effects"]]


def every_scenarios_blocks() -> list[dict]:
    """The blocks planted in any scenario: what a model could report on any of them."""
    seen, blocks = set(), []
    for scenario in ("planted", "confound"):
        for block in planted_blocks(ground_truth(scenario_spec(scenario))):
            key = (block["band"], tuple(block["electrodes"]))
            if key not in seen:
                seen.add(key)
                blocks.append(block)
    return blocks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_null_scenario_links_nothing(seed):
    power, classes, subjects, _ = scenario_data("null", seed)
    relevance = subject_aware_label_information(
        every_series(power), classes, subjects, n_permutations=RULES.n_permutations, summaries=("mean",)
    )
    assert np.all(relevance.within.q_values >= RULES.alpha)
    assert not relevance.subject_driven(RULES.alpha).any()
    verdicts = check_blocks_against_data(every_scenarios_blocks(), power, classes, subjects, BANDS, RULES)
    assert not any(verdict["emotion_linked"] for verdict in verdicts)


def test_planted_scenario_links_under_the_same_settings():
    """The positive control for the null test: same sizes, permutations and rule, and links appear."""
    power, classes, subjects, truth = scenario_data("planted", 0)
    relevance = subject_aware_label_information(
        every_series(power), classes, subjects, n_permutations=RULES.n_permutations, summaries=("mean",)
    )
    significant = relevance.within.q_values < RULES.alpha
    linked_series = {
        (BANDS[series // len(DEAP_CHANNELS)], DEAP_CHANNELS[series % len(DEAP_CHANNELS)])
        for series in np.flatnonzero(significant)
    }
    for effect in truth["effects"]:
        expected = {(effect["band"], name) for name in effect["electrodes"]}
        if effect["role"] == "emotion":
            assert len(expected & linked_series) >= 2, effect
        else:
            assert not expected & linked_series
    verdicts = check_blocks_against_data(planted_blocks(truth), power, classes, subjects, BANDS, RULES)
    assert [verdict["emotion_linked"] for verdict in verdicts] == [True, True, False]
    assert max(verdict["q_value"] for verdict in verdicts[:2]) < 0.01
    # Two factors showing the same block test one hypothesis: repeats change no verdict or q-value.
    repeated = check_blocks_against_data(planted_blocks(truth) * 3, power, classes, subjects, BANDS, RULES)
    assert repeated == verdicts * 3


@pytest.mark.parametrize("seed", [0, 1])
def test_confound_habit_block_is_subject_driven_and_the_genuine_block_is_linked(seed):
    power, classes, subjects, truth = scenario_data("confound", seed)
    roles = [effect["role"] for effect in truth["effects"]]
    assert roles == ["subject_habit", "emotion", "distractor"]
    blocks = planted_blocks(truth)

    verdicts = check_blocks_against_data(blocks, power, classes, subjects, BANDS, RULES)
    assert [verdict["emotion_linked"] for verdict in verdicts] == [False, True, False]

    # The habit block's own power, tested like a factor: pooled it looks emotional, within subject not.
    series = np.stack(
        [
            block_band_power(
                power[:, BASELINE:],
                BANDS.index(block["band"]),
                [DEAP_CHANNELS.index(n) for n in block["electrodes"]],
            )
            for block in blocks
        ],
        axis=-1,
    )
    relevance = subject_aware_label_information(
        series, classes, subjects, n_permutations=RULES.n_permutations, summaries=("mean",)
    )
    assert relevance.subject_driven(RULES.alpha).tolist() == [True, False, False]
    assert relevance.pooled.q_values[0] < 0.01 and relevance.within.q_values[0] > 0.2
    assert relevance.subject_share[0] > 0.5 > relevance.subject_share[1]
    # The genuine effect is stronger within subject than pooled, where the subjects' offsets blur it.
    assert relevance.within.relevance_nats[1] > relevance.pooled.relevance_nats[1] > 0.0

"""Synthetic DEAP: determinism, DEAP-like signals, planted effects, and the file round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from pipeline.analysis.splits import emotion_classes
from pipeline.errors import InputError
from pipeline.sources.deap import read_deap_dat, read_deap_mat
from pipeline.sources.synthetic import generate_subject, generate_synthetic_deap, ground_truth
from pipeline.sources.synthetic_files import GROUND_TRUTH_FILE, write_synthetic_deap
from pipeline.sources.synthetic_spec import (
    AROUSAL_GAMMA,
    OCCIPITAL_BETA_DISTRACTOR,
    PARIETAL_VALENCE_ALPHA,
    SCENARIOS,
    SUBJECT_HABIT_BETA,
    VALENCE_ALPHA,
    PlantedRhythm,
    RatingHabit,
    SyntheticDeapSpec,
    scenario_spec,
)
from pipeline.sources.trials import DEAP_CHANNELS, LABEL_NAMES, N_SAMPLES, SFREQ

BANDS_HZ = {"alpha": (8.0, 13.0), "beta": (13.0, 30.0), "gamma": (30.0, 45.0)}
BASELINE_SAMPLES = 3 * 128
SMALL = SyntheticDeapSpec(n_subjects=2, n_trials=3, seed=3)


@pytest.fixture(scope="module")
def population() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two subjects of 40 trials: signals, labels and subject ids, enough for rank correlations."""
    trials = generate_synthetic_deap(SyntheticDeapSpec(n_subjects=2, n_trials=40, seed=11))
    signals = np.concatenate([part.signals for part in trials])
    labels = np.concatenate([part.labels for part in trials])
    subjects = np.concatenate([part.subject for part in trials])
    return signals, labels, subjects


@pytest.fixture(scope="module")
def band_power(population) -> dict[str, np.ndarray]:
    """Per band, (n_trials, 32, 60) log10 power of each 1-s window after the baseline."""
    return _log_band_power(population[0])


def _log_band_power(signals: np.ndarray, start: int = BASELINE_SAMPLES) -> dict[str, np.ndarray]:
    """Per band, (n_trials, 32, n_seconds) log10 power of 1-s windows from ``start``, as in the pipeline."""
    seconds = (signals.shape[-1] - start) // 128
    windows = signals[..., start : start + seconds * 128].reshape(*signals.shape[:2], seconds, 128)
    power = np.abs(np.fft.rfft(windows, axis=-1)) ** 2
    frequencies = np.fft.rfftfreq(128, d=1 / 128)
    return {
        band: np.log10(power[..., (frequencies >= low) & (frequencies < high)].sum(axis=-1))
        for band, (low, high) in BANDS_HZ.items()
    }


def _centred_per_subject(values: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """Remove each subject's mean: subjects differ in gain, and the effects live within a subject."""
    centred = values.astype(np.float64)
    for subject in np.unique(subjects):
        centred[subjects == subject] -= centred[subjects == subject].mean(axis=0)
    return centred


def _block_rows(rhythm: PlantedRhythm) -> list[int]:
    return [DEAP_CHANNELS.index(name) for name in rhythm.electrodes]


def _rows_outside_every_block() -> list[int]:
    planted = {name for rhythm in SyntheticDeapSpec().rhythms for name in rhythm.electrodes}
    return [row for row, name in enumerate(DEAP_CHANNELS) if name not in planted]


def test_same_seed_is_bitwise_identical_and_other_seeds_differ():
    first, again = generate_subject(SMALL, 2), generate_subject(SMALL, 2)
    assert first.signals.tobytes() == again.signals.tobytes()
    assert first.labels.tobytes() == again.labels.tobytes()
    assert first.source_sha256 == again.source_sha256
    other_seed = generate_subject(SyntheticDeapSpec(n_subjects=2, n_trials=3, seed=4), 2)
    other_subject = generate_subject(SMALL, 1)
    for other in (other_seed, other_subject):
        assert not np.allclose(first.signals, other.signals)
        assert first.source_sha256 != other.source_sha256


def test_trials_have_deap_shapes_and_provenance():
    trials = generate_subject(SMALL, 2)
    assert trials.signals.shape == (3, len(DEAP_CHANNELS), N_SAMPLES)
    assert trials.signals.dtype == np.float32 and trials.labels.dtype == np.float32
    assert trials.labels.shape == (3, len(LABEL_NAMES))
    assert ((trials.labels >= 1) & (trials.labels <= 9)).all()
    assert trials.subject.tolist() == [2, 2, 2] and trials.trial.tolist() == [0, 1, 2]
    assert (trials.kind, trials.source) == ("synthetic", "synthetic://s02")
    assert trials.sfreq == SFREQ
    # Microvolt scale like DEAP's preprocessed EEG: tens of µV, not volts nor thousands.
    assert 3.0 < trials.signals.std() < 50.0


def test_valence_and_arousal_fill_all_four_classes_equally(population):
    _, labels, _ = population
    assert np.bincount(emotion_classes(labels), minlength=4).tolist() == [20, 20, 20, 20]


def test_signals_are_average_referenced_and_band_limited(population):
    signals = population[0]
    assert np.abs(signals.mean(axis=1)).max() < 1e-4 * signals.std()
    power = np.abs(np.fft.rfft(signals[:8].astype(np.float64), axis=-1)) ** 2
    frequencies = np.fft.rfftfreq(N_SAMPLES, d=1 / SFREQ)
    in_passband = power[..., (frequencies >= 4.0) & (frequencies <= 45.0)].sum() / power.sum()
    assert in_passband > 0.95
    assert power[..., frequencies >= 55.0].sum() / power.sum() < 1e-3


@pytest.mark.parametrize("rhythm", [AROUSAL_GAMMA, VALENCE_ALPHA], ids=["arousal-gamma", "valence-alpha"])
def test_planted_block_power_tracks_its_label_only(population, band_power, rhythm):
    _, labels, subjects = population
    trial_power = _centred_per_subject(band_power[rhythm.band].mean(axis=-1), subjects)  # (n_trials, 32)
    block = trial_power[:, _block_rows(rhythm)].mean(axis=1)
    outside = trial_power[:, _rows_outside_every_block()]
    for column, name in enumerate(LABEL_NAMES):
        block_r = spearmanr(block, labels[:, column]).statistic
        if name != rhythm.label:
            # Another label shows only through its chance correlation with the planted one.
            between_labels = spearmanr(
                labels[:, LABEL_NAMES.index(rhythm.label)], labels[:, column]
            ).statistic
            assert abs(block_r) < abs(between_labels) + 0.25, (
                f"{rhythm.band} block vs {name}: r = {block_r:.2f}"
            )
            continue
        assert block_r > 0.8, f"{rhythm.band} block vs {name}: r = {block_r:.2f}"
        # Elsewhere only chance (sd ~0.11 for 80 trials, shared by the electrodes through the
        # trial's overall gain) and the sliver of the rhythm that average referencing spreads.
        outside_r = np.abs([spearmanr(channel, labels[:, column]).statistic for channel in outside.T])
        assert np.median(outside_r) < 0.4 and outside_r.max() < block_r - 0.3
    # The planted rhythm raises the block's band power above the electrodes around it.
    assert (band_power[rhythm.band][:, _block_rows(rhythm)].mean() - band_power[rhythm.band].mean()) > 0.15


@pytest.mark.parametrize("rhythm", [AROUSAL_GAMMA, VALENCE_ALPHA], ids=["arousal-gamma", "valence-alpha"])
def test_label_effect_starts_after_the_baseline(population, band_power, rhythm):
    signals, labels, subjects = population
    label = labels[:, LABEL_NAMES.index(rhythm.label)]
    rows = _block_rows(rhythm)
    baseline = _log_band_power(signals[..., :BASELINE_SAMPLES], start=0)[rhythm.band][:, rows].mean(
        axis=(1, 2)
    )
    trial = band_power[rhythm.band][:, rows].mean(axis=(1, 2))
    # Three 1-s windows per trial: the baseline's correlation is noisy around zero (sd ~0.11 for 80 trials).
    assert abs(spearmanr(_centred_per_subject(baseline, subjects), label).statistic) < 0.4
    assert spearmanr(_centred_per_subject(trial, subjects), label).statistic > 0.8


def test_distractor_varies_strongly_but_follows_no_label(population, band_power):
    _, labels, subjects = population
    block = band_power["beta"][:, _block_rows(OCCIPITAL_BETA_DISTRACTOR)].mean(axis=1)  # (n_trials, 60)
    outside = band_power["beta"][:, _rows_outside_every_block()].mean(axis=1)
    # Second-to-second and trial-to-trial spread both well above that of the other electrodes.
    assert block.std(axis=1).mean() > 2 * outside.std(axis=1).mean()
    block_trials = _centred_per_subject(block.mean(axis=1), subjects)
    assert block_trials.std() > 1.5 * _centred_per_subject(outside.mean(axis=1), subjects).std()
    for column in range(len(LABEL_NAMES)):
        assert abs(spearmanr(block_trials, labels[:, column]).statistic) < 0.35


def test_ground_truth_is_json_native_and_names_the_planted_blocks():
    truth = ground_truth(SyntheticDeapSpec())
    assert json.loads(json.dumps(truth)) == truth
    summary = [(effect["label"], effect["band"], effect["electrodes"]) for effect in truth["effects"]]
    assert summary == [
        ("arousal", "gamma", ["C4", "T8", "P4", "P8"]),
        ("valence", "alpha", ["Fp1", "AF3", "F3", "F7"]),
        ("none", "beta", ["PO3", "O1", "Oz", "O2", "PO4"]),
    ]
    assert SyntheticDeapSpec.from_dict(truth["spec"]) == SyntheticDeapSpec()


@pytest.mark.parametrize(("fmt", "reader"), [("dat", read_deap_dat), ("mat", read_deap_mat)])
def test_written_files_read_back_as_generated(tmp_path, fmt, reader):
    spec = SyntheticDeapSpec(n_subjects=1, n_trials=2, seed=5)
    paths = write_synthetic_deap(spec, tmp_path / "deap", fmt=fmt)
    assert [path.name for path in paths] == [f"s01.{fmt}"]
    read, generated = reader(paths[0]), generate_subject(spec, 1)
    np.testing.assert_array_equal(read.signals, generated.signals)
    np.testing.assert_array_equal(read.labels, generated.labels)
    assert read.subject.tolist() == [1, 1]
    saved = json.loads((tmp_path / "deap" / GROUND_TRUTH_FILE).read_text())
    assert saved == ground_truth(spec)


def test_dat_file_has_deap_layout_with_peripheral_channels(tmp_path):
    import pickle

    spec = SyntheticDeapSpec(n_subjects=1, n_trials=2, seed=5)
    (path,) = write_synthetic_deap(spec, tmp_path)
    # The file was written by this test, so an ordinary unpickler may look inside it.
    contents = pickle.loads(path.read_bytes())
    assert contents["data"].shape == (2, 40, N_SAMPLES) and contents["data"].dtype == np.float64
    assert contents["labels"].shape == (2, 4) and contents["labels"].dtype == np.float64
    peripheral = contents["data"][:, 32:]
    assert np.isfinite(peripheral).all()
    assert (peripheral.std(axis=-1) > 0).all()


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda: SyntheticDeapSpec(n_trials=0), "n_trials must be an integer >= 1"),
        (lambda: SyntheticDeapSpec(seed=-1), "seed must be an integer >= 0"),
        (lambda: SyntheticDeapSpec(background_rms_uv=float("nan")), "must be finite"),
        (
            lambda: SyntheticDeapSpec(rhythms=(AROUSAL_GAMMA, AROUSAL_GAMMA)),
            r"\['C4', 'P4', 'P8', 'T8'\] in two planted blocks",
        ),
        (lambda: SyntheticDeapSpec.from_dict({"n_subject": 3}), r"unknown key\(s\) \['n_subject'\]"),
        (lambda: PlantedRhythm(**{**vars(AROUSAL_GAMMA), "peak_hz": 50.0}), "outside the gamma band"),
        (lambda: PlantedRhythm(**{**vars(AROUSAL_GAMMA), "electrodes": ("C4", "X9")}), "DEAP channel names"),
        (
            lambda: PlantedRhythm(**{**vars(OCCIPITAL_BETA_DISTRACTOR), "log10_power_per_label_unit": 0.1}),
            "label-free rhythm",
        ),
        (lambda: generate_subject(SyntheticDeapSpec(n_subjects=2), 3), r"must be an integer in \[1, 2\]"),
        (lambda: write_synthetic_deap(SMALL, "unused", fmt="edf"), "must be one of"),
    ],
    ids=[
        "no-trials",
        "seed",
        "nan",
        "overlap",
        "unknown-key",
        "peak",
        "electrode",
        "distractor-gain",
        "subject",
        "format",
    ],
)
def test_invalid_specs_and_arguments_are_refused(build, problem):
    with pytest.raises(InputError, match=problem):
        build()


def test_a_subject_is_the_same_whatever_the_number_of_subjects():
    small = generate_subject(SyntheticDeapSpec(n_subjects=2, n_trials=2, seed=3), 2)
    large = generate_subject(SyntheticDeapSpec(n_subjects=5, n_trials=2, seed=3), 2)
    assert small.source_sha256 == large.source_sha256
    assert small.signals.tobytes() == large.signals.tobytes()


def test_subjects_generated_in_parallel_threads_equal_sequential_ones():
    """Flows generate subjects in a thread pool; their content keys must not depend on it."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.sources import synthetic

    spec = SyntheticDeapSpec(n_subjects=4, n_trials=2, seed=5)
    sequential = [generate_subject(spec, subject).source_sha256 for subject in range(1, 5)]
    for _ in range(3):
        synthetic._MIXING_CACHE.clear()
        with ThreadPoolExecutor(max_workers=4) as pool:
            parallel = list(pool.map(lambda s: generate_subject(spec, s).source_sha256, range(1, 5)))
        assert parallel == sequential


# ---------------------------------------------------------------- scenarios


def test_planted_scenario_is_bitwise_the_data_from_before_scenarios():
    spec = scenario_spec("planted", n_subjects=2, seed=3, n_trials=3)
    assert spec == SMALL
    # Recorded from the generator before scenarios existed: the key covers the description and
    # every byte of the signals and labels, so stores made earlier keep their trials.
    assert generate_subject(spec, 2).source_sha256 == (
        "7823523bc6ef6a28e8022ea37a8e90446af2a24159a98d2c4efa4a21fdc13db7"
    )


@pytest.fixture(scope="module")
def confound_population() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Six subjects of 20 trials of the confound scenario: band powers, labels, subjects."""
    trials = generate_synthetic_deap(scenario_spec("confound", n_subjects=6, seed=0, n_trials=20))
    signals = np.concatenate([part.signals for part in trials])
    labels = np.concatenate([part.labels for part in trials])
    subjects = np.concatenate([part.subject for part in trials])
    return _log_band_power(signals), labels, subjects


def test_confound_subjects_have_rating_habits_and_all_four_classes(confound_population):
    _, labels, subjects = confound_population
    for subject in np.unique(subjects):
        mine = labels[subjects == subject]
        high_arousal = (mine[:, LABEL_NAMES.index("arousal")] > 5).mean()
        assert high_arousal == (0.8 if subject % 2 == 1 else 0.2)
        assert (mine[:, LABEL_NAMES.index("valence")] > 5).mean() == 0.5
        assert np.unique(emotion_classes(mine, 5.0)).size == 4


def test_confound_habit_rhythm_follows_the_subject_never_the_trial(confound_population):
    band_power, labels, subjects = confound_population
    block = band_power["beta"][:, _block_rows(SUBJECT_HABIT_BETA)].mean(axis=(1, 2))
    arousal = labels[:, LABEL_NAMES.index("arousal")]
    # Pooled over subjects the habit makes the rhythm look like an arousal effect ...
    assert spearmanr(block, arousal).statistic > 0.25
    high_habit = np.isin(subjects, [1, 3, 5])
    assert block[high_habit].mean() - block[~high_habit].mean() > 0.2
    # ... within a subject it has nothing to do with the trial's arousal.
    assert abs(spearmanr(_centred_per_subject(block, subjects), arousal).statistic) < 0.2


def test_confound_genuine_effect_is_moderate_and_within_subject(confound_population):
    band_power, labels, subjects = confound_population
    block = band_power["alpha"][:, _block_rows(PARIETAL_VALENCE_ALPHA)].mean(axis=(1, 2))
    within = _centred_per_subject(block, subjects)
    rho = spearmanr(within, labels[:, LABEL_NAMES.index("valence")]).statistic
    assert 0.4 < rho < 0.8  # clearly there, yet weaker than the planted effects (about 0.9)
    assert abs(spearmanr(within, labels[:, LABEL_NAMES.index("arousal")]).statistic) < 0.2


def test_null_scenario_keeps_only_the_distractor_and_balanced_ratings():
    spec = scenario_spec("null", n_subjects=3, seed=1)
    assert spec.rhythms == (OCCIPITAL_BETA_DISTRACTOR,)
    assert spec.rating_habit is None
    truth = ground_truth(spec)
    assert truth["scenario"] == "null"
    assert [effect["role"] for effect in truth["effects"]] == ["distractor"]


def test_ground_truth_names_each_scenario_and_the_role_of_each_effect():
    roles = {
        name: [(effect["role"], effect["band"]) for effect in ground_truth(scenario_spec(name))["effects"]]
        for name in SCENARIOS
    }
    assert roles["planted"] == [("emotion", "gamma"), ("emotion", "alpha"), ("distractor", "beta")]
    assert roles["confound"] == [("subject_habit", "beta"), ("emotion", "alpha"), ("distractor", "beta")]
    truth = ground_truth(scenario_spec("confound", n_subjects=4, seed=2))
    assert json.loads(json.dumps(truth)) == truth
    assert SyntheticDeapSpec.from_dict(truth["spec"]) == scenario_spec("confound", n_subjects=4, seed=2)


def test_scenario_refusals():
    with pytest.raises(InputError, match="not a scenario"):
        scenario_spec("strong")
    with pytest.raises(InputError, match="scenario must be one of"):
        SyntheticDeapSpec(scenario="mixed")
    with pytest.raises(InputError, match="follows must be one of"):
        PlantedRhythm(**{**AROUSAL_GAMMA.__dict__, "follows": "session"})
    with pytest.raises(InputError, match=r"share must lie in \[0.5, 1\)"):
        RatingHabit(share=1.0)
    with pytest.raises(InputError, match="label must be one of"):
        RatingHabit(label="liking")

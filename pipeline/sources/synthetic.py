"""The project's own synthetic DEAP: seeded, deterministic, with known planted effects.

Each subject's trials look like DEAP's preprocessed EEG (32 channels, 8064 samples at 128 Hz,
4-45 Hz band-pass, common average reference, 3-s baseline) and carry rhythms whose power
is planted on purpose, so that every later stage can be checked against a known answer:

* arousal drives gamma power over C4-T8-P4-P8 (the block of the paper's Factor 1);
* valence drives alpha power over the left-frontal block Fp1-AF3-F3-F7;
* a strong, label-free beta rhythm over PO3-O1-Oz-O2-PO4 varies at random across trials
  and seconds: a distractor that carries much information about the frames and none about
  the emotion.

That is the ``planted`` scenario (the default). Two more scenarios (:func:`scenario_spec`)
are built to fool a statistic rather than to confirm it; both keep the distractor:

* ``null``: the ratings are independent of the EEG (only the distractor is planted, and
  every subject's ratings are balanced over the four classes). Nothing may be linked.
* ``confound``: real DEAP's subject structure. Odd subjects rate arousal mostly high (80 %
  of their trials), even subjects mostly low, while valence stays balanced in each subject.
  A beta rhythm over the right fronto-temporal block F4-F8-FC6-T8 follows the *subject's*
  mean arousal rating (0.15 log10 per rating unit: a factor of about 3 in power between a
  high-habit and a low-habit subject) and never the trial's rating; pooled over subjects it
  correlates with the arousal class, within a subject it carries nothing. A genuine,
  moderate within-subject effect: parietal alpha over CP1-CP2-P3-Pz-P4 rises with the
  trial's valence by 0.05 log10 per rating unit (the planted effects use 0.12), under
  twice the planted trial-to-trial noise. Its block's alpha power correlates with valence
  within subject at a Spearman rho of about 0.6 (0.61 and 0.66 on two seeds; the planted
  effects reach about 0.9), while the habit block's beta power correlates with arousal at
  about 0.4 pooled over subjects and about 0 within them.

Signal model, per trial: spatially correlated aperiodic (1/f) background, mixed through
the correlation ``exp(-distance / spatial_length_m)`` of the biosemi32 electrode
positions; band-limited rhythms on their electrode blocks whose log power follows
``log10_power_per_label_unit * (label - 5)`` after the baseline plus random trial-level and
slow within-trial variation; residual blinks on frontal electrodes; per-subject gain,
aperiodic exponent and peak frequencies. Every component is shaped in the frequency domain
by the zero-phase response of a 4-45 Hz Butterworth band-pass (what ``sosfiltfilt`` applies),
then the sum is re-referenced to the common average.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import scipy.signal

from pipeline.config import BAND_NAMES, PreprocessConfig
from pipeline.errors import InputError
from pipeline.sources.deap import write_deap_dat, write_deap_mat
from pipeline.sources.trials import BASELINE_SECONDS, DEAP_CHANNELS, LABEL_NAMES, N_SAMPLES, SFREQ, Trials

BAND_EDGES_HZ: dict[str, tuple[float, float]] = dict(
    zip(BAND_NAMES, PreprocessConfig().band_edges_hz, strict=True)
)
PASSBAND_HZ = (4.0, 45.0)
NEUTRAL_LABEL = 5.0
GROUND_TRUTH_FILE = "ground_truth.json"
_EFFECT_RAMP_SECONDS = 0.5  # label effects fade in after the baseline instead of switching on
_FILE_FORMATS = ("dat", "mat")
_MIXING_LOCK = threading.Lock()
_MIXING_CACHE: dict[float, np.ndarray] = {}
RHYTHM_FOLLOWS = ("trial", "subject")
SCENARIOS = ("planted", "null", "confound")
# Class labels a rating habit may bend (the other two ratings never enter a class).
_CLASS_LABELS = ("valence", "arousal")


def _checked_number(where: str, name: str, value: object, positive: bool | None) -> float:
    """``value`` as a float after checking it is a finite real number of the required sign.

    ``positive`` True requires > 0, False requires >= 0, None allows any sign.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InputError(where, f"{name} must be a number, got {value!r}")
    if not np.isfinite(value):
        raise InputError(where, f"{name} must be finite, got {value}")
    if positive is True and value <= 0:
        raise InputError(where, f"{name} must be positive, got {value}")
    if positive is False and value < 0:
        raise InputError(where, f"{name} must be non-negative, got {value}")
    return float(value)


def _refuse_unknown_keys(where: str, values: Mapping[str, Any], kind: type) -> None:
    unknown = sorted(set(values) - {item.name for item in fields(kind)})
    if unknown:
        raise InputError(where, f"unknown key(s) {unknown}")


@dataclass(frozen=True)
class PlantedRhythm:
    """A band-limited rhythm on an electrode block whose power follows one label, or none.

    Attributes
    ----------
    label : str
        The label (one of ``LABEL_NAMES``) that drives the rhythm's power, or ``"none"`` for a
        label-free distractor.
    band : str
        The analysis band the rhythm falls in (``"alpha"``, ``"beta"`` or ``"gamma"``).
    electrodes : tuple of str
        The block: electrodes (DEAP names) the rhythm appears on, each with weight 0.7-1.
    peak_hz, bandwidth_hz : float
        Centre and standard deviation of the rhythm's Gaussian spectral peak. Each subject's
        centre is drawn around ``peak_hz`` with standard deviation ``peak_jitter_hz`` and kept
        inside the band.
    power_ratio_log10 : float
        log10 of the rhythm's power over the background's power in the same band, at a
        neutral label (5).
    log10_power_per_label_unit : float
        Gain: the rhythm's log10 power rises by this much per label unit after the baseline
        (0.12 means x1.32 per unit, x9.1 from label 1 to label 9). Must be 0 when ``label`` is
        ``"none"``.
    trial_sd_log10, within_trial_sd_log10 : float
        Standard deviation of the rhythm's log10 power across trials (constant within a trial)
        and within a trial (a smooth random process).
    modulation_hz : float
        Highest frequency of the within-trial variation: how fast the power drifts.
    peak_jitter_hz : float
        Standard deviation of the subject-to-subject peak frequency.
    follows : {"trial", "subject"}
        ``"trial"``: the power follows each trial's own rating. ``"subject"``: it follows the
        subject's mean rating of ``label`` over all the subject's trials (a rating habit), so it
        is constant within a subject and says nothing about one trial against another.
    """

    label: str
    band: str
    electrodes: tuple[str, ...]
    peak_hz: float
    bandwidth_hz: float
    power_ratio_log10: float
    log10_power_per_label_unit: float
    trial_sd_log10: float
    within_trial_sd_log10: float
    modulation_hz: float
    peak_jitter_hz: float
    follows: str = "trial"

    def __post_init__(self) -> None:
        where = f"planted rhythm ({self.label}, {self.band})"
        if self.follows not in RHYTHM_FOLLOWS:
            raise InputError(where, f"follows must be one of {RHYTHM_FOLLOWS}, got {self.follows!r}")
        if self.label not in (*LABEL_NAMES, "none"):
            raise InputError(where, f"label must be one of {(*LABEL_NAMES, 'none')}, got {self.label!r}")
        if self.band not in BAND_EDGES_HZ:
            raise InputError(where, f"band must be one of {BAND_NAMES}, got {self.band!r}")
        object.__setattr__(self, "electrodes", tuple(self.electrodes))
        unknown = [name for name in self.electrodes if name not in DEAP_CHANNELS]
        if not self.electrodes or unknown or len(set(self.electrodes)) != len(self.electrodes):
            raise InputError(where, f"electrodes must be distinct DEAP channel names, got {self.electrodes}")
        for name in ("peak_hz", "bandwidth_hz", "modulation_hz"):
            object.__setattr__(self, name, _checked_number(where, name, getattr(self, name), True))
        for name in ("trial_sd_log10", "within_trial_sd_log10", "peak_jitter_hz"):
            object.__setattr__(self, name, _checked_number(where, name, getattr(self, name), False))
        for name in ("power_ratio_log10", "log10_power_per_label_unit"):
            object.__setattr__(self, name, _checked_number(where, name, getattr(self, name), None))
        low, high = BAND_EDGES_HZ[self.band]
        if not low < self.peak_hz < high:
            raise InputError(
                where, f"peak_hz {self.peak_hz} lies outside the {self.band} band [{low}, {high})"
            )
        if self.label == "none" and self.log10_power_per_label_unit != 0:
            raise InputError(where, "a label-free rhythm must have log10_power_per_label_unit 0")
        if self.label == "none" and self.follows != "trial":
            raise InputError(where, "a label-free rhythm follows no rating; leave follows at 'trial'")


AROUSAL_GAMMA = PlantedRhythm(
    label="arousal",
    band="gamma",
    electrodes=("C4", "T8", "P4", "P8"),
    peak_hz=38.0,
    bandwidth_hz=2.5,
    power_ratio_log10=0.4,
    log10_power_per_label_unit=0.12,
    trial_sd_log10=0.05,
    within_trial_sd_log10=0.1,
    modulation_hz=0.1,
    peak_jitter_hz=1.5,
)
VALENCE_ALPHA = PlantedRhythm(
    label="valence",
    band="alpha",
    electrodes=("Fp1", "AF3", "F3", "F7"),
    peak_hz=10.0,
    bandwidth_hz=0.8,
    power_ratio_log10=0.3,
    log10_power_per_label_unit=0.12,
    trial_sd_log10=0.05,
    within_trial_sd_log10=0.1,
    modulation_hz=0.1,
    peak_jitter_hz=0.6,
)
OCCIPITAL_BETA_DISTRACTOR = PlantedRhythm(
    label="none",
    band="beta",
    electrodes=("PO3", "O1", "Oz", "O2", "PO4"),
    peak_hz=20.0,
    bandwidth_hz=2.0,
    power_ratio_log10=0.7,
    log10_power_per_label_unit=0.0,
    trial_sd_log10=0.3,
    within_trial_sd_log10=0.3,
    modulation_hz=0.5,
    peak_jitter_hz=1.5,
)
DEFAULT_RHYTHMS: tuple[PlantedRhythm, ...] = (AROUSAL_GAMMA, VALENCE_ALPHA, OCCIPITAL_BETA_DISTRACTOR)
# The confound scenario's two label rhythms (module docstring).
SUBJECT_HABIT_BETA = PlantedRhythm(
    label="arousal",
    band="beta",
    electrodes=("F4", "F8", "FC6", "T8"),
    peak_hz=22.0,
    bandwidth_hz=2.0,
    power_ratio_log10=0.5,
    log10_power_per_label_unit=0.15,
    trial_sd_log10=0.1,
    within_trial_sd_log10=0.15,
    modulation_hz=0.1,
    peak_jitter_hz=1.5,
    follows="subject",
)
PARIETAL_VALENCE_ALPHA = PlantedRhythm(
    label="valence",
    band="alpha",
    electrodes=("CP1", "CP2", "P3", "Pz", "P4"),
    peak_hz=10.0,
    bandwidth_hz=0.8,
    power_ratio_log10=0.3,
    log10_power_per_label_unit=0.05,
    trial_sd_log10=0.1,
    within_trial_sd_log10=0.1,
    modulation_hz=0.1,
    peak_jitter_hz=0.6,
)


@dataclass(frozen=True)
class RatingHabit:
    """Subjects who rate one label mostly high or mostly low, whatever they watch.

    Odd subjects put ``share`` of their trials in the label's high class, even subjects the same
    share in its low class; the other class label stays balanced within each of those groups, so
    every subject still has trials of all four classes.
    """

    label: str = "arousal"
    share: float = 0.8

    def __post_init__(self) -> None:
        where = "rating habit"
        if self.label not in _CLASS_LABELS:
            raise InputError(where, f"label must be one of {_CLASS_LABELS}, got {self.label!r}")
        share = _checked_number(where, "share", self.share, True)
        if not 0.5 <= share < 1.0:
            raise InputError(where, f"share must lie in [0.5, 1), got {share}")
        object.__setattr__(self, "share", share)


@dataclass(frozen=True)
class SyntheticDeapSpec:
    """Everything that decides the synthetic data set; equal specs give bitwise-equal data.

    Attributes
    ----------
    n_subjects, n_trials : int
        Subjects ``1..n_subjects``, each with ``n_trials`` trials of 8064 samples.
    seed : int
        Root seed; each subject draws from its own stream, so subjects can be generated alone.
    rhythms : tuple of PlantedRhythm
        The planted effects, on disjoint electrode blocks.
    background_rms_uv : float
        RMS of the aperiodic background per channel (µV) before per-subject and per-trial gains.
    aperiodic_exponent, aperiodic_exponent_sd : float
        Background power falls as ``1 / f**exponent``; the exponent varies across subjects.
    spatial_length_m : float
        Length scale of the background's spatial correlation (head radius is 0.095 m).
    subject_gain_sd_log10, trial_gain_sd_log10, channel_gain_sd_log10 : float
        Standard deviations of log10 signal power across subjects, across trials (shared by the
        trial's channels) and across the channels of a trial.
    blinks_per_minute, blink_amplitude_uv : float
        Residual blinks: rate and peak amplitude at Fp1/Fp2 before the band-pass.
    scenario : str
        Name of the scenario the spec was built for (one of ``SCENARIOS``), recorded with the
        data; :func:`scenario_spec` builds each one.
    rating_habit : RatingHabit or None
        Subjects' rating habit; None draws every subject's ratings balanced over the four classes.
    """

    n_subjects: int = 32
    n_trials: int = 40
    seed: int = 0
    rhythms: tuple[PlantedRhythm, ...] = field(default=DEFAULT_RHYTHMS)
    background_rms_uv: float = 10.0
    aperiodic_exponent: float = 1.6
    aperiodic_exponent_sd: float = 0.15
    spatial_length_m: float = 0.05
    subject_gain_sd_log10: float = 0.1
    trial_gain_sd_log10: float = 0.08
    channel_gain_sd_log10: float = 0.05
    blinks_per_minute: float = 12.0
    blink_amplitude_uv: float = 60.0
    scenario: str = "planted"
    rating_habit: RatingHabit | None = None

    def __post_init__(self) -> None:
        where = "SyntheticDeapSpec"
        if self.scenario not in SCENARIOS:
            raise InputError(where, f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        if self.rating_habit is not None and not isinstance(self.rating_habit, RatingHabit):
            raise InputError(where, "rating_habit must be a RatingHabit or None")
        for name in ("n_subjects", "n_trials", "seed"):
            value = getattr(self, name)
            minimum = 0 if name == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
                raise InputError(where, f"{name} must be an integer >= {minimum}, got {value!r}")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "rhythms", tuple(self.rhythms))
        if not all(isinstance(rhythm, PlantedRhythm) for rhythm in self.rhythms):
            raise InputError(where, "rhythms must be PlantedRhythm instances")
        seen: set[str] = set()
        for rhythm in self.rhythms:
            shared = seen.intersection(rhythm.electrodes)
            if shared:
                raise InputError(
                    where, f"electrode(s) {sorted(shared)} in two planted blocks; blocks must be disjoint"
                )
            seen.update(rhythm.electrodes)
        for name in ("background_rms_uv", "spatial_length_m"):
            object.__setattr__(self, name, _checked_number(where, name, getattr(self, name), True))
        for name in (
            "aperiodic_exponent",
            "aperiodic_exponent_sd",
            "subject_gain_sd_log10",
            "trial_gain_sd_log10",
            "channel_gain_sd_log10",
            "blinks_per_minute",
            "blink_amplitude_uv",
        ):
            object.__setattr__(self, name, _checked_number(where, name, getattr(self, name), False))
        if self.aperiodic_exponent > 4:
            raise InputError(where, f"aperiodic_exponent must lie in [0, 4], got {self.aperiodic_exponent}")

    def to_dict(self) -> dict:
        """JSON-native form, as recorded in ``ground_truth.json`` and hashed into ``source_sha256``."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SyntheticDeapSpec:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are refused."""
        where = "SyntheticDeapSpec"
        if not isinstance(values, Mapping):
            raise InputError(where, f"expected a mapping, got {type(values).__name__}")
        values = dict(values)
        _refuse_unknown_keys(where, values, cls)
        if "rhythms" in values:
            rhythms = []
            for entry in values["rhythms"]:
                if isinstance(entry, PlantedRhythm):
                    rhythms.append(entry)
                    continue
                if not isinstance(entry, Mapping):
                    raise InputError(where, f"each rhythm must be a mapping, got {type(entry).__name__}")
                _refuse_unknown_keys(f"{where} rhythm", entry, PlantedRhythm)
                try:
                    rhythms.append(PlantedRhythm(**entry))
                except TypeError as err:  # a missing field
                    raise InputError(f"{where} rhythm", str(err)) from None
            values["rhythms"] = tuple(rhythms)
        habit = values.get("rating_habit")
        if isinstance(habit, Mapping):
            _refuse_unknown_keys(f"{where} rating_habit", habit, RatingHabit)
            values["rating_habit"] = RatingHabit(**habit)
        return cls(**values)

    def identity(self) -> dict:
        """What must agree for two specs' subjects to share a store: everything but ``n_subjects``."""
        return {key: value for key, value in self.to_dict().items() if key != "n_subjects"}


def scenario_spec(
    scenario: str, n_subjects: int = 32, seed: int = 0, n_trials: int = 40
) -> SyntheticDeapSpec:
    """The spec of a named scenario (module docstring): ``planted``, ``null`` or ``confound``.

    ``planted`` is :class:`SyntheticDeapSpec`'s default, bitwise the same data as before
    scenarios existed; every scenario keeps the label-free occipital beta distractor.
    """
    if scenario not in SCENARIOS:
        raise InputError("scenario", f"{scenario!r} is not a scenario; choose one of {SCENARIOS}")
    settings: dict[str, Any] = {"n_subjects": n_subjects, "n_trials": n_trials, "seed": seed}
    if scenario == "null":
        settings.update(rhythms=(OCCIPITAL_BETA_DISTRACTOR,))
    elif scenario == "confound":
        settings.update(
            rhythms=(SUBJECT_HABIT_BETA, PARIETAL_VALENCE_ALPHA, OCCIPITAL_BETA_DISTRACTOR),
            rating_habit=RatingHabit(),
        )
    return SyntheticDeapSpec(scenario=scenario, **settings)


@dataclass(frozen=True)
class _SubjectDraw:
    """One subject's generated arrays; ``blinks`` is the blink time course before filtering."""

    eeg: np.ndarray  # float32 (n_trials, 32, N_SAMPLES)
    labels: np.ndarray  # float64 (n_trials, 4)
    blinks: np.ndarray  # float64 (n_trials, N_SAMPLES)


@cache
def _electrode_positions() -> np.ndarray:
    """3-D positions (m) of the DEAP channels, from MNE's biosemi32 montage (shipped, offline)."""
    import mne  # deferred: only the generator needs it, and importing it costs half a second

    positions = mne.channels.make_standard_montage("biosemi32").get_positions()["ch_pos"]
    return np.array([positions[name] for name in DEAP_CHANNELS], dtype=np.float64)


def _background_mixing(spatial_length_m: float) -> np.ndarray:
    """Symmetric square root of the exponential spatial correlation: unit variance per channel.

    Flows generate subjects in parallel threads; computing it once under a lock means every
    subject of a process sees the very same matrix (a race could cache one result and use another).
    """
    with _MIXING_LOCK:
        if spatial_length_m not in _MIXING_CACHE:
            positions = _electrode_positions()
            distances = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
            eigenvalues, eigenvectors = np.linalg.eigh(np.exp(-distances / spatial_length_m))
            root = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
            _MIXING_CACHE[spatial_length_m] = root.astype(np.float32)
        return _MIXING_CACHE[spatial_length_m]


@cache
def _frequencies_and_passband() -> tuple[np.ndarray, np.ndarray]:
    """rfft frequencies of one trial and the zero-phase (|H|^2) gain of DEAP's 4-45 Hz band-pass."""
    frequencies = scipy.fft.rfftfreq(N_SAMPLES, d=1.0 / SFREQ)
    sos = scipy.signal.butter(4, PASSBAND_HZ, btype="bandpass", fs=SFREQ, output="sos")
    _, response = scipy.signal.sosfreqz(sos, worN=frequencies, fs=SFREQ)
    return frequencies, np.abs(response) ** 2


def _unit_variance_scale(amplitude_spectrum: np.ndarray) -> np.ndarray:
    """Factor that gives ``irfft(complex normal * amplitude_spectrum, norm='ortho')`` unit variance."""
    # Each complex coefficient carries variance 2 and appears twice in the Hermitian spectrum.
    power = 4.0 * np.sum(amplitude_spectrum**2, axis=-1, keepdims=True) / N_SAMPLES
    return 1.0 / np.sqrt(power)


def _shaped_noise(
    rng: np.random.Generator, amplitude_spectrum: np.ndarray, leading: tuple[int, ...]
) -> np.ndarray:
    """Gaussian noise with the given amplitude spectrum (broadcast over ``leading`` axes), unit variance."""
    n_frequencies = amplitude_spectrum.shape[-1]
    spectrum = rng.standard_normal((*leading, n_frequencies, 2), dtype=np.float32).view(np.complex64)[..., 0]
    spectrum *= (amplitude_spectrum * _unit_variance_scale(amplitude_spectrum)).astype(np.float32)
    return scipy.fft.irfft(spectrum, n=N_SAMPLES, axis=-1, norm="ortho")


def _draw_labels(rng: np.random.Generator, n_trials: int) -> np.ndarray:
    """Labels in [1, 9] with valence and arousal balanced around 5, so all four classes appear."""
    quadrant = rng.permutation(np.arange(n_trials) % 4)
    labels = rng.uniform(1.0, 9.0, size=(n_trials, len(LABEL_NAMES)))
    for column, high in ((0, quadrant % 2 == 1), (1, quadrant >= 2)):
        low_values = rng.uniform(1.0, 4.99, size=n_trials)
        high_values = rng.uniform(5.01, 9.0, size=n_trials)
        labels[:, column] = np.where(high, high_values, low_values)
    return np.round(labels, 2)


def _draw_habit_labels(
    rng: np.random.Generator, n_trials: int, habit: RatingHabit, rates_high: bool
) -> np.ndarray:
    """Labels in [1, 9] whose ``habit.label`` falls in one class for ``habit.share`` of the trials.

    The other class label is balanced within each class of the habit label, so that it stays
    independent of the habit and every subject keeps trials of all four classes.
    """
    habit_column = LABEL_NAMES.index(habit.label)
    other_column = LABEL_NAMES.index(next(name for name in _CLASS_LABELS if name != habit.label))
    in_habit_class = rng.permutation(np.arange(n_trials) < round(habit.share * n_trials))
    habit_high = in_habit_class if rates_high else ~in_habit_class
    other_high = np.empty(n_trials, dtype=bool)
    for group in (habit_high, ~habit_high):
        members = np.flatnonzero(group)
        other_high[members] = rng.permutation(np.arange(members.size) % 2 == 1)
    labels = rng.uniform(1.0, 9.0, size=(n_trials, len(LABEL_NAMES)))
    for column, high in ((habit_column, habit_high), (other_column, other_high)):
        labels[:, column] = np.where(
            high, rng.uniform(5.01, 9.0, size=n_trials), rng.uniform(1.0, 4.99, size=n_trials)
        )
    return np.round(labels, 2)


def _rhythm_patterns(rng: np.random.Generator, rhythms: tuple[PlantedRhythm, ...]) -> np.ndarray:
    """(32, n_rhythms) weights: 0.7-1 on each block electrode (varying by subject), 0 elsewhere."""
    patterns = np.zeros((len(DEAP_CHANNELS), len(rhythms)), dtype=np.float32)
    for column, rhythm in enumerate(rhythms):
        rows = [DEAP_CHANNELS.index(name) for name in rhythm.electrodes]
        patterns[rows, column] = rng.uniform(0.7, 1.0, size=len(rows))
    return patterns


def _blink_topography() -> np.ndarray:
    """Blink weights falling off with distance from between the eyes: 1 at Fp1/Fp2, ~0 by Cz."""
    positions = _electrode_positions()
    between_eyes = positions[[DEAP_CHANNELS.index("Fp1"), DEAP_CHANNELS.index("Fp2")]].mean(axis=0)
    squared = np.sum((positions - between_eyes) ** 2, axis=1)
    weights = np.exp(-(squared - squared[DEAP_CHANNELS.index("Fp1")]) / (2 * 0.04**2))
    return np.clip(weights, 0.0, 1.0).astype(np.float32)


def _blink_course(rng: np.random.Generator, spec: SyntheticDeapSpec, n_trials: int) -> np.ndarray:
    """(n_trials, N_SAMPLES) unfiltered blink deflections: Gaussian pulses at random times."""
    duration_minutes = N_SAMPLES / SFREQ / 60.0
    counts = rng.poisson(spec.blinks_per_minute * duration_minutes, size=n_trials)
    rows = np.repeat(np.arange(n_trials), counts)
    onsets = rng.integers(0, N_SAMPLES, size=rows.size)
    impulses = np.zeros((n_trials, N_SAMPLES))
    np.add.at(impulses, (rows, onsets), spec.blink_amplitude_uv * rng.uniform(0.6, 1.4, size=rows.size))
    frequencies, _ = _frequencies_and_passband()
    pulse_sd_seconds = 0.05
    pulse = np.exp(-0.5 * (2 * np.pi * frequencies * pulse_sd_seconds) ** 2)
    return scipy.fft.irfft(scipy.fft.rfft(impulses, axis=-1) * pulse, n=N_SAMPLES, axis=-1)


def _check_subject(spec: SyntheticDeapSpec, subject: int) -> None:
    if (
        isinstance(subject, bool)
        or not isinstance(subject, int | np.integer)
        or not 1 <= subject <= spec.n_subjects
    ):
        raise InputError("subject", f"must be an integer in [1, {spec.n_subjects}], got {subject!r}")


def _subject_streams(spec: SyntheticDeapSpec, subject: int) -> list[np.random.Generator]:
    """Independent random streams of one subject, so that any subject can be generated alone.

    In order: subject parameters, labels, background, rhythms, blinks, peripheral channels.
    """
    return [np.random.default_rng(child) for child in np.random.SeedSequence([spec.seed, subject]).spawn(6)]


def _background(
    spec: SyntheticDeapSpec, rng: np.random.Generator, exponent: float, subject_gain: float
) -> np.ndarray:
    """(n_trials, 32, N_SAMPLES) float32 spatially correlated aperiodic background in µV.

    Built in the frequency domain: white complex noise per channel, mixed across channels
    (a real matrix acts on real and imaginary parts alike, so the interleaved float view
    mixes in place), shaped to ``1 / f**exponent`` times the band-pass, scaled by the
    subject, trial and channel gains, then one inverse FFT. The spectrum is flat below 1 Hz,
    where the band-pass removes it anyway.
    """
    n_trials, n_channels = spec.n_trials, len(DEAP_CHANNELS)
    frequencies, passband = _frequencies_and_passband()
    aperiodic = np.maximum(frequencies, 1.0) ** (-exponent / 2) * passband
    aperiodic[0] = 0.0
    interleaved = rng.standard_normal((n_trials, n_channels, frequencies.size, 2), dtype=np.float32)
    mixing = _background_mixing(spec.spatial_length_m)
    # einsum's own loop, not BLAS: a BLAS product's last bits depend on its thread count, which
    # parallel flow tasks change process-wide, and a subject's content key must not.
    flat = interleaved.reshape(n_trials, n_channels, -1)
    flat[...] = np.einsum("ij,tjk->tik", mixing, flat, optimize=False)
    trial_log_gain = spec.trial_gain_sd_log10 * rng.standard_normal((n_trials, 1, 1))
    channel_log_gain = spec.channel_gain_sd_log10 * rng.standard_normal((n_trials, n_channels, 1))
    gains = spec.background_rms_uv * subject_gain * 10 ** ((trial_log_gain + channel_log_gain) / 2)
    spectrum = interleaved.view(np.complex64)[..., 0]
    spectrum *= (aperiodic * _unit_variance_scale(aperiodic)).astype(np.float32)
    spectrum *= gains.astype(np.float32)
    return scipy.fft.irfft(spectrum, n=N_SAMPLES, axis=-1, norm="ortho")


def _draw_subject(spec: SyntheticDeapSpec, subject: int) -> _SubjectDraw:
    """Generate one subject's EEG and labels from the subject's own random streams."""
    subject_rng, label_rng, background_rng, rhythm_rng, blink_rng, _ = _subject_streams(spec, subject)
    n_trials = spec.n_trials
    frequencies, passband = _frequencies_and_passband()

    exponent = max(0.0, spec.aperiodic_exponent + spec.aperiodic_exponent_sd * subject_rng.standard_normal())
    subject_gain = 10 ** (spec.subject_gain_sd_log10 * subject_rng.standard_normal() / 2)
    peaks = np.array(
        [
            np.clip(
                rhythm.peak_hz + rhythm.peak_jitter_hz * subject_rng.standard_normal(),
                BAND_EDGES_HZ[rhythm.band][0] + rhythm.bandwidth_hz,
                BAND_EDGES_HZ[rhythm.band][1] - rhythm.bandwidth_hz,
            )
            for rhythm in spec.rhythms
        ]
    )
    patterns = _rhythm_patterns(subject_rng, spec.rhythms)
    if spec.rating_habit is None:
        labels = _draw_labels(label_rng, n_trials)
    else:
        labels = _draw_habit_labels(label_rng, n_trials, spec.rating_habit, rates_high=subject % 2 == 1)

    eeg = _background(spec, background_rng, exponent, subject_gain)
    if spec.rhythms:
        bandwidths = np.array([[rhythm.bandwidth_hz] for rhythm in spec.rhythms])
        peak_shapes = np.exp(-0.5 * ((frequencies - peaks[:, None]) / bandwidths) ** 2) * passband
        carriers = _shaped_noise(rhythm_rng, peak_shapes[:, None, :], (len(spec.rhythms), n_trials))
        cutoffs = np.array([[rhythm.modulation_hz] for rhythm in spec.rhythms])
        slow = ((frequencies > 0) & (frequencies <= cutoffs)).astype(np.float64)
        drift = _shaped_noise(rhythm_rng, slow[:, None, :], (len(spec.rhythms), n_trials))
        log_power = _rhythm_log_power(spec, labels, exponent, rhythm_rng, drift)
        rhythms = carriers * (subject_gain * 10 ** (log_power / 2)).astype(np.float32)
        for channel, column in zip(*np.nonzero(patterns), strict=True):
            eeg[:, channel] += patterns[channel, column] * rhythms[column]

    blinks = _blink_course(blink_rng, spec, n_trials)
    blinks_filtered = scipy.fft.irfft(scipy.fft.rfft(blinks, axis=-1) * passband, n=N_SAMPLES, axis=-1)
    topography = _blink_topography()
    for channel in np.flatnonzero(topography > 1e-3):
        eeg[:, channel] += (topography[channel] * blinks_filtered).astype(np.float32)

    eeg -= eeg.mean(axis=1, keepdims=True)  # common average reference, as DEAP
    return _SubjectDraw(eeg=eeg, labels=labels, blinks=blinks)


def _rhythm_log_power(
    spec: SyntheticDeapSpec, labels: np.ndarray, exponent: float, rng: np.random.Generator, drift: np.ndarray
) -> np.ndarray:
    """(n_rhythms, n_trials, N_SAMPLES) log10 power of each rhythm in µV², before the subject gain.

    ``drift`` is each rhythm's unit-variance slow within-trial process, same shape.
    """
    frequencies, passband = _frequencies_and_passband()
    aperiodic_power = np.maximum(frequencies, 1.0) ** (-exponent) * passband**2
    aperiodic_power[0] = 0.0
    times = np.arange(N_SAMPLES) / SFREQ
    after_baseline = np.clip((times - BASELINE_SECONDS) / _EFFECT_RAMP_SECONDS, 0.0, 1.0)
    log_power = np.empty(drift.shape, dtype=np.float64)
    for row, rhythm in enumerate(spec.rhythms):
        low, high = BAND_EDGES_HZ[rhythm.band]
        in_band = (frequencies >= low) & (frequencies < high)
        background_band_power = (
            spec.background_rms_uv**2 * aperiodic_power[in_band].sum() / aperiodic_power.sum()
        )
        trial_term = rhythm.trial_sd_log10 * rng.standard_normal((labels.shape[0], 1))
        log_power[row] = (
            np.log10(background_band_power)
            + rhythm.power_ratio_log10
            + trial_term
            + rhythm.within_trial_sd_log10 * drift[row]
        )
        if rhythm.label != "none":
            ratings = labels[:, LABEL_NAMES.index(rhythm.label)]
            if rhythm.follows == "subject":
                # The subject's habit, the same for every one of the subject's trials.
                ratings = np.full_like(ratings, ratings.mean())
            label_offset = ratings - NEUTRAL_LABEL
            log_power[row] += rhythm.log10_power_per_label_unit * label_offset[:, None] * after_baseline
    return log_power


def _described_as_before_scenarios(described: dict) -> dict:
    """``described`` without the scenario settings that are at their planted defaults.

    Keys of planted data then stay what they were before scenarios existed, so stores made
    earlier keep their trials instead of adding the same data again under new keys.
    """
    described = dict(described)
    if described.get("scenario") == "planted":
        del described["scenario"]
    if described.get("rating_habit", 0) is None:
        del described["rating_habit"]
    described["rhythms"] = [
        {key: value for key, value in rhythm.items() if (key, value) != ("follows", "trial")}
        for rhythm in described["rhythms"]
    ]
    return described


def _subject_sha256(spec: SyntheticDeapSpec, subject: int, draw: _SubjectDraw) -> str:
    # A subject's data do not depend on how many subjects are generated, so neither does its key:
    # growing --subjects from 8 to 12 adds four subjects to a store instead of re-adding all twelve.
    described = _described_as_before_scenarios(spec.identity())
    digest = hashlib.sha256(json.dumps({"spec": described, "subject": subject}, sort_keys=True).encode())
    digest.update(memoryview(draw.eeg).cast("B"))
    digest.update(memoryview(np.ascontiguousarray(draw.labels)).cast("B"))
    return digest.hexdigest()


def generate_subject(spec: SyntheticDeapSpec, subject: int) -> Trials:
    """Generate one subject's trials.

    Parameters
    ----------
    spec : SyntheticDeapSpec
        The data set; the same spec and subject always give bitwise-equal trials.
    subject : int
        Subject id in ``[1, spec.n_subjects]``.

    Returns
    -------
    Trials
        ``spec.n_trials`` trials, kind ``"synthetic"``, source ``"synthetic://sXX"``, with
        ``source_sha256`` the SHA-256 of the spec, subject and generated arrays.
    """
    if not isinstance(spec, SyntheticDeapSpec):
        raise InputError("spec", f"expected a SyntheticDeapSpec, got {type(spec).__name__}")
    _check_subject(spec, subject)
    draw = _draw_subject(spec, int(subject))
    return Trials(
        signals=draw.eeg,
        labels=draw.labels,
        subject=np.full(spec.n_trials, subject, dtype=np.int32),
        trial=np.arange(spec.n_trials, dtype=np.int32),
        source=f"synthetic://s{subject:02d}",
        source_sha256=_subject_sha256(spec, int(subject), draw),
        kind="synthetic",
    )


def generate_synthetic_deap(spec: SyntheticDeapSpec) -> list[Trials]:
    """Generate every subject of ``spec``: one :class:`Trials` per subject, subjects 1..n_subjects."""
    if not isinstance(spec, SyntheticDeapSpec):
        raise InputError("spec", f"expected a SyntheticDeapSpec, got {type(spec).__name__}")
    return [generate_subject(spec, subject) for subject in range(1, spec.n_subjects + 1)]


def ground_truth(spec: SyntheticDeapSpec) -> dict:
    """The planted effects of ``spec`` as JSON-native data, to score what the pipeline finds.

    Returns
    -------
    dict
        ``{"generator", "scenario", "spec", "effects"}``; each effect has ``label`` (a label
        name, or ``"none"`` for a distractor), ``band``, ``electrodes``, ``peak_hz``,
        ``log10_power_per_label_unit``, ``power_ratio_log10``, ``follows`` and ``role``:
        ``"emotion"`` (follows the trial's rating: a finding to recover), ``"subject_habit"``
        (follows the subject's rating habit: never an emotion finding) or ``"distractor"``.
    """
    if not isinstance(spec, SyntheticDeapSpec):
        raise InputError("spec", f"expected a SyntheticDeapSpec, got {type(spec).__name__}")
    effects = [
        {
            "label": rhythm.label,
            "band": rhythm.band,
            "electrodes": list(rhythm.electrodes),
            "peak_hz": rhythm.peak_hz,
            "log10_power_per_label_unit": rhythm.log10_power_per_label_unit,
            "power_ratio_log10": rhythm.power_ratio_log10,
            "follows": rhythm.follows,
            "role": _effect_role(rhythm),
        }
        for rhythm in spec.rhythms
    ]
    return {"generator": __name__, "scenario": spec.scenario, "spec": spec.to_dict(), "effects": effects}


def _effect_role(rhythm: PlantedRhythm) -> str:
    if rhythm.label == "none":
        return "distractor"
    return "subject_habit" if rhythm.follows == "subject" else "emotion"


def _peripheral_signals(rng: np.random.Generator, blinks: np.ndarray) -> np.ndarray:
    """(n_trials, 8, N_SAMPLES) plausible stand-ins for DEAP's peripheral channels 32-39.

    Order: hEOG, vEOG, zEMG, tEMG (µV), GSR, respiration belt, plethysmograph (arbitrary
    units) and temperature (°C). The readers drop these; they exist so written files have
    DEAP's layout.
    """
    n_trials = blinks.shape[0]
    times = np.arange(N_SAMPLES) / SFREQ
    saccades = (rng.random((n_trials, N_SAMPLES)) < 1.0 / SFREQ) * rng.normal(
        0.0, 30.0, (n_trials, N_SAMPLES)
    )
    gaze = np.cumsum(saccades, axis=1)
    horizontal_eog = gaze - gaze.mean(axis=1, keepdims=True) + rng.normal(0.0, 3.0, (n_trials, N_SAMPLES))
    vertical_eog = 3.0 * blinks + rng.normal(0.0, 5.0, (n_trials, N_SAMPLES))
    muscle = rng.uniform(5.0, 15.0, (n_trials, 2, 1)) * rng.standard_normal((n_trials, 2, N_SAMPLES))
    skin_level = rng.uniform(2e3, 8e3, (n_trials, 1))
    skin = skin_level * (1.0 + 0.02 * np.cumsum(rng.standard_normal((n_trials, N_SAMPLES)), axis=1) / SFREQ)
    breath_hz = rng.uniform(0.2, 0.35, (n_trials, 1))
    breathing = 500.0 * np.sin(2 * np.pi * breath_hz * times + rng.uniform(0, 2 * np.pi, (n_trials, 1)))
    heart_hz = rng.uniform(1.0, 1.5, (n_trials, 1))
    heart_phase = 2 * np.pi * heart_hz * times + rng.uniform(0, 2 * np.pi, (n_trials, 1))
    pulse = 1e3 * (np.sin(heart_phase) + 0.4 * np.sin(2 * heart_phase))
    temperature = (
        rng.uniform(30.0, 34.0, (n_trials, 1)) + rng.normal(0.0, 0.05, (n_trials, 1)) * times / times[-1]
    )
    return np.concatenate(
        [
            horizontal_eog[:, None],
            vertical_eog[:, None],
            muscle,
            skin[:, None],
            breathing[:, None],
            pulse[:, None],
            np.broadcast_to(temperature, (n_trials, N_SAMPLES))[:, None],
        ],
        axis=1,
    )


def write_synthetic_deap(spec: SyntheticDeapSpec, folder: str | os.PathLike, fmt: str = "dat") -> list[Path]:
    """Write the data set as DEAP files (``sXX.dat`` or ``sXX.mat``) plus ``ground_truth.json``.

    Files have DEAP's own layout, so the real readers can be exercised end to end: float64
    ``data`` (n_trials, 40, 8064) with the 32 EEG channels of :func:`generate_subject` followed
    by 8 plausible peripheral channels, and ``labels`` (n_trials, 4).

    Parameters
    ----------
    spec : SyntheticDeapSpec
        The data set.
    folder : path-like
        Destination folder, created when missing; existing subject files are replaced.
    fmt : {"dat", "mat"}
        ``data_preprocessed_python`` pickles or ``data_preprocessed_matlab`` MAT files.

    Returns
    -------
    list of Path
        The subject files, in subject order.
    """
    if not isinstance(spec, SyntheticDeapSpec):
        raise InputError("spec", f"expected a SyntheticDeapSpec, got {type(spec).__name__}")
    if fmt not in _FILE_FORMATS:
        raise InputError("fmt", f"must be one of {_FILE_FORMATS}, got {fmt!r}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    # Protocol 4 stores array bytes verbatim, as DEAP's Python 2 files do; Python 3's protocol 2
    # would route them through latin-1 text, making files 30 % larger and three times slower to read.
    writer = partial(write_deap_dat, protocol=4) if fmt == "dat" else write_deap_mat
    written = []
    for subject in range(1, spec.n_subjects + 1):
        draw = _draw_subject(spec, subject)
        peripherals = _peripheral_signals(_subject_streams(spec, subject)[-1], draw.blinks)
        data = np.concatenate([draw.eeg.astype(np.float64), peripherals], axis=1)
        written.append(writer(folder / f"s{subject:02d}.{fmt}", data, draw.labels))
    (folder / GROUND_TRUTH_FILE).write_text(json.dumps(ground_truth(spec), indent=2) + "\n")
    return written

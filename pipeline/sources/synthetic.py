"""The project's own synthetic DEAP: seeded, deterministic, with known planted effects.

Each subject's trials look like DEAP's preprocessed EEG (32 channels, 8064 samples at 128 Hz,
4-45 Hz band-pass, common average reference, 3-s baseline) and carry rhythms whose power
is planted on purpose, so that every later stage can be checked against a known answer:

* arousal drives gamma power over C4-T8-P4-P8 (the block of the paper's Factor 1);
* valence drives alpha power over the left-frontal block Fp1-AF3-F3-F7;
* a strong, label-free beta rhythm over PO3-O1-Oz-O2-PO4 varies at random across trials
  and seconds: a distractor that carries much information about the frames and none about
  the emotion.

That is the ``planted`` scenario (the default). Two more scenarios
(:func:`~pipeline.sources.synthetic_spec.scenario_spec`) are built to fool a statistic rather
than to confirm it; both keep the distractor:

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

The spec, its rhythms and the scenarios are defined in :mod:`pipeline.sources.synthetic_spec`;
:mod:`pipeline.sources.synthetic_files` writes the data as DEAP files.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from functools import cache

import numpy as np
import scipy.fft
import scipy.signal

from pipeline.errors import InputError
from pipeline.sources.synthetic_spec import (
    BAND_EDGES_HZ,
    CLASS_LABELS,
    PlantedRhythm,
    RatingHabit,
    SyntheticDeapSpec,
)
from pipeline.sources.trials import BASELINE_SECONDS, DEAP_CHANNELS, LABEL_NAMES, N_SAMPLES, SFREQ, Trials

PASSBAND_HZ = (4.0, 45.0)
NEUTRAL_LABEL = 5.0
_EFFECT_RAMP_SECONDS = 0.5  # label effects fade in after the baseline instead of switching on
_MIXING_LOCK = threading.Lock()
_MIXING_CACHE: dict[float, np.ndarray] = {}


@dataclass(frozen=True)
class SubjectDraw:
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
    other_column = LABEL_NAMES.index(next(name for name in CLASS_LABELS if name != habit.label))
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


def subject_streams(spec: SyntheticDeapSpec, subject: int) -> list[np.random.Generator]:
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


def draw_subject(spec: SyntheticDeapSpec, subject: int) -> SubjectDraw:
    """Generate one subject's EEG and labels from the subject's own random streams."""
    subject_rng, label_rng, background_rng, rhythm_rng, blink_rng, _ = subject_streams(spec, subject)
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
    return SubjectDraw(eeg=eeg, labels=labels, blinks=blinks)


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


def _subject_sha256(spec: SyntheticDeapSpec, subject: int, draw: SubjectDraw) -> str:
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
    draw = draw_subject(spec, int(subject))
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

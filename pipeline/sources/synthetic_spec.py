"""What decides the synthetic DEAP: planted rhythms, rating habits, the spec and its scenarios.

A :class:`SyntheticDeapSpec` holds everything the generator (:mod:`pipeline.sources.synthetic`,
whose docstring describes the signal model and the scenarios) draws from: equal specs give
bitwise-equal data. :func:`scenario_spec` builds the spec of each named scenario from the
rhythms defined here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.signal.config import BAND_NAMES, PreprocessConfig
from pipeline.sources.scenarios import SCENARIOS
from pipeline.sources.trials import DEAP_CHANNELS, LABEL_NAMES

BAND_EDGES_HZ: dict[str, tuple[float, float]] = dict(
    zip(BAND_NAMES, PreprocessConfig().band_edges_hz, strict=True)
)
RHYTHM_FOLLOWS = ("trial", "subject")
# Class labels a rating habit may bend (the other two ratings never enter a class).
CLASS_LABELS = ("valence", "arousal")


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


# Each rhythm's fields in four groups: where it is (label, band, electrodes), its spectrum
# (Hz), its power (log10) and that power's variability.
# fmt: off
AROUSAL_GAMMA = PlantedRhythm(
    label="arousal", band="gamma", electrodes=("C4", "T8", "P4", "P8"),
    peak_hz=38.0, bandwidth_hz=2.5, peak_jitter_hz=1.5,
    power_ratio_log10=0.4, log10_power_per_label_unit=0.12,
    trial_sd_log10=0.05, within_trial_sd_log10=0.1, modulation_hz=0.1,
)
VALENCE_ALPHA = PlantedRhythm(
    label="valence", band="alpha", electrodes=("Fp1", "AF3", "F3", "F7"),
    peak_hz=10.0, bandwidth_hz=0.8, peak_jitter_hz=0.6,
    power_ratio_log10=0.3, log10_power_per_label_unit=0.12,
    trial_sd_log10=0.05, within_trial_sd_log10=0.1, modulation_hz=0.1,
)
OCCIPITAL_BETA_DISTRACTOR = PlantedRhythm(
    label="none", band="beta", electrodes=("PO3", "O1", "Oz", "O2", "PO4"),
    peak_hz=20.0, bandwidth_hz=2.0, peak_jitter_hz=1.5,
    power_ratio_log10=0.7, log10_power_per_label_unit=0.0,
    trial_sd_log10=0.3, within_trial_sd_log10=0.3, modulation_hz=0.5,
)
DEFAULT_RHYTHMS: tuple[PlantedRhythm, ...] = (AROUSAL_GAMMA, VALENCE_ALPHA, OCCIPITAL_BETA_DISTRACTOR)
# The confound scenario's two label rhythms (module docstring).
SUBJECT_HABIT_BETA = PlantedRhythm(
    label="arousal", band="beta", electrodes=("F4", "F8", "FC6", "T8"), follows="subject",
    peak_hz=22.0, bandwidth_hz=2.0, peak_jitter_hz=1.5,
    power_ratio_log10=0.5, log10_power_per_label_unit=0.15,
    trial_sd_log10=0.1, within_trial_sd_log10=0.15, modulation_hz=0.1,
)
# fmt: on
# The other: the planted valence alpha moved to a parietal block, at under half its gain and
# twice its trial-to-trial noise.
PARIETAL_VALENCE_ALPHA = replace(
    VALENCE_ALPHA,
    electrodes=("CP1", "CP2", "P3", "Pz", "P4"),
    log10_power_per_label_unit=0.05,
    trial_sd_log10=0.1,
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
        if self.label not in CLASS_LABELS:
            raise InputError(where, f"label must be one of {CLASS_LABELS}, got {self.label!r}")
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

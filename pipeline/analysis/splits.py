"""Emotion classes and train/validation/test splits over trials (never over frames).

Every split assigns whole trials, so the 63 frames of one trial always land together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import InputError

# Class index = 2 * high_arousal + high_valence.
CLASS_NAMES: tuple[str, ...] = ("LV-LA", "HV-LA", "LV-HA", "HV-HA")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def emotion_classes(labels: np.ndarray, threshold: float = 5.0) -> np.ndarray:
    """Four classes from valence (column 0) and arousal (column 1); "high" means score > threshold."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] < 2:
        raise InputError("labels", f"shape {labels.shape}; expected (n_trials, >=2)")
    high_valence = labels[:, 0] > threshold
    high_arousal = labels[:, 1] > threshold
    return (2 * high_arousal + high_valence).astype(np.int64)


@dataclass(frozen=True)
class Split:
    """Trial indices (rows of the store) of each part, sorted."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    protocol: str  # "trial" or "subject"
    seed: int

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "seed": self.seed,
            "train": self.train.tolist(),
            "val": self.val.tolist(),
            "test": self.test.tolist(),
        }

    @classmethod
    def from_dict(cls, values: dict) -> Split:
        return cls(
            train=np.asarray(values["train"], dtype=np.int64),
            val=np.asarray(values["val"], dtype=np.int64),
            test=np.asarray(values["test"], dtype=np.int64),
            protocol=values["protocol"],
            seed=int(values["seed"]),
        )


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise InputError("fractions", f"{fractions} must be three non-negative numbers summing to 1")


def split_by_trial(
    classes: np.ndarray, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> Split:
    """Random trial split, stratified by class (the paper's 0.8/0.1/0.1 protocol).

    Each class is shuffled and cut by ``fractions`` with largest-remainder rounding, so
    every part gets its share of every class that is large enough to be split.
    """
    _check_fractions(fractions)
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.size < 3:
        raise InputError("classes", f"need at least 3 trials to split, got shape {classes.shape}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for value in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == value))
        n_val = round(fractions[1] * members.size)
        n_test = round(fractions[2] * members.size)
        n_train = members.size - n_val - n_test
        parts[0].extend(members[:n_train])
        parts[1].extend(members[n_train : n_train + n_val])
        parts[2].extend(members[n_train + n_val :])
    train, val, test = (np.sort(np.asarray(p, dtype=np.int64)) for p in parts)
    if train.size == 0 or test.size == 0:
        raise InputError("classes", f"{classes.size} trials are too few for a train/val/test split")
    return Split(train=train, val=val, test=test, protocol="trial", seed=seed)


def split_by_subject(
    subjects: np.ndarray, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> Split:
    """Held-out subjects: every trial of a subject falls in one part."""
    _check_fractions(fractions)
    subjects = np.asarray(subjects)
    unique = np.unique(subjects)
    if unique.size < 3:
        raise InputError("subject", f"a subject split needs at least 3 subjects, got {unique.size}")
    order = np.random.default_rng(seed).permutation(unique)
    n_val = max(1, round(fractions[1] * unique.size))
    n_test = max(1, round(fractions[2] * unique.size))
    n_train = unique.size - n_val - n_test
    groups = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    train, val, test = (np.flatnonzero(np.isin(subjects, g)) for g in groups)
    return Split(train=train, val=val, test=test, protocol="subject", seed=seed)

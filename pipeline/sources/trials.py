"""The one type every reader returns: a file's worth of DEAP-shaped trials."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from pipeline.errors import InputError

# DEAP's EEG channels in the Geneva order of data_preprocessed_python (channels 0-31).
DEAP_CHANNELS: tuple[str, ...] = (
    "Fp1", "AF3", "F3", "F7", "FC5", "FC1", "C3", "T7", "CP5", "CP1", "P3", "P7", "PO3",
    "O1", "Oz", "Pz", "Fp2", "AF4", "Fz", "F4", "F8", "FC6", "FC2", "Cz", "C4", "T8",
    "CP6", "CP2", "P4", "P8", "PO4", "O2",
)  # fmt: skip
LABEL_NAMES: tuple[str, ...] = ("valence", "arousal", "dominance", "liking")
SFREQ = 128.0
N_SAMPLES = 8064  # 63 s at 128 Hz: 3-s pre-trial baseline + 60-s trial
BASELINE_SECONDS = 3.0
LABEL_RANGE = (1.0, 9.0)
SOURCE_KINDS = ("synthetic", "deap-python", "deap-matlab", "raw")


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks so large recordings need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Trials:
    """DEAP-shaped trials from one source file.

    Attributes
    ----------
    signals : float32 array (n_trials, 32, 8064)
        EEG at 128 Hz, channels in ``DEAP_CHANNELS`` order, the first 3 s being the baseline.
    labels : float32 array (n_trials, 4)
        Self-assessment scores in ``LABEL_NAMES`` order, each in [1, 9].
    subject, trial : int32 arrays (n_trials,)
        Subject id and the trial's index within its source file.
    source : str
        Path of the file the trials came from (or a ``synthetic://`` name).
    source_sha256 : str
        SHA-256 of the source file's bytes (of the generated array for synthetic data).
    kind : str
        One of ``SOURCE_KINDS``.

    Construction validates shapes, dtypes, finiteness and label range, and raises
    :class:`~pipeline.errors.InputError` naming ``source`` when something is wrong.
    """

    signals: np.ndarray
    labels: np.ndarray
    subject: np.ndarray
    trial: np.ndarray
    source: str
    source_sha256: str
    kind: str

    def __post_init__(self) -> None:
        where = self.source
        if self.kind not in SOURCE_KINDS:
            raise InputError(where, f"unknown source kind {self.kind!r}; expected one of {SOURCE_KINDS}")
        signals = np.asarray(self.signals)
        if signals.ndim != 3 or signals.shape[1:] != (len(DEAP_CHANNELS), N_SAMPLES):
            raise InputError(
                where,
                f"signals have shape {signals.shape}; expected (n_trials, {len(DEAP_CHANNELS)}, {N_SAMPLES})",
            )
        n_trials = signals.shape[0]
        if n_trials == 0:
            raise InputError(where, "holds no trials")
        labels = np.asarray(self.labels)
        if labels.shape != (n_trials, len(LABEL_NAMES)):
            raise InputError(
                where, f"labels have shape {labels.shape}; expected ({n_trials}, {len(LABEL_NAMES)})"
            )
        for name, values in (("subject", self.subject), ("trial", self.trial)):
            if np.shape(values) != (n_trials,):
                raise InputError(where, f"{name} has shape {np.shape(values)}; expected ({n_trials},)")
        if not np.isfinite(signals).all():
            bad = np.unique(np.nonzero(~np.isfinite(signals))[0])
            raise InputError(where, f"signals contain NaN or Inf in trial(s) {bad.tolist()}")
        if not np.isfinite(labels).all():
            raise InputError(where, "labels contain NaN or Inf")
        low, high = LABEL_RANGE
        outside = (labels < low) | (labels > high)
        if outside.any():
            rows, cols = np.nonzero(outside)
            raise InputError(
                where,
                f"labels outside [{low:g}, {high:g}]: {LABEL_NAMES[cols[0]]} = {labels[rows[0], cols[0]]:g} "
                f"in trial {rows[0]} ({int(outside.sum())} value(s) in all)",
            )
        if len(self.source_sha256) != 64:
            raise InputError(where, "source_sha256 is not a hex SHA-256 digest")
        object.__setattr__(self, "signals", np.ascontiguousarray(signals, dtype=np.float32))
        object.__setattr__(self, "labels", labels.astype(np.float32))
        object.__setattr__(self, "subject", np.asarray(self.subject, dtype=np.int32))
        object.__setattr__(self, "trial", np.asarray(self.trial, dtype=np.int32))

    def __len__(self) -> int:
        return self.signals.shape[0]

    @property
    def ch_names(self) -> tuple[str, ...]:
        return DEAP_CHANNELS

    @property
    def sfreq(self) -> float:
        return SFREQ

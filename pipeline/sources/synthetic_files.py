"""The synthetic DEAP as files: DEAP's own layout, so the real readers run end to end.

:func:`write_synthetic_deap` writes each subject of a spec as ``sXX.dat`` or ``sXX.mat``: the 32
EEG channels :mod:`pipeline.sources.synthetic` generates followed by 8 plausible peripheral
channels, and ``ground_truth.json`` naming the planted effects.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.sources.deap import write_deap_dat, write_deap_mat
from pipeline.sources.synthetic import draw_subject, ground_truth, subject_streams
from pipeline.sources.synthetic_spec import SyntheticDeapSpec
from pipeline.sources.trials import N_SAMPLES, SFREQ

GROUND_TRUTH_FILE = "ground_truth.json"
_FILE_FORMATS = ("dat", "mat")


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
        draw = draw_subject(spec, subject)
        peripherals = _peripheral_signals(subject_streams(spec, subject)[-1], draw.blinks)
        data = np.concatenate([draw.eeg.astype(np.float64), peripherals], axis=1)
        written.append(writer(folder / f"s{subject:02d}.{fmt}", data, draw.labels))
    (folder / GROUND_TRUTH_FILE).write_text(json.dumps(ground_truth(spec), indent=2) + "\n")
    return written

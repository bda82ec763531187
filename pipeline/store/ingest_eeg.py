"""Trials → frames → frame store: the preprocessing stage as plain functions.

The flow in ``flows/deap.py`` maps :func:`ingest_source` over files; a notebook can call the
same functions directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.signal.bands import band_log_power
from pipeline.signal.config import PreprocessConfig
from pipeline.signal.imaging import ImagingOperator, deap_imaging_operator
from pipeline.sources.trials import DEAP_CHANNELS, LABEL_NAMES, Trials
from pipeline.store.frames import FrameStore
from pipeline.store.run_folder import store_path


@dataclass(frozen=True)
class IngestResult:
    """What one source contributed: JSON-small, so it can travel as a Prefect result."""

    source: str
    n_trials: int
    n_written: int

    def to_dict(self) -> dict:
        return {"source": self.source, "n_trials": self.n_trials, "n_written": self.n_written}


def trials_to_frames(
    trials: Trials, config: PreprocessConfig, operator: ImagingOperator | None = None
) -> np.ndarray:
    """Band images of every second of every trial: float32 (n_trials, 63, 3, grid, grid)."""
    operator = operator or deap_imaging_operator(config)
    band_power = band_log_power(trials.signals, config, sfreq=trials.sfreq, where=trials.source)
    return operator.to_frames(band_power, where=trials.source)


def store_attrs(config: PreprocessConfig, data_kind: str, synthetic: dict | None = None) -> dict:
    """The group attributes a new DEAP frame store starts with (all JSON-native).

    ``synthetic`` is the generated data's :meth:`SyntheticDeapSpec.identity` (scenario, seed and
    every setting but the subject count), recorded so that no other synthetic data join it.
    """
    operator = deap_imaging_operator(config)
    extra = {} if synthetic is None else {"synthetic": synthetic}
    return {
        **extra,
        "dataset": "deap",
        "data_kind": data_kind,
        "preprocessing": config.model_dump(mode="json"),
        "band_names": list(config.band_names),
        "band_edges_hz": [list(edge) for edge in config.band_edges_hz],
        "grid": {
            "size": config.grid_size,
            "x": operator.grid_x.tolist(),
            "y": operator.grid_y.tolist(),
            "orientation": "row 0 = front (nose), column 0 = left hemisphere",
            "outside_hull": 0.0,
        },
        "montage": {
            "name": config.montage,
            "ch_names": list(DEAP_CHANNELS),
            "positions_2d": operator.positions_2d.tolist(),
            "electrode_pixels": operator.electrode_pixels.tolist(),
        },
        "label_names": list(LABEL_NAMES),
        "frame_units": "log10 band power (uV^2), not normalised",
        "package_version": __version__,
    }


@dataclass(frozen=True)
class StoreSpec:
    """What a run's store is made of and what may join it: :func:`open_store`'s argument.

    ``config_hash``, ``attrs``, ``frame_shape`` and ``label_width`` are those of
    :meth:`FrameStore.create_or_open`; ``refuse(path)`` raises InputError naming the store at
    ``path`` when it holds data this run's may not join (another kind, source or layout), and
    returns quietly when there is no store yet.
    """

    config_hash: str
    attrs: dict
    frame_shape: tuple[int, ...]
    label_width: int
    refuse: Callable[[str], None]


def open_store(out_dir: str | os.PathLike, spec: StoreSpec) -> FrameStore:
    """Create ``OUT/frames.zarr`` or reopen it for appending data made as ``spec`` says.

    Raises
    ------
    InputError
        Naming the store, when ``spec.refuse`` does, or when the store was built under another
        configuration or frame shape.
    """
    path = store_path(os.fspath(out_dir))
    # Checked before create_or_open, which would overwrite the stored kind with this run's.
    spec.refuse(path)
    return FrameStore.create_or_open(
        path,
        config_hash=spec.config_hash,
        attrs=spec.attrs,
        frame_shape=spec.frame_shape,
        label_width=spec.label_width,
    )


def deap_store_spec(config: PreprocessConfig, data_kind: str, synthetic: dict | None = None) -> StoreSpec:
    """The store of DEAP-shaped trials preprocessed with ``config`` (see :func:`open_store`).

    Synthetic and recorded data never share a store: a report must be able to say which it is.
    Nor do two synthetic data sets: ``synthetic`` (the spec's identity: scenario, seed, settings)
    must match the one the store was made with, so a report describes one scenario.
    """
    return StoreSpec(
        config_hash=config.config_hash(),
        attrs=store_attrs(config, data_kind, synthetic),
        frame_shape=(config.n_windows, len(config.band_names), config.grid_size, config.grid_size),
        label_width=len(LABEL_NAMES),
        refuse=partial(_refuse_other_data, data_kind=data_kind, synthetic=synthetic),
    )


def check_store_accepts(out_dir: str, data_kind: str, synthetic: dict | None = None) -> None:
    """Refuse, naming the store, data that may not join the store in ``out_dir`` (if there is one).

    Data of another kind, or synthetic data of another identity (scenario, seed or settings),
    would make one report describe two data sets.
    """
    _refuse_other_data(store_path(out_dir), data_kind, synthetic)


def _refuse_other_data(path: str, data_kind: str, synthetic: dict | None = None) -> None:
    try:
        stored_attrs = FrameStore.read_attrs(path)
    except InputError:  # no store yet, or not a frame store: create_or_open creates it or says why
        return
    stored_kind = stored_attrs.get("data_kind", data_kind)
    if stored_kind != data_kind:
        raise InputError(
            path, f"holds {stored_kind} data; this run adds {data_kind} data; use a new --out folder"
        )
    stored_synthetic = stored_attrs.get("synthetic")
    if synthetic is not None and stored_synthetic is not None and stored_synthetic != synthetic:
        raise InputError(path, _other_synthetic_data(stored_synthetic, synthetic))


def _other_synthetic_data(stored: dict, asked: dict) -> str:
    def described(identity: dict) -> str:
        return (
            f"the synthetic '{identity.get('scenario', 'planted')}' scenario with seed {identity.get('seed')}"
        )

    if described(stored) == described(asked):
        return (
            f"holds {described(stored)} generated with other settings than this run's; use a new --out folder"
        )
    return f"holds {described(stored)}; this run asks for {described(asked)}; use a new --out folder"


def ingest_trials(store: FrameStore, trials: Trials, config: PreprocessConfig) -> IngestResult:
    """Store the trials of one source that the store does not hold yet; skips all work when none are new."""
    stored = store.stored_keys()
    new = np.array([(trials.source_sha256, int(t)) not in stored for t in trials.trial])
    if not new.any():
        return IngestResult(trials.source, len(trials), 0)
    frames = trials_to_frames(trials, config)[new]
    written = store.add_trials(
        frames=frames,
        labels=trials.labels[new],
        subject=trials.subject[new],
        trial=trials.trial[new],
        source=trials.source,
        source_sha256=trials.source_sha256,
    )
    return IngestResult(trials.source, len(trials), written)

"""New recordings into an existing run, without Prefect: store them, encode them with its models,
refresh its report (or retrain).

Recordings (any format :mod:`pipeline.sources.raw` reads, each with its labels sidecar) join the
frame store of a run folder. Trials are keyed by the recording's content hash, so a file stored
twice, or under two names, is stored once. Then:

- if the folder holds trained models (from ``eegmi deap`` or an earlier retraining), every
  trial not yet encoded is encoded with the β-VAE and the report is written again, with the
  settings recorded in it and without retraining;
- with ``retrain`` the split, the normalisation, the β-VAE and the LSTM are fitted again on
  everything stored, then everything is encoded and reported;
- without models and without ``retrain`` the trials are only stored.

An inbox run (:mod:`pipeline.runs.inbox`) does the same for the recordings that appeared in a
folder since its last run.

Recordings join a store of real data (kinds ``deap-python``, ``deap-matlab``, ``raw``), which
keeps its kind, never a synthetic one; a new store has kind ``raw``. A run killed at any point
is finished by the next one (:mod:`pipeline.store.runlock`). The ``ingest-recordings`` and
``ingest-inbox`` flows wrap :func:`ingest_recordings` and
:func:`pipeline.runs.inbox.ingest_inbox`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.models.checkpoint import checkpoint_exists
from pipeline.models.learn import checkpoint_model_id, seed_latent_set, with_model_seed
from pipeline.models.presets import DeapPreset, deap_preset
from pipeline.runs.deap import LOG, PLAIN_STEPS, DeapSteps, seed_ensemble
from pipeline.runs.preprocess import SourceFilesFailed
from pipeline.signal.config import PreprocessConfig
from pipeline.sources.isolation import read_isolated
from pipeline.sources.raw import read_recording
from pipeline.store.frames import FrameStore
from pipeline.store.ingest_eeg import deap_store_spec, ingest_trials, open_store
from pipeline.store.run_folder import RunFolder, read_json_file
from pipeline.store.runlock import (
    OutputLocationError,
    begin_update,
    finish_update,
    output_errors,
    pending_update,
)

RECORDINGS_KIND = "raw"
REAL_DATA_KINDS = ("deap-python", "deap-matlab", "raw")
# report.json of a paper-sized run is a few hundred kB; anything far larger is not one.
_MAX_REPORT_BYTES = 64 * 1024 * 1024


# The store and the run's settings -------------------------------------------------------------


def recordings_store_kind(out_dir: str | os.PathLike) -> tuple[str, PreprocessConfig]:
    """The data kind and preprocessing config that new recordings are stored under in ``out_dir``.

    Returns
    -------
    kind : str
        The store's own kind when it holds real data; ``"raw"`` when there is no store yet.
    config : PreprocessConfig
        The store's preprocessing config (new trials must match it), or the default.

    Raises
    ------
    InputError
        Naming the store, when it holds synthetic (or any non-recorded) data.
    """
    run = RunFolder(out_dir)
    try:
        attrs = run.open_store().attrs
    except InputError:  # no store yet (or not a frame store, which open_deap_store will say)
        return RECORDINGS_KIND, PreprocessConfig()
    kind = attrs.get("data_kind")
    if kind not in REAL_DATA_KINDS:
        raise InputError(
            run.store_path,
            f"holds {kind} data; recordings join only a store of real data "
            f"({', '.join(REAL_DATA_KINDS)}); use a new --out folder",
        )
    return kind, PreprocessConfig.model_validate(attrs["preprocessing"])


def preset_from_dict(values: dict, where: str = "preset") -> DeapPreset:
    """Rebuild run settings from ``DeapPreset.model_dump(mode="json")`` (as recorded in report.json).

    Raises
    ------
    InputError
        Naming ``where`` when a key is missing or a value is malformed.
    """
    if not isinstance(values, dict):
        raise InputError(where, f"must be a dict of run settings, got {type(values).__name__}")
    try:
        # Settings recorded before protocols and sweeps existed ran one protocol at one β: the
        # defaults of DeapPreset.
        return DeapPreset.model_validate(values)
    except InputError as err:
        raise InputError(where, f"holds invalid settings: {err}") from err


def _run_settings(
    preset: str | DeapPreset | dict | None, seed: int, recorded: dict | None, where: str
) -> DeapPreset:
    """An explicit preset (a name, the settings, or a dict of them) wins; else the recorded
    settings; else ``demo``."""
    if isinstance(preset, DeapPreset):
        return preset
    if isinstance(preset, dict):
        return preset_from_dict(preset)
    if isinstance(preset, str):
        return deap_preset(preset, seed)
    if preset is not None:
        kind = type(preset).__name__
        raise InputError("preset", f"must be a preset name, a settings dict or None, got {kind}")
    if recorded is not None:
        return preset_from_dict(recorded, where)
    return deap_preset("demo", seed)


def previous_report(out_dir: str | os.PathLike) -> dict | None:
    """The run folder's report.json, parsed, or None when there is none yet.

    Raises
    ------
    InputError
        Naming the file when it is too large or not a JSON object.
    """
    path = RunFolder(out_dir).report_json
    if path.is_file() and path.stat().st_size > _MAX_REPORT_BYTES:
        raise InputError(path, "is too large to be a report")
    report = read_json_file(path, "a JSON report")
    if report is not None and not isinstance(report, dict):
        raise InputError(path, "is not a JSON object")
    return report


def _reported_settings(report: dict | None) -> dict | None:
    config = report.get("config") if report else None
    preset = config.get("preset") if isinstance(config, dict) else None
    return preset if isinstance(preset, dict) else None


def recorded_seeds(report: dict | None) -> tuple[int, int | None]:
    """How many model seeds the run's report was made from, and which seed it reported (None: one
    seed, the run's own). Reports written before seed ensembles existed had one."""
    stability = (report or {}).get("stability")
    if not isinstance(stability, dict) or stability.get("n_seeds", 1) == 1:
        return 1, None
    return int(stability["n_seeds"]), int(stability["reported_seed"])


def default_source_path(report: dict | None, fallback: str) -> str:
    source = report.get("source") if report else None
    path = source.get("path") if isinstance(source, dict) else None
    return path if isinstance(path, str) and path else fallback


# Storing recordings --------------------------------------------------------------------------


def store_recording(
    store: FrameStore, path: str, preprocess: PreprocessConfig, interpolate_missing: bool
) -> dict:
    """Read one recording in a child process and store its trials that ``store`` does not hold yet."""
    trials = read_isolated(read_recording, path, interpolate_missing=interpolate_missing)
    result = ingest_trials(store, trials, preprocess)
    return {**result.to_dict(), "source_sha256": trials.source_sha256}


def store_recordings(
    run: RunFolder, recordings: list[str], interpolate_missing: bool = False, log=LOG
) -> dict:
    """Add recordings to the run's frame store one after another; a bad file fails alone.

    Returns
    -------
    dict
        ``stored``: path -> ``{"n_trials", "n_written", ...}`` of each file stored (or already
        stored); ``failures``: path -> why, for each file that could not be read; ``store``.
    """
    data_kind, preprocess = recordings_store_kind(run)
    store = open_store(run.location, deap_store_spec(preprocess, data_kind))
    stored: dict[str, dict] = {}
    failures: dict[str, str] = {}
    for path in recordings:
        try:
            with output_errors(run):
                stored[path] = store_recording(store, path, preprocess, interpolate_missing)
        except InputError as err:
            if isinstance(err, OutputLocationError):
                raise
            failures[path] = err.about(path)
            log.error("%s failed: %s", path, failures[path])
    open_store(run.location, deap_store_spec(preprocess, data_kind)).consolidate()
    return {"store": run.store_path, "stored": stored, "failures": failures}


# Bringing the models and the report up to date ---------------------------------------------------


def _latents_due(run: RunFolder) -> int:
    """How many stored trials the current β-VAE has not encoded yet."""
    store = run.open_store()
    if store.latent_model_id != checkpoint_model_id(run.vae_dir()):
        return len(store.committed_rows())
    return len(store.committed_rows()) - len(store.latent_rows())


def _retrain(
    run: RunFolder, settings: DeapPreset, n_seeds: int, steps: DeapSteps
) -> tuple[int, int | None, list[dict] | None]:
    """Fit split, normalisation, β-VAE(s) and LSTM again; returns the trials encoded and the seed
    reported (with every seed's analysis) of a seed ensemble."""
    begin_update(run, settings.model_dump(mode="json"), "training")
    learn = settings.learn.model_dump(mode="json")
    steps.split_and_normalise(run, learn)
    if n_seeds == 1:
        steps.train_vae(run, learn, False)
        n_encoded = steps.encode(run, learn)["n_encoded"]
        steps.train_lstm(run, learn)
        return n_encoded, None, None
    reference = settings.learn.train.seed
    seeds = list(range(reference, reference + n_seeds))
    analyses, reported_seed, n_encoded = seed_ensemble(
        run, learn, settings.rules.model_dump(mode="json"), seeds, False, steps
    )
    reported_learn = with_model_seed(settings.learn, reported_seed).model_dump(mode="json")
    steps.train_lstm(run, reported_learn, group=seed_latent_set(reported_seed, reference))
    return n_encoded, reported_seed, analyses


def _encode_new(
    run: RunFolder, settings: DeapPreset, n_seeds: int, steps: DeapSteps
) -> tuple[int, list[dict] | None]:
    """Encode the trials not encoded yet with every seed's β-VAE; returns how many the run's own
    model encoded and, for a seed ensemble, every seed's analysis."""
    learn = settings.learn.model_dump(mode="json")
    n_encoded = steps.encode(run, learn)["n_encoded"]
    if n_seeds == 1:
        return n_encoded, None
    reference = settings.learn.train.seed
    seeds = list(range(reference, reference + n_seeds))
    for model_seed in seeds[1:]:
        steps.encode_seed(run, learn, model_seed, reference)
    rules = settings.rules.model_dump(mode="json")
    # The LSTM was trained on the recorded seed's latents: the report stays that seed's.
    return n_encoded, [steps.analyse_seed(run, learn, rules, model_seed, reference) for model_seed in seeds]


def update_models(
    run: RunFolder,
    retrain: bool,
    preset: str | DeapPreset | dict | None,
    seed: int,
    source_path: str,
    note: dict,
    steps: DeapSteps = PLAIN_STEPS,
    log=LOG,
) -> dict:
    """Bring the models, latents and report of ``run`` up to date with its store.

    Finishes first what a killed run left undone (see :func:`pipeline.store.runlock.pending_update`).
    A seed ensemble (``eegmi deap --seeds N``) is encoded with, and retrained as, every seed.

    Returns
    -------
    dict
        ``action``: ``"retrained"``, ``"encoded"`` (new trials encoded, report rewritten),
        ``"unchanged"``, ``"stored only"`` (no models yet) or ``"nothing stored"`` (no store
        yet); ``n_encoded``; ``report_html``.
    """
    if run.n_stored() == 0:
        log.warning("%s holds no trials yet: nothing to train, encode or report", run)
        return {"action": "nothing stored", "n_encoded": 0, "report_html": None}
    pending = pending_update(run)
    report = previous_report(run)
    recorded = pending.settings if pending is not None else _reported_settings(report)
    if pending is not None:
        log.warning("%s: finishing the %s stage a previous run left undone", run, pending.stage)
    n_seeds, reported_seed = recorded_seeds(report)
    if retrain or (pending is not None and pending.stage == "training"):
        settings = _run_settings(preset, seed, recorded, str(run.report_json))
        n_encoded, reported_seed, analyses = _retrain(run, settings, n_seeds, steps)
        begin_update(run, settings.model_dump(mode="json"), "report")
        action = "retrained"
    else:
        if not (
            checkpoint_exists(run.vae_dir(), "best") and checkpoint_exists(run.classifier_dir(), "classifier")
        ):
            log.warning(
                "%s holds no trained models yet: the recordings are stored; rerun with --retrain to train",
                run,
            )
            return {"action": "stored only", "n_encoded": 0, "report_html": None}
        # The models were trained with the recorded settings; a preset given now applies only
        # when none were recorded.
        settings = _run_settings(None if recorded else preset, seed, recorded, str(run.report_json))
        if pending is None and report is not None and _latents_due(run) == 0:
            log.info("%s: every stored trial is encoded and reported; nothing to do", run)
            return {"action": "unchanged", "n_encoded": 0, "report_html": str(run.report_html)}
        begin_update(run, settings.model_dump(mode="json"), "report")
        n_encoded, analyses = _encode_new(run, settings, n_seeds, steps)
        action = "encoded"
    run_config = {
        "preset": settings.model_dump(mode="json"),
        "seed": settings.learn.split_seed,
        "resume": False,
        "synthetic": None,
        "update": {**note, "action": action},
    }
    written = steps.write_report(
        run, settings.model_dump(mode="json"), run_config, source_path, None, reported_seed, analyses
    )
    finish_update(run)
    log.info("%s: %s; %d trial(s) encoded; report %s", run, action, n_encoded, written["report_html"])
    return {"action": action, "n_encoded": n_encoded, "report_html": written["report_html"]}


# The runs --------------------------------------------------------------------------------------

# Stores recordings in a run folder: (run, paths, interpolate_missing) -> what store_recordings returns.
StoreRecordings = Callable[[RunFolder, list[str], bool], dict]


def _check_path_list(values: list[str], name: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise InputError(name, f"must be a list of file paths, got {type(values).__name__}")
    if not all(isinstance(value, str | os.PathLike) for value in values):
        raise InputError(name, "must hold file paths only")
    return [os.path.abspath(os.fspath(value)) for value in values]


@dataclass(frozen=True)
class IngestSettings:
    """How an ingest run stores new recordings and brings the run up to date after them.

    ``retrain``, ``interpolate_missing``, ``preset`` and ``seed`` as for the ``ingest-recordings``
    flow; ``store`` stores the files (by default one after another), ``steps`` are the learning
    steps and ``log`` takes the run's log lines.
    """

    retrain: bool = False
    interpolate_missing: bool = False
    preset: str | DeapPreset | dict | None = None
    seed: int = 0
    store: StoreRecordings = store_recordings
    steps: DeapSteps = PLAIN_STEPS
    log: Any = LOG


PLAIN_INGEST = IngestSettings()


def stored_then_updated(
    run: RunFolder,
    stored: dict,
    settings: IngestSettings,
    source_path: str,
    flow: str,
    recordings: list[str],
    **counts: int,
) -> dict:
    """Update the models (:func:`update_models`) after storing; then name the recordings that failed."""
    n_new = sum(result["n_written"] for result in stored["stored"].values())
    note = {"flow": flow, "recordings": [Path(path).name for path in recordings], "n_trials_new": n_new}
    updated = update_models(
        run, settings.retrain, settings.preset, settings.seed, source_path, note, settings.steps, settings.log
    )
    if stored["failures"]:
        raise SourceFilesFailed(stored["failures"], n_stored_files=len(stored["stored"]))
    return {
        "store": stored["store"],
        "n_recordings": len(recordings),
        **counts,
        "n_trials_new": n_new,
        "n_trials_stored": run.n_stored(),
        **updated,
    }


def ingest_recordings(
    run: RunFolder | str, recordings: list[str], settings: IngestSettings = PLAIN_INGEST
) -> dict:
    """Add ``recordings`` to the run; encode and report with its models, or retrain.

    Raises
    ------
    SourceFilesFailed
        After everything else is done, naming each recording that could not be read.
    """
    run = RunFolder(run)
    paths = _check_path_list(recordings, "recordings")
    recordings_store_kind(run)  # a synthetic run is refused before any work
    report = previous_report(run)
    common = os.path.commonpath([os.path.dirname(path) for path in paths]) if paths else run.store_path
    stored = settings.store(run, paths, settings.interpolate_missing) if paths else nothing_stored(run)
    source_path = default_source_path(report, common)
    return stored_then_updated(run, stored, settings, source_path, "ingest-recordings", paths)


def nothing_stored(run: RunFolder) -> dict:
    return {"store": run.store_path, "stored": {}, "failures": {}}

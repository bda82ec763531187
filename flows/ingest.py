"""New recordings into an existing run: store them, encode them with its model, refresh its report.

``ingest-recordings`` adds recordings (any format :mod:`pipeline.sources.raw` reads, each with
its labels sidecar) to the frame store of a run folder. Trials are keyed by the recording's
content hash, so a file ingested twice, or under two names, is stored once. Then:

- if the folder holds trained models (from ``eegmi deap`` or an earlier ``--retrain``), every
  trial not yet encoded is encoded with the β-VAE and the report is written again, with the
  settings recorded in it and without retraining;
- with ``retrain=True`` the split, the normalisation, the β-VAE and the LSTM are fitted again
  on everything stored, then everything is encoded and reported;
- without models and without ``retrain`` the trials are only stored.

``ingest-inbox`` does the same for the recordings that appeared in a folder since its last run.
It remembers each file it has stored by the SHA-256 of its bytes in ``OUT/inbox.json`` (written
atomically), so every file is picked up once, whatever it is called and however often the flow
runs; a file that fails to read is tried again on the next run.

Recordings join a store of real data (kinds ``deap-python``, ``deap-matlab``, ``raw``), which
keeps its kind, never a synthetic one; a new store has kind ``raw``. Each run holds its run
folder from start to end (:func:`flows.runners.exclusive_run`), and a run killed at any point
is finished by the next one (:mod:`pipeline.runlock`).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.futures import as_completed

from flows.deap import (
    SourceFilesFailed,
    _retry_unless_bad_input,
    analyse_seed_task,
    encode_frames_task,
    encode_seed_task,
    seed_ensemble,
    split_and_normalise,
    train_emotion_lstm,
    train_frame_vae,
    write_deap_report,
)
from flows.runners import cluster_safe, exclusive_run, preprocess_task_runner
from pipeline.checkpoint import atomic_write_bytes, checkpoint_exists
from pipeline.config import PreprocessConfig
from pipeline.errors import InputError
from pipeline.factors import FactorRules
from pipeline.ingest import deap_store_spec, ingest_trials, open_store, store_path
from pipeline.isolation import read_isolated
from pipeline.learn import LearnConfig, checkpoint_model_id, seed_latent_set, with_model_seed
from pipeline.presets import DeapPreset, deap_preset
from pipeline.runlock import OutputLocationError, begin_update, finish_update, output_errors, pending_update
from pipeline.sources.raw import read_recording, recording_suffix
from pipeline.sources.trials import file_sha256
from pipeline.store import FrameStore

RECORDINGS_KIND = "raw"
REAL_DATA_KINDS = ("deap-python", "deap-matlab", "raw")
INBOX_LEDGER_NAME = "inbox.json"
LEDGER_FORMAT = "eegmi-inbox/1"
REPORT_JSON_NAME = "report.json"
# report.json of a paper-sized run is a few hundred kB; anything far larger is not one.
_MAX_REPORT_BYTES = 64 * 1024 * 1024


def recordings_store_kind(out_dir: str) -> tuple[str, PreprocessConfig]:
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
    path = store_path(out_dir)
    try:
        attrs = FrameStore.open(path).attrs
    except InputError:  # no store yet (or not a frame store, which open_store will say)
        return RECORDINGS_KIND, PreprocessConfig()
    kind = attrs.get("data_kind")
    if kind not in REAL_DATA_KINDS:
        raise InputError(
            path,
            f"holds {kind} data; recordings join only a store of real data "
            f"({', '.join(REAL_DATA_KINDS)}); use a new --out folder",
        )
    return kind, PreprocessConfig.from_dict(attrs["preprocessing"])


def preset_from_dict(values: dict, where: str = "preset") -> DeapPreset:
    """Rebuild run settings from ``DeapPreset.to_dict()`` output (as recorded in report.json).

    Raises
    ------
    InputError
        Naming ``where`` when a key is missing or a value is malformed.
    """
    if not isinstance(values, dict):
        raise InputError(where, f"must be a dict of run settings, got {type(values).__name__}")
    try:
        return DeapPreset(
            name=str(values["name"]),
            synthetic_subjects=int(values["synthetic_subjects"]),
            learn=LearnConfig.from_dict(values["learn"]),
            rules=FactorRules(**values["rules"]),
            # Settings recorded before these existed ran one protocol at one β.
            protocol=str(values.get("protocol", "trial")),
            betas=tuple(values.get("betas", ())),
        )
    except InputError as err:
        raise InputError(where, f"holds invalid settings: {err}") from err
    except (KeyError, TypeError, ValueError) as err:
        problem = f"is not a complete set of run settings ({type(err).__name__}: {err})"
        raise InputError(where, problem) from err


def _run_settings(preset: str | dict | None, seed: int, recorded: dict | None, where: str) -> DeapPreset:
    """An explicit preset (a name or a dict) wins; else the recorded settings; else ``demo``."""
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


def previous_report(out_dir: str) -> dict | None:
    """The run folder's report.json, parsed, or None when there is none yet.

    Raises
    ------
    InputError
        Naming the file when it is too large or not a JSON object.
    """
    path = Path(out_dir) / REPORT_JSON_NAME
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_REPORT_BYTES:
        raise InputError(path, "is too large to be a report")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # nested too deep
        raise InputError(path, f"is not a JSON report ({err})") from err
    if not isinstance(report, dict):
        raise InputError(path, "is not a JSON object")
    return report


def _reported_settings(report: dict | None) -> dict | None:
    config = report.get("config") if report else None
    preset = config.get("preset") if isinstance(config, dict) else None
    return preset if isinstance(preset, dict) else None


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_unless_bad_input)
def store_recording(path: str, out_dir: str, config: dict, data_kind: str, interpolate_missing: bool) -> dict:
    preprocess = PreprocessConfig.from_dict(config)
    with output_errors(out_dir):
        trials = read_isolated(read_recording, path, interpolate_missing=interpolate_missing)
        store = cluster_safe(open_store(out_dir, deap_store_spec(preprocess, data_kind)))
        result = ingest_trials(store, trials, preprocess)
    return {**result.to_dict(), "source_sha256": trials.source_sha256}


@flow(name="store-recordings")
def store_recordings(recordings: list[str], out_dir: str, interpolate_missing: bool = False) -> dict:
    """Add recordings to ``OUT/frames.zarr``, one task per file; a bad file fails alone.

    Returns
    -------
    dict
        ``stored``: path -> ``{"n_trials", "n_written", ...}`` of each file stored (or already
        stored); ``failures``: path -> why, for each file that could not be read; ``store``.

    Raises
    ------
    OutputLocationError
        When the run folder refuses the writes (full, read-only): no file can succeed then.
    """
    logger = get_run_logger()
    data_kind, preprocess = recordings_store_kind(out_dir)
    config = preprocess.to_dict()
    # Created once here so that parallel tasks only ever open an existing group.
    open_store(out_dir, deap_store_spec(preprocess, data_kind))
    futures = store_recording.map(recordings, out_dir, unmapped(config), data_kind, interpolate_missing)
    name_of = {future.task_run_id: path for future, path in zip(futures, recordings, strict=True)}
    stored: dict[str, dict] = {}
    failures: dict[str, str] = {}
    output_error: OutputLocationError | None = None
    for done, future in enumerate(as_completed(futures), start=1):
        path = name_of[future.task_run_id]
        future.wait()  # as_completed can yield before the future's final state is recorded
        if future.state.is_completed():
            stored[path] = future.result()
            logger.info(
                "[%d/%d] %s: %d trial(s), %d newly stored",
                done, len(futures), path, stored[path]["n_trials"], stored[path]["n_written"],
            )  # fmt: skip
            continue
        error = future.state.result(raise_on_failure=False)
        if isinstance(error, OutputLocationError):
            output_error = error
        failures[path] = error.about(path) if isinstance(error, InputError) else str(error)
        logger.error("[%d/%d] %s failed: %s", done, len(futures), path, failures[path])
    if output_error is not None:
        raise output_error
    store = open_store(out_dir, deap_store_spec(preprocess, data_kind))
    store.consolidate()
    return {"store": store_path(out_dir), "stored": stored, "failures": failures}


def _latents_due(out_dir: str, vae_dir: Path) -> int:
    """How many stored trials the current β-VAE has not encoded yet."""
    store = FrameStore.open(store_path(out_dir))
    if store.latent_model_id != checkpoint_model_id(vae_dir):
        return len(store.committed_rows())
    return len(store.committed_rows()) - len(store.latent_rows())


def recorded_seeds(report: dict | None) -> tuple[int, int | None]:
    """How many model seeds the run's report was made from, and which seed it reported (None: one
    seed, the run's own). Reports written before seed ensembles existed had one."""
    stability = (report or {}).get("stability")
    if not isinstance(stability, dict) or stability.get("n_seeds", 1) == 1:
        return 1, None
    return int(stability["n_seeds"]), int(stability["reported_seed"])


def update_models(
    out_dir: str, retrain: bool, preset: str | dict | None, seed: int, source_path: str, note: dict
) -> dict:
    """Bring the models, latents and report of ``out_dir`` up to date with its store (inside a flow).

    Finishes first what a killed run left undone (see :func:`pipeline.runlock.pending_update`).

    Returns
    -------
    dict
        ``action``: ``"retrained"``, ``"encoded"`` (new trials encoded, report rewritten),
        ``"unchanged"``, ``"stored only"`` (no models yet) or ``"nothing stored"`` (no store
        yet); ``n_encoded``; ``report_html``.
    """
    logger = get_run_logger()
    if _n_stored(out_dir) == 0:
        logger.warning("%s holds no trials yet: nothing to train, encode or report", out_dir)
        return {"action": "nothing stored", "n_encoded": 0, "report_html": None}
    checkpoints = Path(out_dir) / "checkpoints"
    vae_dir = checkpoints / "vae"
    pending = pending_update(out_dir)
    report = previous_report(out_dir)
    recorded = pending.settings if pending is not None else _reported_settings(report)
    report_where = str(Path(out_dir) / REPORT_JSON_NAME)
    if pending is not None:
        logger.warning("%s: finishing the %s stage a previous run left undone", out_dir, pending.stage)

    # A seed ensemble (``eegmi deap --seeds N``) is encoded with, and retrained as, every seed.
    n_seeds, reported_seed = recorded_seeds(report)
    seed_analyses = None
    if retrain or (pending is not None and pending.stage == "training"):
        settings = _run_settings(preset, seed, recorded, report_where)
        begin_update(out_dir, settings.to_dict(), "training")
        learn = settings.learn.to_dict()
        split_and_normalise(out_dir, learn)
        if n_seeds == 1:
            train_frame_vae(out_dir, learn, False)
            n_encoded = encode_frames_task(out_dir, learn)["n_encoded"]
            train_emotion_lstm(out_dir, learn)
        else:
            reference = settings.learn.train.seed
            seeds = list(range(reference, reference + n_seeds))
            seed_analyses, reported_seed, n_encoded = seed_ensemble(
                out_dir, learn, settings.rules.to_dict(), seeds, False
            )
            train_emotion_lstm(
                out_dir,
                with_model_seed(settings.learn, reported_seed).to_dict(),
                group=seed_latent_set(reported_seed, reference),
            )
        action = "retrained"
    else:
        if not (checkpoint_exists(vae_dir, "best") and checkpoint_exists(checkpoints, "classifier")):
            logger.warning(
                "%s holds no trained models yet: the recordings are stored; rerun with --retrain to train",
                out_dir,
            )
            return {"action": "stored only", "n_encoded": 0, "report_html": None}
        # The models were trained with the recorded settings; a preset given now applies only
        # when none were recorded.
        settings = _run_settings(None if recorded else preset, seed, recorded, report_where)
        if pending is None and report is not None and _latents_due(out_dir, vae_dir) == 0:
            logger.info("%s: every stored trial is encoded and reported; nothing to do", out_dir)
            return {"action": "unchanged", "n_encoded": 0, "report_html": str(Path(out_dir) / "report.html")}
        learn = settings.learn.to_dict()
        action = "encoded"
    begin_update(out_dir, settings.to_dict(), "report")
    if action == "encoded":
        n_encoded = encode_frames_task(out_dir, learn)["n_encoded"]
        if n_seeds > 1:
            reference = settings.learn.train.seed
            seeds = list(range(reference, reference + n_seeds))
            for model_seed in seeds[1:]:
                encode_seed_task(out_dir, learn, model_seed, reference)
            rules = settings.rules.to_dict()
            # The LSTM was trained on the recorded seed's latents: the report stays that seed's.
            seed_analyses = [
                analyse_seed_task(out_dir, learn, rules, model_seed, reference) for model_seed in seeds
            ]
    run_config = {
        "preset": settings.to_dict(),
        "seed": settings.learn.split_seed,
        "resume": False,
        "synthetic": None,
        "update": {**note, "action": action},
    }
    written = write_deap_report(
        out_dir, settings.to_dict(), run_config, source_path, None, reported_seed, seed_analyses
    )
    finish_update(out_dir)
    logger.info("%s: %s; %d trial(s) encoded; report %s", out_dir, action, n_encoded, written["report_html"])
    return {"action": action, "n_encoded": n_encoded, "report_html": written["report_html"]}


def _check_path_list(values: list[str], name: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise InputError(name, f"must be a list of file paths, got {type(values).__name__}")
    if not all(isinstance(value, str | os.PathLike) for value in values):
        raise InputError(name, "must hold file paths only")
    return [os.path.abspath(os.fspath(value)) for value in values]


def _default_source_path(report: dict | None, fallback: str) -> str:
    source = report.get("source") if report else None
    path = source.get("path") if isinstance(source, dict) else None
    return path if isinstance(path, str) and path else fallback


@flow(name="ingest-recordings")
@exclusive_run(local_only=True)
def ingest_recordings(
    recordings: list[str],
    out_dir: str,
    retrain: bool = False,
    interpolate_missing: bool = False,
    preset: str | dict | None = None,
    seed: int = 0,
    dask_address: str | None = None,
    dask_workers: int | None = None,
) -> dict:
    """Add recordings to the run in ``out_dir``; encode and report with its models, or retrain.

    Parameters
    ----------
    recordings : list of str
        Recording files (``.bdf``, ``.edf``, ``.fif``, ``.fif.gz``, ``.set``, ``.vhdr``), each
        with its ``<stem>_labels.csv`` beside it. May be empty (e.g. to retrain only).
    out_dir : str
        The run folder (local); its store is ``OUT/frames.zarr``.
    retrain : bool
        Fit split, normalisation, β-VAE and LSTM again on everything stored.
    interpolate_missing : bool
        Interpolate up to 8 missing DEAP channels instead of refusing the recording.
    preset : str or dict, optional
        Settings for a retraining (``"demo"``, ``"paper"`` or a preset dict); by default the
        ones recorded in the run's report. Without ``retrain`` the recorded ones are used.
    seed : int
        Seed for a named preset.
    dask_address, dask_workers : optional
        Read and store the recordings on a Dask cluster (see :mod:`flows.runners`).

    Returns
    -------
    dict
        ``store``, ``n_recordings``, ``n_trials_new``, ``n_trials_stored``, ``action``,
        ``n_encoded``, ``report_html``.

    Raises
    ------
    SourceFilesFailed
        After everything else is done, naming each recording that could not be read.
    """
    paths = _check_path_list(recordings, "recordings")
    recordings_store_kind(out_dir)  # a synthetic run is refused before any work
    report = previous_report(out_dir)
    common = os.path.commonpath([os.path.dirname(path) for path in paths]) if paths else store_path(out_dir)
    stored = {"store": store_path(out_dir), "stored": {}, "failures": {}}
    if paths:
        runner = preprocess_task_runner(dask_address, dask_workers)
        storing = store_recordings.with_options(task_runner=runner)
        stored = storing(recordings=paths, out_dir=out_dir, interpolate_missing=interpolate_missing)
    n_new = sum(result["n_written"] for result in stored["stored"].values())
    update = update_models(
        out_dir,
        retrain,
        preset,
        seed,
        _default_source_path(report, common),
        {"flow": "ingest-recordings", "recordings": [Path(p).name for p in paths], "n_trials_new": n_new},
    )
    if stored["failures"]:
        raise SourceFilesFailed(stored["failures"], n_stored_files=len(stored["stored"]))
    return {
        "store": stored["store"],
        "n_recordings": len(paths),
        "n_trials_new": n_new,
        "n_trials_stored": _n_stored(out_dir),
        **update,
    }


def _is_utf8(text: str) -> bool:
    """Whether a name read from the file system decodes as UTF-8 (no surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inbox_recordings(inbox_dir: str | os.PathLike, settle_seconds: float = 0.0) -> list[Path]:
    """Recording files directly in ``inbox_dir``, sorted by name, leaving hidden and unsettled files.

    A file still being copied must not be read half-written: copy into the inbox under a hidden
    name (``.s01.bdf``) and rename it, or let ``settle_seconds`` pass after its last change.

    Raises
    ------
    InputError
        When ``inbox_dir`` is not a folder or ``settle_seconds`` is negative.
    """
    folder = Path(inbox_dir)
    if not folder.is_dir():
        raise InputError(folder, "inbox folder does not exist")
    if not isinstance(settle_seconds, int | float) or settle_seconds < 0:
        raise InputError("settle_seconds", f"must be a number >= 0, got {settle_seconds!r}")
    now = time.time()
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if not _is_utf8(entry.name):  # Prefect passes names as JSON, which only holds Unicode
            warnings.warn(
                f"{os.fsencode(entry)!r}: skipped: the file name is not valid UTF-8; rename it", stacklevel=2
            )
            continue
        try:
            recording_suffix(entry)
        except InputError:  # sidecars, BrainVision .eeg/.vmrk, EEGLAB .fdt and anything else
            continue
        if now - entry.stat().st_mtime >= settle_seconds:
            found.append(entry)
    return found


def read_ledger(out_dir: str) -> dict[str, dict]:
    """The inbox files already stored in ``out_dir``: SHA-256 of the file -> what was stored.

    Raises
    ------
    InputError
        Naming the ledger when it is not one.
    """
    path = Path(out_dir) / INBOX_LEDGER_NAME
    if not path.is_file():
        return {}
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # nested too deep
        raise InputError(path, f"is not an inbox ledger ({err})") from err
    if (
        not isinstance(ledger, dict)
        or ledger.get("format") != LEDGER_FORMAT
        or not isinstance(ledger.get("files"), dict)
    ):
        raise InputError(path, f"is not an inbox ledger (format {LEDGER_FORMAT})")
    return ledger["files"]


def write_ledger(out_dir: str, files: dict[str, dict]) -> None:
    """Replace the ledger atomically: a kill leaves the old one or the new one."""
    payload = json.dumps({"format": LEDGER_FORMAT, "files": files}, indent=1, sort_keys=True)
    with output_errors(out_dir):
        atomic_write_bytes(Path(out_dir) / INBOX_LEDGER_NAME, payload.encode())


@flow(name="ingest-inbox")
@exclusive_run(local_only=True)
def ingest_inbox(
    inbox_dir: str,
    out_dir: str,
    retrain: bool = False,
    interpolate_missing: bool = False,
    settle_seconds: float = 0.0,
    preset: str | dict | None = None,
    seed: int = 0,
    dask_address: str | None = None,
    dask_workers: int | None = None,
) -> dict:
    """Store the inbox's new recordings in ``out_dir``, then encode and report (or retrain).

    Each file is recognised by the SHA-256 of its bytes and stored once; the ledger
    ``OUT/inbox.json`` gains a file only after its trials are committed, so a killed run picks
    it up again (the store skips what it already holds). Parameters as for
    :func:`ingest_recordings`, plus ``inbox_dir`` (the folder watched) and ``settle_seconds``
    (leave files changed more recently than this for the next run).

    Returns
    -------
    dict
        As :func:`ingest_recordings`, plus ``n_skipped`` (files stored by earlier runs).
    """
    logger = get_run_logger()
    inbox = os.path.abspath(os.fspath(inbox_dir))
    recordings_store_kind(out_dir)  # a synthetic run is refused before any work
    ledger = read_ledger(out_dir)
    candidates = inbox_recordings(inbox, settle_seconds)
    # A file seen before with the same name, size and modification time is not hashed again.
    known = {
        (entry.get("name"), entry.get("size"), entry.get("mtime_ns")): sha for sha, entry in ledger.items()
    }
    digests = {}
    for path in candidates:
        status = path.stat()
        digests[str(path)] = known.get((path.name, status.st_size, status.st_mtime_ns)) or file_sha256(path)
    new = [path for path, digest in digests.items() if digest not in ledger]
    logger.info("%s: %d new recording(s), %d already stored", inbox, len(new), len(candidates) - len(new))
    stored = {"store": store_path(out_dir), "stored": {}, "failures": {}}
    if new:
        runner = preprocess_task_runner(dask_address, dask_workers)
        storing = store_recordings.with_options(task_runner=runner)
        stored = storing(recordings=new, out_dir=out_dir, interpolate_missing=interpolate_missing)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for path, result in stored["stored"].items():
            status = Path(path).stat()
            ledger[digests[path]] = {
                "name": Path(path).name,
                "size": status.st_size,
                "mtime_ns": status.st_mtime_ns,
                "stored": now,
                "n_trials": result["n_trials"],
            }
        write_ledger(out_dir, ledger)
    n_new = sum(result["n_written"] for result in stored["stored"].values())
    update = update_models(
        out_dir,
        retrain,
        preset,
        seed,
        _default_source_path(previous_report(out_dir), inbox),
        {"flow": "ingest-inbox", "recordings": [Path(path).name for path in new], "n_trials_new": n_new},
    )
    if stored["failures"]:
        raise SourceFilesFailed(stored["failures"], n_stored_files=len(stored["stored"]))
    return {
        "store": stored["store"],
        "n_recordings": len(new),
        "n_skipped": len(candidates) - len(new),
        "n_trials_new": n_new,
        "n_trials_stored": _n_stored(out_dir),
        **update,
    }


def _n_stored(out_dir: str) -> int:
    try:
        return len(FrameStore.open(store_path(out_dir)).committed_rows())
    except InputError:  # nothing stored yet
        return 0

"""New recordings into an existing run: the runs of :mod:`pipeline.runs.recordings` as Prefect flows.

``ingest-recordings`` adds recordings (each with its labels sidecar) to a run folder's frame
store, then encodes them with its models and refreshes its report, or retrains
(:func:`pipeline.runs.recordings.ingest_recordings`). ``ingest-inbox`` does the same for the
recordings that appeared in a folder since its last run. The recordings are stored one task per
file (on threads or a Dask cluster); each learning step is a task. Each run holds its run folder
from start to end (:func:`flows.runners.exclusive_run`), and a run killed at any point is
finished by the next one (:mod:`pipeline.store.runlock`).
"""

from prefect import flow, get_run_logger, task, unmapped
from prefect.task_runners import TaskRunner

from flows.deap import TASK_STEPS, _retry_unless_bad_input
from flows.runners import cluster_safe, collect_mapped, exclusive_run, preprocess_task_runner
from pipeline.models.presets import DeapPreset
from pipeline.runs import inbox as inbox_run
from pipeline.runs import recordings as recordings_run
from pipeline.runs.recordings import IngestSettings, recordings_store_kind
from pipeline.signal.config import PreprocessConfig
from pipeline.store.ingest_eeg import deap_store_spec, open_store
from pipeline.store.run_folder import RunFolder
from pipeline.store.runlock import output_errors


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_unless_bad_input)
def store_recording(path: str, out_dir: str, config: dict, data_kind: str, interpolate_missing: bool) -> dict:
    preprocess = PreprocessConfig.model_validate(config)
    with output_errors(out_dir):
        store = cluster_safe(open_store(out_dir, deap_store_spec(preprocess, data_kind)))
        return recordings_run.store_recording(store, path, preprocess, interpolate_missing)


@flow(name="store-recordings")
def store_recordings(recordings: list[str], out_dir: str, interpolate_missing: bool = False) -> dict:
    """Add recordings to the run folder's frame store, one task per file; a bad file fails alone.

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
    data_kind, preprocess = recordings_store_kind(out_dir)
    config = preprocess.model_dump(mode="json")
    # Created once here so that parallel tasks only ever open an existing group.
    open_store(out_dir, deap_store_spec(preprocess, data_kind))
    futures = store_recording.map(recordings, out_dir, unmapped(config), data_kind, interpolate_missing)
    stored, failures = collect_mapped(futures, recordings, recordings, get_run_logger())
    open_store(out_dir, deap_store_spec(preprocess, data_kind)).consolidate()
    return {"store": RunFolder(out_dir).store_path, "stored": stored, "failures": failures}


def _store_flow_on(runner: TaskRunner) -> recordings_run.StoreRecordings:
    """The ``store-recordings`` flow as a run's storing step, its tasks on ``runner``."""

    def store(run: RunFolder, paths: list[str], interpolate_missing: bool) -> dict:
        storing = store_recordings.with_options(task_runner=runner)
        return storing(recordings=paths, out_dir=run.location, interpolate_missing=interpolate_missing)

    return store


@flow(name="ingest-recordings")
@exclusive_run(local_only=True)
def ingest_recordings(
    recordings: list[str],
    out_dir: str,
    retrain: bool = False,
    interpolate_missing: bool = False,
    preset: str | DeapPreset | None = None,
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
    preset : str or DeapPreset, optional
        Settings for a retraining (``"demo"``, ``"paper"``, or the settings themselves; a dict of
        their fields, as deployments pass it, is validated into a ``DeapPreset``); by default
        the ones recorded in the run's report. Without ``retrain`` the recorded ones are used.
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
    store = _store_flow_on(preprocess_task_runner(dask_address, dask_workers))
    settings = IngestSettings(
        retrain, interpolate_missing, preset, seed, store=store, steps=TASK_STEPS, log=get_run_logger()
    )
    return recordings_run.ingest_recordings(out_dir, recordings, settings)


@flow(name="ingest-inbox")
@exclusive_run(local_only=True)
def ingest_inbox(
    inbox_dir: str,
    out_dir: str,
    retrain: bool = False,
    interpolate_missing: bool = False,
    settle_seconds: float = 0.0,
    preset: str | DeapPreset | None = None,
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
    store = _store_flow_on(preprocess_task_runner(dask_address, dask_workers))
    settings = IngestSettings(
        retrain, interpolate_missing, preset, seed, store=store, steps=TASK_STEPS, log=get_run_logger()
    )
    return inbox_run.ingest_inbox(out_dir, inbox_dir, settle_seconds, settings)

"""A run folder that refuses writes during preprocessing or training ends the run with exit 2 and
one line naming the folder: not retried, never blamed on an input file, no traceback in the run's
log, the store left readable."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from test_failure_safety import _cli_error_lines

from pipeline.sources.deap import write_deap_dat
from pipeline.sources.trials import N_SAMPLES
from pipeline.store.frames import FrameStore
from pipeline.store.ingest_eeg import ingest_trials
from pipeline.store.run_folder import store_path


def _disk_full_for_chunks(monkeypatch, out_dir: Path) -> None:
    """Writes of array chunks under ``out_dir`` fail as on a disk that filled up during the run
    (opening the store and its metadata still succeed)."""
    import zarr.storage._local as local_store

    original = local_store._put

    def no_space(path, value, exclusive=False):
        # Chunk keys: c/<i>/... for the row arrays, one file c.<row>.0.0.0.0 per trial for frames.
        is_chunk = "/c/" in str(path) or Path(path).name.startswith("c.")
        if Path(out_dir) in Path(path).parents and is_chunk:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(path, value, exclusive)

    monkeypatch.setattr(local_store, "_put", no_space)


@contextmanager
def run_logs() -> Iterator[list[str]]:
    """The flow- and task-run log records, formatted as a console shows them (with any traceback)."""
    logged: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(logging.Formatter().format(record))

    collect = Collect()
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    for logger in loggers:
        logger.addHandler(collect)
    try:
        yield logged
    finally:
        for logger in loggers:
            logger.removeHandler(collect)


def _deap_folder(folder, names):
    rng = np.random.default_rng(5)
    for name in names:
        data = rng.normal(0.0, 20.0, size=(2, 40, N_SAMPLES))
        write_deap_dat(folder / name, data, np.full((2, 4), 5.0))
    return folder


def test_a_full_disk_during_preprocessing_is_the_folders_error_not_the_files(
    prefect_harness, tmp_path, monkeypatch, capsys
):
    import flows.deap
    from flows.cli import EXIT_BAD_INPUT, main

    out_dir = tmp_path / "run"
    first = _deap_folder(tmp_path / "first", ["s01.dat"])
    assert main(["preprocess", "--data-dir", str(first), "--out", str(out_dir)]) == 0
    before = FrameStore.open(store_path(str(out_dir)))
    frames_before = before.read_frames(before.committed_rows())
    capsys.readouterr()

    second = _deap_folder(tmp_path / "second", ["s02.dat", "s03.dat"])
    attempts = []

    def counted(*args, **kwargs):
        attempts.append(args[1].source)
        return ingest_trials(*args, **kwargs)

    with monkeypatch.context() as patch:
        _disk_full_for_chunks(patch, out_dir)
        patch.setattr(flows.deap, "ingest_trials", counted)
        with run_logs() as logged:
            code = main(["preprocess", "--data-dir", str(second), "--out", str(out_dir)])
    assert code == EXIT_BAD_INPUT
    assert [record for record in logged if "Traceback" in record] == []
    lines = _cli_error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"eegmi: error: {out_dir}: cannot write the run's output: No space left")
    assert "s02.dat" not in lines[0] and "s03.dat" not in lines[0]
    assert sorted(Path(source).name for source in attempts) == ["s02.dat", "s03.dat"]  # not retried
    after = FrameStore.open(store_path(str(out_dir)))
    np.testing.assert_array_equal(after.read_frames(after.committed_rows()), frames_before)


@pytest.mark.parametrize("refusal", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_during_training_is_the_folders_error_and_not_retried(
    prefect_harness, tmp_path, monkeypatch, capsys, refusal
):
    """``eegmi deap``: the frames are stored, then the disk fills (or is remounted read-only) as
    the β-VAE writes its first checkpoint; the write carries no file name, as a failed write()."""
    from small_deap_run import N_SUBJECTS, TRIALS_PER_SUBJECT, tiny_preset

    import pipeline.models.checkpoint
    import pipeline.runs.deap
    import pipeline.runs.preprocess
    from flows.cli import EXIT_BAD_INPUT, main
    from pipeline.sources.synthetic_spec import scenario_spec

    out_dir = tmp_path / "run"
    monkeypatch.setattr(pipeline.runs.deap, "deap_preset", tiny_preset)
    monkeypatch.setattr(
        pipeline.runs.preprocess, "scenario_spec", partial(scenario_spec, n_trials=TRIALS_PER_SUBJECT)
    )
    monkeypatch.setattr("flows.cli.configure_threads", lambda args: None)  # keep the test's threads
    write = pipeline.models.checkpoint.atomic_write_bytes
    checkpoint_writes = []

    def disk_fills(path, data):
        if out_dir / "checkpoints" in Path(path).parents:
            checkpoint_writes.append(Path(path).name)
            raise OSError(refusal, os.strerror(refusal))
        return write(path, data)

    monkeypatch.setattr(pipeline.models.checkpoint, "atomic_write_bytes", disk_fills)
    trainings = []
    train = pipeline.runs.deap.train_store_vae

    def counted(*args, **kwargs):
        trainings.append(1)
        return train(*args, **kwargs)

    monkeypatch.setattr(pipeline.runs.deap, "train_store_vae", counted)
    with run_logs() as logged:
        code = main(["deap", "--subjects", str(N_SUBJECTS), "--out", str(out_dir)])
    assert code == EXIT_BAD_INPUT
    assert [record for record in logged if "Traceback" in record] == []
    failed_task = f"Task run failed with exception: OSError({refusal}, '{os.strerror(refusal)}')"
    assert any(failed_task in record for record in logged)
    lines = _cli_error_lines(capsys.readouterr().err)
    assert lines == [
        f"eegmi: error: {out_dir}: cannot write the run's output: {os.strerror(refusal)}. Everything "
        "stored before is intact and readable; free space or fix the permissions, then rerun"
    ]
    assert len(trainings) == 1 and len(checkpoint_writes) == 1  # not retried
    store = FrameStore.open(store_path(str(out_dir)))
    rows = store.committed_rows()
    assert len(rows) == N_SUBJECTS * TRIALS_PER_SUBJECT
    assert np.isfinite(store.read_frames(rows)).all()
    assert not list((out_dir / "checkpoints").rglob("*.safetensors"))

"""A run folder that refuses writes during preprocessing ends the run with exit 2 and one line
naming the folder: not retried, never blamed on an input file, the store left readable."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
from test_failure_safety import _cli_error_lines

from pipeline.ingest import ingest_trials, store_path
from pipeline.sources.deap import write_deap_dat
from pipeline.sources.trials import N_SAMPLES
from pipeline.store import FrameStore


def _disk_full_for_chunks(monkeypatch, out_dir: Path) -> None:
    """Writes of array chunks under ``out_dir`` fail as on a disk that filled up during the run
    (opening the store and its metadata still succeed)."""
    import zarr.storage._local as local_store

    original = local_store._put

    def no_space(path, value, exclusive=False):
        if Path(out_dir) in Path(path).parents and "/c/" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(path, value, exclusive)

    monkeypatch.setattr(local_store, "_put", no_space)


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
        code = main(["preprocess", "--data-dir", str(second), "--out", str(out_dir)])
    assert code == EXIT_BAD_INPUT
    lines = _cli_error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"eegmi: error: {out_dir}: cannot write the run's output: No space left")
    assert "s02.dat" not in lines[0] and "s03.dat" not in lines[0]
    assert sorted(Path(source).name for source in attempts) == ["s02.dat", "s03.dat"]  # not retried
    after = FrameStore.open(store_path(str(out_dir)))
    np.testing.assert_array_equal(after.read_frames(after.committed_rows()), frames_before)

"""The DEAP preprocess flow: a folder of .dat files → OUT/frames.zarr, bad files named, re-runs idempotent,
a killed run resumed to the uninterrupted result."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import __version__
from pipeline.errors import InputError
from pipeline.signal.config import PreprocessConfig
from pipeline.signal.imaging import deap_imaging_operator
from pipeline.sources.deap import read_deap_dat
from pipeline.sources.synthetic_files import write_synthetic_deap
from pipeline.sources.synthetic_spec import SyntheticDeapSpec
from pipeline.sources.trials import DEAP_CHANNELS, N_SAMPLES, file_sha256
from pipeline.store.frames import FrameStore
from pipeline.store.ingest_eeg import trials_to_frames
from pipeline.store.run_folder import store_path

N_TRIALS = 2
N_POOL_SUBJECTS = 4


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[int, Path]:
    """Synthetic DEAP subject files (s01..s04.dat, 2 trials each) that tests copy into their folders."""
    folder = tmp_path_factory.mktemp("deap-pool")
    spec = SyntheticDeapSpec(n_subjects=N_POOL_SUBJECTS, n_trials=N_TRIALS, seed=11)
    return {number: path for number, path in enumerate(write_synthetic_deap(spec, folder), start=1)}


def _data_folder(tmp_path: Path, pool: dict[int, Path], subjects: list[int]) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for subject in subjects:
        shutil.copyfile(pool[subject], folder / pool[subject].name)
    return folder


def _stored_by_key(store: FrameStore) -> dict[tuple[str, int], int]:
    """Committed row of every (source sha256, trial)."""
    return {
        (str(sha), int(trial)): int(row)
        for sha, trial, row in zip(store.source_sha256, store.trial, store.committed_rows(), strict=True)
    }


def _assert_store_holds_exactly(store: FrameStore, files: list[Path]) -> None:
    """Every trial of ``files`` once, with frames, labels and provenance equal to the readers' output.

    Bitwise: the flow ran the same reader and preprocessing code in this process, on the same shapes.
    """
    config = PreprocessConfig()
    rows = _stored_by_key(store)
    position_of_row = {int(row): position for position, row in enumerate(store.committed_rows())}
    labels, subjects, sources = store.labels, store.subject, store.source
    expected_keys = set()
    for path in files:
        trials = read_deap_dat(path)
        assert trials.source_sha256 == file_sha256(path)
        frames = trials_to_frames(trials, config)
        for index, trial in enumerate(trials.trial):
            key = (trials.source_sha256, int(trial))
            expected_keys.add(key)
            row = rows[key]
            position = position_of_row[row]
            np.testing.assert_array_equal(store.read_frames([row])[0], frames[index], strict=True)
            np.testing.assert_array_equal(labels[position], trials.labels[index], strict=True)
            assert subjects[position] == trials.subject[index]
            assert sources[position] == str(path)
    assert set(rows) == expected_keys
    assert len(store.committed_rows()) == len(expected_keys)


def _run_log(flow_run_id) -> list[str]:
    """The messages a flow run logged, as the Prefect server holds them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs travel to the server in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def test_flow_stores_every_trial_with_frames_provenance_and_attrs(prefect_harness, tmp_path, pool):
    from flows.deap import preprocess_deap

    folder = _data_folder(tmp_path, pool, [1, 2, 3])
    out = tmp_path / "out"
    summary = preprocess_deap(out_dir=str(out), data_dir=str(folder))

    assert summary["store"] == str(out / "frames.zarr")
    assert summary["n_files"] == 3
    assert summary["n_trials_stored"] == summary["n_trials_new"] == 3 * N_TRIALS
    store = FrameStore.open(store_path(str(out)))
    _assert_store_holds_exactly(store, sorted(folder.glob("s*.dat")))
    assert sorted(set(store.subject.tolist())) == [1, 2, 3]

    config = PreprocessConfig()
    operator = deap_imaging_operator(config)
    attrs = store.attrs
    assert attrs["data_kind"] == "deap-python"
    assert attrs["preprocessing"] == config.model_dump(mode="json")
    assert attrs["config_hash"] == config.config_hash()
    assert attrs["band_edges_hz"] == [[8.0, 13.0], [13.0, 30.0], [30.0, 45.0]]
    assert attrs["band_names"] == ["alpha", "beta", "gamma"]
    assert attrs["grid"]["size"] == 32
    np.testing.assert_array_equal(attrs["grid"]["x"], operator.grid_x)
    assert attrs["montage"]["ch_names"] == list(DEAP_CHANNELS)
    np.testing.assert_array_equal(attrs["montage"]["positions_2d"], operator.positions_2d)
    assert attrs["package_version"] == __version__


def _truncated(path: Path) -> str:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "truncated or corrupt pickle"


def _nan_samples(path: Path) -> str:
    contents = read_deap_dat(path)
    data = np.zeros((N_TRIALS, 40, N_SAMPLES))
    data[:, :32] = contents.signals
    data[1, 5, 100] = np.nan
    with path.open("wb") as handle:  # written by hand: write_deap_dat itself refuses NaN
        pickle.dump({"data": data, "labels": contents.labels.astype(np.float64)}, handle, protocol=2)
    return "signals contain NaN or Inf in trial(s) [1]"


class _RunsShellCommand:
    """Pickles as a call to os.system: what a malicious .dat file would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _calls_os_system(path: Path) -> str:
    marker = path.parent.parent / "executed"
    contents = read_deap_dat(path)
    payload = {"data": contents.signals, "labels": contents.labels, "x": _RunsShellCommand(f"touch {marker}")}
    path.write_bytes(pickle.dumps(payload, protocol=2))
    return f"refused to load global {os.system.__module__}.system"


@pytest.mark.parametrize("spoil", [_truncated, _nan_samples, _calls_os_system])
def test_a_bad_file_fails_the_run_by_name_while_the_others_are_stored(prefect_harness, tmp_path, pool, spoil):
    from flows.deap import SourceFilesFailed, preprocess_deap

    folder = _data_folder(tmp_path, pool, [1, 2, 3])
    problem = spoil(folder / "s02.dat")

    state = preprocess_deap(out_dir=str(tmp_path / "out"), data_dir=str(folder), return_state=True)

    assert state.is_failed()
    assert "s02.dat" in state.message and problem in state.message
    error = state.result(raise_on_failure=False)
    assert isinstance(error, SourceFilesFailed)
    assert list(error.failures) == ["s02.dat"] and problem in error.failures["s02.dat"]
    assert error.n_stored_files == 2
    assert not (tmp_path / "executed").exists()
    store = FrameStore.open(store_path(str(tmp_path / "out")))
    _assert_store_holds_exactly(store, [folder / "s01.dat", folder / "s03.dat"])


def test_rerun_stores_nothing_new_and_a_new_file_appends_only_its_trials(prefect_harness, tmp_path, pool):
    from flows.deap import preprocess_deap

    folder = _data_folder(tmp_path, pool, [1, 2, 3])
    out = str(tmp_path / "out")
    preprocess_deap(out_dir=out, data_dir=str(folder))
    first = FrameStore.open(store_path(out))
    rows_before = _stored_by_key(first)
    frames_before = first.read_frames(first.committed_rows())

    again = preprocess_deap(out_dir=out, data_dir=str(folder))
    assert (again["n_trials_new"], again["n_trials_stored"]) == (0, 3 * N_TRIALS)
    second = FrameStore.open(store_path(out))
    assert second.n_rows == first.n_rows
    assert _stored_by_key(second) == rows_before
    np.testing.assert_array_equal(second.read_frames(second.committed_rows()), frames_before, strict=True)

    _data_folder(tmp_path, pool, [4])
    grown = preprocess_deap(out_dir=out, data_dir=str(folder))
    assert (grown["n_trials_new"], grown["n_trials_stored"]) == (N_TRIALS, 4 * N_TRIALS)
    third = FrameStore.open(store_path(out))
    assert {key: row for key, row in _stored_by_key(third).items() if key in rows_before} == rows_before
    np.testing.assert_array_equal(third.read_frames(sorted(rows_before.values())), frames_before, strict=True)
    _assert_store_holds_exactly(third, sorted(folder.glob("s*.dat")))


def _snapshot(out: str) -> tuple[dict, dict, np.ndarray]:
    store = FrameStore.open(store_path(out))
    return store.attrs, _stored_by_key(store), store.read_frames(store.committed_rows())


def test_another_config_or_data_kind_is_refused_and_leaves_the_store_untouched(
    prefect_harness, tmp_path, pool
):
    from flows.deap import preprocess_deap

    folder = _data_folder(tmp_path, pool, [1])
    out = str(tmp_path / "out")
    preprocess_deap(out_dir=out, data_dir=str(folder))
    attrs, rows, frames = _snapshot(out)
    other_bands = PreprocessConfig(band_edges_hz=((8.0, 12.0), (12.0, 30.0), (30.0, 45.0)))

    refused = {
        "config": preprocess_deap(
            out_dir=out, data_dir=str(folder), config=other_bands.model_dump(mode="json"), return_state=True
        ),
        "kind": preprocess_deap(
            out_dir=out, synthetic={"n_subjects": 1, "n_trials": N_TRIALS}, return_state=True
        ),
    }

    for state in refused.values():
        assert state.is_failed()
        assert isinstance(state.result(raise_on_failure=False), InputError)
    config_error = str(refused["config"].result(raise_on_failure=False))
    assert config_error.startswith(store_path(out))
    assert PreprocessConfig().config_hash() in config_error and other_bands.config_hash() in config_error
    kind_error = str(refused["kind"].result(raise_on_failure=False))
    assert kind_error == (
        f"{store_path(out)}: holds deap-python data; this run adds synthetic data; use a new --out folder"
    )
    after_attrs, after_rows, after_frames = _snapshot(out)
    assert after_attrs == attrs
    assert after_rows == rows
    np.testing.assert_array_equal(after_frames, frames, strict=True)


def test_recorded_data_is_refused_by_a_synthetic_store(prefect_harness, tmp_path, pool):
    from flows.deap import preprocess_deap

    out = str(tmp_path / "out")
    preprocess_deap(out_dir=out, synthetic={"n_subjects": 1, "n_trials": 1})
    state = preprocess_deap(out_dir=out, data_dir=str(_data_folder(tmp_path, pool, [1])), return_state=True)
    assert state.is_failed()
    assert "holds synthetic data; this run adds deap-python data" in str(state.result(raise_on_failure=False))
    store = FrameStore.open(store_path(out))
    assert store.attrs["data_kind"] == "synthetic"
    assert store.source.tolist() == ["synthetic://s01"]


def test_unexpected_files_are_ignored_and_listed_in_the_log(prefect_harness, tmp_path, pool):
    from flows.deap import preprocess_deap

    folder = _data_folder(tmp_path, pool, [2])
    (folder / "notes.txt").write_text("recorded on a Tuesday\n")
    (folder / "s2.dat").write_bytes(b"not a subject file of the layout")

    state = preprocess_deap(out_dir=str(tmp_path / "out"), data_dir=str(folder), return_state=True)

    summary = state.result()
    assert (summary["n_files"], summary["n_trials_stored"]) == (1, N_TRIALS)
    _assert_store_holds_exactly(FrameStore.open(store_path(str(tmp_path / "out"))), [folder / "s02.dat"])
    logged = _run_log(state.state_details.flow_run_id)
    assert f"{folder}: ignoring unexpected file(s): notes.txt, s2.dat" in logged


# ---------------------------------------------------------------------- a killed CLI run

KILL_SUBJECTS, KILL_TRIALS = 6, 6


def _cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an ``eegmi`` subprocess: offline, its own Prefect home, the session's server."""
    from prefect.settings import get_current_settings

    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        # Reusing the test session's server spares each call starting its own (~20 s here).
        PREFECT_API_URL=str(get_current_settings().api.url),
    )
    return env


def _trial_records(store: FrameStore) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray, int, str]]:
    """Frames, labels, subject and source of every committed trial, by (source sha256, trial)."""
    rows = store.committed_rows()
    assert len(_stored_by_key(store)) == len(rows), "a trial is stored twice"
    frames = store.read_frames(rows)
    return {
        (str(sha), int(trial)): (frames[index], store.labels[index], int(store.subject[index]), str(source))
        for index, (sha, trial, source) in enumerate(
            zip(store.source_sha256, store.trial, store.source, strict=True)
        )
    }


def _committed_rows(path: str) -> int:
    """Trials committed in the store at ``path`` so far; 0 while the run is still creating it."""
    try:
        return len(FrameStore.open(path).committed_rows())
    except (InputError, FileNotFoundError, ValueError):  # created or resized under our feet
        return 0


# A write cut short leaves a temporary "*.partial" file of zarr in the store; zarr warns when listing it.
@pytest.mark.filterwarnings("ignore:Object at .*partial is not recognized:UserWarning")
def test_a_killed_cli_run_resumes_to_the_uninterrupted_result(prefect_harness, tmp_path):
    from flows.deap import preprocess_deap

    folder = tmp_path / "data"
    write_synthetic_deap(SyntheticDeapSpec(n_subjects=KILL_SUBJECTS, n_trials=KILL_TRIALS, seed=5), folder)
    n_total = KILL_SUBJECTS * KILL_TRIALS
    killed_out = tmp_path / "killed"
    eegmi = str(Path(sys.executable).with_name("eegmi"))
    command = [eegmi, "preprocess", "--data-dir", str(folder), "--out", str(killed_out)]
    env = _cli_env(tmp_path)

    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _committed_rows(store_path(str(killed_out))) == 0 and process.poll() is None:
        assert time.monotonic() < deadline, "the run committed nothing within 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    n_after_kill = len(FrameStore.open(store_path(str(killed_out))).committed_rows())
    assert 0 < n_after_kill < n_total

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == (
        f"{store_path(str(killed_out))}: {n_total} trials stored ({n_total - n_after_kill} new from "
        f"{KILL_SUBJECTS} file(s))"
    )

    preprocess_deap(out_dir=str(tmp_path / "uninterrupted"), data_dir=str(folder))
    resumed = _trial_records(FrameStore.open(store_path(str(killed_out))))
    reference = _trial_records(FrameStore.open(store_path(str(tmp_path / "uninterrupted"))))
    assert len(resumed) == n_total == len(reference)
    assert resumed.keys() == reference.keys()
    # Bitwise: kill-and-resume runs the same code on the same machine as the uninterrupted run.
    for key, (frames, labels, subject, source) in reference.items():
        np.testing.assert_array_equal(resumed[key][0], frames, strict=True)
        np.testing.assert_array_equal(resumed[key][1], labels, strict=True)
        assert resumed[key][2:] == (subject, source)

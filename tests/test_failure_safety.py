"""Failure safety of runs on one run folder.

- Two runs at once take turns: the second waits for the first (two processes).
- A run killed with SIGKILL while storing, training, encoding or writing the report is finished
  by the next run, with every trial stored and encoded exactly once.
- A full or unwritable output location ends the run with one clear error, and the store stays
  readable with everything committed before.

The killed runs are this file run as a script (see ``main`` at the bottom): ``eegmi ingest``'s
flow with one stage made to stop at a chosen point, print ``hanging`` and wait, so that the
kill lands exactly there.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_ingest_recordings import (
    TRIALS_PER_RECORDING,
    base_recordings,
    expected_keys,
    file_digests,
    stored_keys,
    tiny_preset,
    train_run,
    write_recording,
)

from pipeline.errors import InputError
from pipeline.models.learn import checkpoint_model_id
from pipeline.store.frames import FrameStore
from pipeline.store.run_folder import store_path
from pipeline.store.runlock import OutputLocationError, RunFolderBusy, pending_update, run_lock

CHILD_TIMEOUT_S = 300

# A write cut short leaves a temporary "*.partial" file of zarr in the store; zarr warns when listing it.
pytestmark = pytest.mark.filterwarnings("ignore:Object at .*partial is not recognized:UserWarning")


# --------------------------------------------------------------------------- the killed run (child)
def _pause(gate: str | None) -> None:
    print("hanging", flush=True)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline and not (gate and Path(gate).exists()):
        time.sleep(0.05)


def _stop_at(stage: str, nth: int, gate: str | None) -> None:
    """Make ``stage`` pause at its ``nth`` step: before a trial commit (ingest), after a checkpoint
    save (training), after a trial's latents are written (encoding), after a report file (report)."""
    import pipeline.models.training
    import pipeline.report.writer

    calls = {"n": 0}

    def counted(original, before: bool):
        def step(*args, **kwargs):
            calls["n"] += 1
            if before and calls["n"] == nth:
                _pause(gate)
            result = original(*args, **kwargs)
            if not before and calls["n"] == nth:
                _pause(gate)
            return result

        return step

    if stage == "ingest":
        FrameStore._commit = counted(FrameStore._commit, before=True)
    elif stage == "training":
        trainer = pipeline.models.training.VAETrainer
        trainer._save = counted(trainer._save, before=False)
    elif stage == "encoding":
        FrameStore.write_latents = counted(FrameStore.write_latents, before=False)
    elif stage == "report":
        writer = pipeline.report.writer
        writer.atomic_write_bytes = counted(writer.atomic_write_bytes, before=False)
    else:
        raise ValueError(f"unknown stage {stage!r}")


def main(argv: list[str]) -> int:
    """Run ``ingest_recordings`` with the settings in ``argv[0]`` (JSON), stopping at a stage if asked."""
    spec = json.loads(argv[0])
    torch.set_num_threads(1)
    if spec.get("stop_at"):
        _stop_at(spec["stop_at"], spec.get("nth", 1), spec.get("gate"))
    from flows.ingest import ingest_recordings

    result = ingest_recordings(
        recordings=spec["recordings"],
        out_dir=spec["out_dir"],
        retrain=spec.get("retrain", False),
        preset=spec.get("preset"),
    )
    print("done", json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- helpers of the tests
def _child_env(tmp_path: Path) -> dict[str, str]:
    """Offline, its own Prefect home, and the test session's Prefect server."""
    from prefect.settings import get_current_settings

    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_API_URL=str(get_current_settings().api.url),
    )
    return env


class Child:
    """A run of ``main`` in another process, its output lines collected as they come."""

    def __init__(self, tmp_path: Path, **spec):
        self.process = subprocess.Popen(
            [sys.executable, __file__, json.dumps(spec)],
            env=_child_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = CHILD_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                if any(text in line for line in self.lines):
                    return
                raise AssertionError(f"exited {self.process.returncode} before {text!r}:\n" + self.output)
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n" + self.output
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def finish(self) -> dict:
        assert self.process.wait(timeout=CHILD_TIMEOUT_S) == 0, self.output
        self._reader.join(timeout=5)
        done = [line for line in self.lines if line.startswith("done ")]
        assert done, self.output
        return json.loads(done[-1].removeprefix("done "))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _assert_each_trial_once(out_dir: Path, recordings: list[Path]) -> FrameStore:
    keys = stored_keys(out_dir)
    assert len(keys) == len(set(keys)), "a trial is stored twice"
    assert set(keys) == expected_keys(recordings), "a trial is missing"
    store = FrameStore.open(store_path(str(out_dir)))
    assert store.n_rows == len(keys), "a killed run's reserved rows were not reused"
    return store


def _assert_complete_run(out_dir: Path, recordings: list[Path]) -> None:
    """Every trial once, encoded by the current β-VAE, in a report written after the models."""
    store = _assert_each_trial_once(out_dir, recordings)
    np.testing.assert_array_equal(store.latent_rows(), store.committed_rows())
    assert store.latent_model_id == checkpoint_model_id(out_dir / "checkpoints" / "vae")
    assert pending_update(out_dir) is None
    report = json.loads((out_dir / "report.json").read_text())
    assert report["source"]["n_trials"] == len(recordings) * TRIALS_PER_RECORDING
    html = (out_dir / "report.html").read_text()
    assert html.rstrip().endswith("</html>")
    for name in ("mi_variance", "topk", "confusion"):
        assert (out_dir / "figures" / f"{name}.png").stat().st_size > 0


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("recordings")
    return [*base_recordings(folder), write_recording(folder, "sub-04_eeg.fif", seed=4)]


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory, recordings) -> Path:
    out_dir = tmp_path_factory.mktemp("trained") / "run"
    train_run(out_dir, recordings[:3])
    return out_dir


# --------------------------------------------------------------------------- two runs at once
def test_two_runs_on_one_folder_take_turns(prefect_harness, tmp_path, recordings):
    out_dir = tmp_path / "run"
    gate = tmp_path / "go"
    first = Child(
        tmp_path,
        recordings=[str(path) for path in recordings[:2]],
        out_dir=str(out_dir),
        stop_at="ingest",
        gate=str(gate),
    )
    first.wait_for("hanging")
    busy = rf"run ingest_recordings \(pid {first.process.pid} "
    with pytest.raises(RunFolderBusy, match=busy), run_lock(out_dir, timeout=0.5):
        pass

    second = Child(tmp_path, recordings=[str(recordings[2])], out_dir=str(out_dir))
    second.wait_for("is using this run folder; waiting for it to finish")
    assert f"pid {first.process.pid}" in second.output
    # The first run stopped before its first commit; the second has not written either.
    assert len(FrameStore.open(store_path(str(out_dir))).committed_rows()) == 0

    gate.touch()
    assert first.finish()["n_trials_new"] == 2 * TRIALS_PER_RECORDING
    assert second.finish()["n_trials_new"] == TRIALS_PER_RECORDING
    store = _assert_each_trial_once(out_dir, recordings[:3])
    # The waiting run wrote after the first run's trials, never between them.
    first_rows = store.committed_rows()[np.isin(store.source, [str(p) for p in recordings[:2]])]
    assert first_rows.max() < store.committed_rows()[store.source == str(recordings[2])].min()


def test_the_deap_flows_wait_for_a_run_holding_the_folder(prefect_harness, tmp_path):
    from flows.deap import preprocess_deap

    out_dir, released = tmp_path / "run", tmp_path / "released"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pipeline.store.runlock import run_lock\n"
            "with run_lock(sys.argv[1], flow='other'):\n"
            "    print('held', flush=True)\n    time.sleep(3)\n"
            # The margin keeps file times (from a coarser clock) of later writes above the mark.
            "    open(sys.argv[2], 'w').write(str(time.time_ns()))\n    time.sleep(0.1)",
            str(out_dir),
            str(released),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    summary = preprocess_deap(out_dir=str(out_dir), synthetic={"n_subjects": 1, "n_trials": 1})
    assert holder.wait(timeout=60) == 0
    assert summary["n_trials_stored"] == 1
    # Every file of the store was written after the other run let go of the folder.
    store_files = [path for path in Path(store_path(str(out_dir))).rglob("*") if path.is_file()]
    assert min(path.stat().st_mtime_ns for path in store_files) >= int(released.read_text())


# --------------------------------------------------------------------------- killed runs
def test_a_run_killed_while_storing_is_finished_by_the_next(prefect_harness, tmp_path, recordings):
    from flows.ingest import ingest_recordings

    out_dir = tmp_path / "run"
    paths = [str(path) for path in recordings[:2]]
    child = Child(tmp_path, recordings=paths, out_dir=str(out_dir), stop_at="ingest", nth=2)
    child.wait_for("hanging")
    child.kill()
    store = FrameStore.open(store_path(str(out_dir)))
    assert len(store.committed_rows()) == TRIALS_PER_RECORDING  # one file committed, one written only
    assert store.n_rows == 2 * TRIALS_PER_RECORDING

    result = ingest_recordings(recordings=paths, out_dir=str(out_dir))
    assert result["n_trials_new"] == TRIALS_PER_RECORDING
    _assert_each_trial_once(out_dir, recordings[:2])


@pytest.mark.slow
def test_a_run_killed_while_training_is_finished_by_the_next(tmp_path, trained, recordings):
    from flows.ingest import ingest_recordings

    out_dir = tmp_path / "run"
    shutil.copytree(trained, out_dir)
    child = Child(
        tmp_path, recordings=[str(recordings[3])], out_dir=str(out_dir), retrain=True, stop_at="training"
    )
    child.wait_for("hanging")
    child.kill()
    assert pending_update(out_dir).stage == "training"

    # The next run (a nightly ingest: no --retrain) must not use the half-trained model.
    result = ingest_recordings(recordings=[], out_dir=str(out_dir))
    assert result["action"] == "retrained"
    _assert_complete_run(out_dir, recordings)
    report = json.loads((out_dir / "report.json").read_text())
    assert report["config"]["preset"] == tiny_preset()
    split = FrameStore.open(store_path(str(out_dir))).attrs["split"]
    assert len(split["train"] + split["val"] + split["test"]) == 4 * TRIALS_PER_RECORDING


@pytest.mark.slow
def test_a_run_killed_while_encoding_is_finished_by_the_next(tmp_path, trained, recordings):
    from flows.ingest import ingest_recordings

    out_dir = tmp_path / "run"
    shutil.copytree(trained, out_dir)
    old_store = FrameStore.open(store_path(str(out_dir)))
    old_rows = old_store.committed_rows()
    old_mu, _ = old_store.read_latents(old_rows)
    checkpoints = file_digests(out_dir / "checkpoints" / "vae")

    child = Child(tmp_path, recordings=[str(recordings[3])], out_dir=str(out_dir), stop_at="encoding")
    child.wait_for("hanging")
    child.kill()
    assert pending_update(out_dir).stage == "report"
    store = FrameStore.open(store_path(str(out_dir)))
    assert len(store.latent_rows()) == len(old_rows) + 1  # one of the two new trials encoded

    result = ingest_recordings(recordings=[], out_dir=str(out_dir))
    assert (result["action"], result["n_encoded"]) == ("encoded", 1)
    _assert_complete_run(out_dir, recordings)
    assert file_digests(out_dir / "checkpoints" / "vae") == checkpoints
    np.testing.assert_array_equal(FrameStore.open(store_path(str(out_dir))).read_latents(old_rows)[0], old_mu)


@pytest.mark.slow
def test_a_run_killed_while_writing_the_report_is_finished_by_the_next(tmp_path, trained, recordings):
    from flows.ingest import ingest_recordings

    out_dir = tmp_path / "run"
    shutil.copytree(trained, out_dir)
    child = Child(tmp_path, recordings=[str(recordings[3])], out_dir=str(out_dir), stop_at="report", nth=2)
    child.wait_for("hanging")
    child.kill()
    # The old report is still whole; the next run sees it is due again.
    assert json.loads((out_dir / "report.json").read_text())["source"]["n_trials"] == 3 * TRIALS_PER_RECORDING
    assert pending_update(out_dir).stage == "report"

    result = ingest_recordings(recordings=[], out_dir=str(out_dir))
    assert (result["action"], result["n_encoded"]) == ("encoded", 0)
    _assert_complete_run(out_dir, recordings)


# --------------------------------------------------------------------------- the output location
def _disk_full_after(monkeypatch, out_dir: Path) -> None:
    """Every later zarr write under ``out_dir`` fails as on a full disk."""
    import zarr.storage._local as local_store

    original = local_store._put

    def no_space(path, value, exclusive=False):
        if Path(out_dir) in Path(path).parents:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(path, value, exclusive)

    monkeypatch.setattr(local_store, "_put", no_space)


def _cli_error_lines(captured_err: str) -> list[str]:
    """The CLI's own stderr lines. In-process runs can also receive "--- Logging error ---" dumps
    from a log handler an earlier test bound to a stream pytest has since closed; a real process
    has one stderr and never shows those."""
    return [line for line in captured_err.strip().splitlines() if line.startswith("eegmi:")]


def test_a_full_disk_ends_the_run_with_one_clear_error_and_a_readable_store(
    prefect_harness, tmp_path, recordings, monkeypatch, capsys
):
    from flows.cli import EXIT_BAD_INPUT, main
    from flows.ingest import ingest_recordings

    out_dir = tmp_path / "run"
    ingest_recordings(recordings=[str(recordings[0])], out_dir=str(out_dir))
    before = FrameStore.open(store_path(str(out_dir)))
    frames_before = before.read_frames(before.committed_rows())

    with monkeypatch.context() as patch:
        _disk_full_after(patch, out_dir)
        assert main(["ingest", str(recordings[1]), "--out", str(out_dir)]) == EXIT_BAD_INPUT
    lines = _cli_error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith(f"eegmi: error: {out_dir}: cannot write the run's output: No space left")
    assert "Everything stored before is intact" in lines[0]

    after = FrameStore.open(store_path(str(out_dir)))
    np.testing.assert_array_equal(after.read_frames(after.committed_rows()), frames_before)
    # With space again, the next run completes.
    ingest_recordings(recordings=[str(path) for path in recordings[:2]], out_dir=str(out_dir))
    _assert_each_trial_once(out_dir, recordings[:2])


def test_an_output_location_inside_a_file_is_refused_before_any_work(tmp_path, recordings, capsys):
    from flows.cli import EXIT_BAD_INPUT, main

    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    assert main(["ingest", str(recordings[0]), "--out", str(blocker / "run")]) == EXIT_BAD_INPUT
    assert _cli_error_lines(capsys.readouterr().err) == [
        f"eegmi: error: {blocker / 'run'}: cannot write here: Not a directory"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_run_folder_gives_one_clear_error_and_stays_readable(
    prefect_harness, tmp_path, recordings, capsys
):
    from flows.cli import EXIT_BAD_INPUT, main
    from flows.ingest import ingest_recordings

    out_dir = tmp_path / "run"
    ingest_recordings(recordings=[str(recordings[0])], out_dir=str(out_dir))
    folders = [out_dir, *[path for path in out_dir.rglob("*") if path.is_dir()]]
    for folder in folders:
        folder.chmod(0o555)
    try:
        assert main(["ingest", str(recordings[1]), "--out", str(out_dir)]) == EXIT_BAD_INPUT
        assert "cannot write here: Permission denied" in capsys.readouterr().err
        assert len(FrameStore.open(store_path(str(out_dir))).committed_rows()) == TRIALS_PER_RECORDING
    finally:
        for folder in folders:
            folder.chmod(0o755)


def test_the_run_lock_is_reentrant_and_a_busy_folder_times_out_clearly(tmp_path):
    out_dir = tmp_path / "run"
    with run_lock(out_dir, flow="outer"), run_lock(out_dir, flow="inner"):
        holder = json.loads((out_dir / ".eegmi-run.lock").read_text())
        assert (holder["flow"], holder["pid"]) == ("outer", os.getpid())
        helper = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pipeline.store.runlock import run_lock\n"
                "try:\n    with run_lock(sys.argv[1], timeout=0.3): pass\n"
                "except Exception as err: print(type(err).__name__, err)",
                str(out_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert helper.stdout.startswith(f"RunFolderBusy {out_dir}: run outer (pid {os.getpid()} ")
    # Released: another process gets it at once.
    with run_lock(out_dir, timeout=0):
        pass
    with pytest.raises(InputError, match="timeout"), run_lock(out_dir, timeout=-1):
        pass


def test_output_errors_name_the_folder_and_leave_input_errors_alone(tmp_path):
    from pipeline.store.runlock import output_errors

    out_dir = tmp_path / "run"
    with pytest.raises(OutputLocationError, match="No space left on device"), output_errors(out_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "frames.zarr" / "zarr.json"))
    # An unreadable input file elsewhere is not the output location's fault.
    with pytest.raises(PermissionError), output_errors(out_dir):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "data" / "s01.bdf"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

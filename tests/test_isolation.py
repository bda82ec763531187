"""One file's read runs in a child process bounded in time and memory: a reader that crashes,
hangs or allocates without end fails that file alone, named, and the caller goes on."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
import warnings
from functools import partial

import numpy as np
import pytest
from test_sources_deap import N_TRIALS

import pipeline.sources.deap
import pipeline.sources.isolation
from pipeline.errors import InputError
from pipeline.sources.deap import read_source_file, write_deap_dat
from pipeline.sources.isolation import IsolatedRun, ReadLimits, read_isolated
from pipeline.sources.trials import N_SAMPLES


@pytest.fixture
def deap_file(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(0.0, 20.0, size=(N_TRIALS, 40, N_SAMPLES))
    labels = np.round(rng.uniform(1.0, 9.0, size=(N_TRIALS, 4)), 2)
    return write_deap_dat(tmp_path / "s03.dat", data, labels)


def test_an_isolated_read_gives_the_same_trials_as_a_direct_one(deap_file):
    direct = read_source_file(deap_file)
    isolated = read_isolated(read_source_file, deap_file)
    for name in ("signals", "labels", "subject", "trial"):
        np.testing.assert_array_equal(getattr(isolated, name), getattr(direct, name))
        assert getattr(isolated, name).dtype == getattr(direct, name).dtype
    assert (isolated.source, isolated.source_sha256, isolated.kind) == (
        direct.source, direct.source_sha256, direct.kind,
    )  # fmt: skip


def test_the_readers_own_errors_and_warnings_come_back_unchanged(deap_file, tmp_path):
    broken = tmp_path / "s04.dat"
    broken.write_bytes(b"\x80\x02]q\x00.")
    with pytest.raises(InputError, match=r"holds a list, expected a dict") as caught:
        read_isolated(read_source_file, broken)
    assert caught.value.where == str(broken)

    def warns(path):
        warnings.warn("channel Oz interpolated", UserWarning, stacklevel=1)
        return read_source_file(path)

    with pytest.warns(UserWarning, match="channel Oz interpolated"):
        read_isolated(warns, deap_file)
    with pytest.raises(FileNotFoundError):
        read_isolated(lambda path: path.with_name("absent.dat").read_bytes(), deap_file)


def _segfault(path):
    return ctypes.string_at(0)


def _hang(path):
    while True:
        pass


def _allocate(path):
    return np.ones(10**10)  # 80 GB


def _fail(path):
    raise KeyError("b")


@pytest.mark.parametrize(
    ("reader", "problem"),
    [
        (_segfault, r"the reader crashed on this file \(SIGSEGV\); it was stopped"),
        (_hang, r"reading took longer than 2 s and was stopped"),
        (_allocate, r"reading needed more than 300 MB of memory and was stopped"),
        (_fail, r"the reader failed: KeyError: 'b'"),
    ],
    ids=["crash", "hang", "memory", "unexpected-error"],
)
def test_a_reader_that_crashes_hangs_or_overallocates_fails_that_file_alone(
    deap_file, monkeypatch, reader, problem
):
    monkeypatch.setenv("EEGMI_READ_TIME_LIMIT_S", "2")
    monkeypatch.setenv("EEGMI_READ_MEMORY_LIMIT_MB", "300")
    start = time.monotonic()
    with pytest.raises(InputError, match=problem) as caught:
        read_isolated(reader, deap_file)
    assert caught.value.where == str(deap_file)
    assert time.monotonic() - start < 10
    # The caller is unharmed and reads the next file.
    assert len(read_isolated(read_source_file, deap_file)) == N_TRIALS


def test_limits_grow_with_the_file_and_can_be_fixed_from_the_environment(monkeypatch):
    limits = ReadLimits()
    assert limits.seconds(100 * 2**20) == pytest.approx(120.0)
    assert limits.memory_bytes(100 * 2**20) == 1024 * 2**20 + 800 * 2**20
    monkeypatch.setenv("EEGMI_READ_TIME_LIMIT_S", "7.5")
    monkeypatch.setenv("EEGMI_READ_MEMORY_LIMIT_MB", "64")
    assert limits.seconds(10**9) == 7.5
    assert limits.memory_bytes(10**9) == 64 * 2**20
    monkeypatch.setenv("EEGMI_READ_TIME_LIMIT_S", "-1")
    with pytest.raises(InputError, match="EEGMI_READ_TIME_LIMIT_S: must be a positive number, got '-1'"):
        limits.seconds(1)


def _without_fork_server(monkeypatch):
    """Children forked from this process, so that what a test patches here applies in them."""
    monkeypatch.setattr(pipeline.sources.isolation, "_start_from_fork_server", lambda run, work: False)


@pytest.mark.parametrize(
    ("work", "problem"),
    [
        (partial(ctypes.string_at, 0), r"the reader crashed on this file \(SIGSEGV\)"),
        (partial(time.sleep, 60), r"reading took longer than 2 s"),
        (partial(np.ones, 10**10), r"reading needed more than 300 MB"),
    ],
    ids=["crash", "hang", "memory"],
)
def test_work_started_from_the_fork_server_is_bounded_too(monkeypatch, work, problem):
    monkeypatch.setenv("EEGMI_READ_TIME_LIMIT_S", "2")
    monkeypatch.setenv("EEGMI_READ_MEMORY_LIMIT_MB", "300")
    run = IsolatedRun(work, "s09.dat", 10**6, fresh=True)
    assert run._process is not None  # started by the fork server, not forked from here
    with pytest.raises(InputError, match=problem) as caught:
        run.result()
    assert caught.value.where == "s09.dat"


def test_an_isolated_deap_read_parses_in_the_child_and_builds_the_same_trials(deap_file, monkeypatch):
    direct = read_source_file(deap_file)
    isolated = read_source_file(deap_file, isolate=True)
    np.testing.assert_array_equal(isolated.signals, direct.signals)
    assert isolated.source_sha256 == direct.source_sha256
    _without_fork_server(monkeypatch)
    monkeypatch.setattr(pipeline.sources.deap, "describe_array_dict", _segfault)
    with pytest.raises(InputError, match=r"crashed on this file \(SIGSEGV\)"):
        read_source_file(deap_file, isolate=True)


def test_a_file_that_crashes_its_reader_fails_alone_and_the_run_stores_the_others(
    prefect_harness, tmp_path, monkeypatch
):
    from flows.deap import SourceFilesFailed, preprocess_deap

    rng = np.random.default_rng(2)
    data_dir = tmp_path / "data"
    for name, n_trials in (("s01.dat", 3), ("s02.dat", 2)):
        data = rng.normal(0.0, 20.0, size=(n_trials, 40, N_SAMPLES))
        write_deap_dat(data_dir / name, data, np.full((n_trials, 4), 5.0))
    crashing_size = (data_dir / "s01.dat").stat().st_size
    attempts = tmp_path / "attempts"
    describe = pipeline.sources.deap.describe_array_dict

    def crashes_on_s01(buffer):
        with open(attempts, "a") as log:  # written from the child, so a file
            log.write(f"{len(buffer)}\n")
        return _segfault(buffer) if len(buffer) == crashing_size else describe(buffer)

    _without_fork_server(monkeypatch)
    monkeypatch.setattr(pipeline.sources.deap, "describe_array_dict", crashes_on_s01)
    state = preprocess_deap(out_dir=str(tmp_path / "run"), data_dir=str(data_dir), return_state=True)
    failed = state.result(raise_on_failure=False)
    assert isinstance(failed, SourceFilesFailed)
    assert failed.failures == {"s01.dat": "the reader crashed on this file (SIGSEGV); it was stopped"}
    assert failed.n_stored_files == 1
    # A crash is the file's fault: it is not retried.
    assert attempts.read_text().split().count(str(crashing_size)) == 1


MAIN_SCRIPT = """
import os, sys
if __name__ != "__main__":  # run again as a child's __mp_main__: count it
    with open(os.environ["EEGMI_TEST_MAIN_IMPORTS"], "a") as marks:
        marks.write(__name__ + "\\n")
from pipeline.sources.deap import read_source_file
if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(len(read_source_file(path, isolate=True)))
"""


def test_a_read_started_from_a_script_does_not_run_the_script_again_in_its_child(deap_file, tmp_path):
    script = tmp_path / "main_script.py"
    script.write_text(MAIN_SCRIPT)
    marks = tmp_path / "imports.txt"
    environment = {**os.environ, "EEGMI_TEST_MAIN_IMPORTS": str(marks)}
    done = subprocess.run(
        [sys.executable, str(script), str(deap_file), str(deap_file)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(N_TRIALS)] * 2
    # multiprocessing would import the script in each child (numpy, zarr, Prefect at its top
    # cost each file 1-2 s); the reads' children never do.
    assert not marks.exists()

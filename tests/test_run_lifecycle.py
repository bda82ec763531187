"""A killed run leaves no process behind, and SIGTERM ends a run within seconds.

Each test starts ``eegmi preprocess`` on the synthetic DEAP as a separate process, waits
until Prefect's temporary server (uvicorn) is up as its descendant, then kills the run
(SIGKILL) or asks it to stop (SIGTERM), and checks every process the run had started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows._watchdog import _start_time, descendants
from pipeline.store.frames import FrameStore

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
EEGMI = Path(sys.executable).with_name("eegmi")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _start_run(tmp_path: Path) -> tuple[subprocess.Popen, dict[int, str]]:
    """``eegmi preprocess`` running, with its descendants once the temporary server is up."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        [str(EEGMI), "preprocess", "--synthetic", "--subjects", "6", "--out", str(tmp_path / "run")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run.poll() is None:
        family = descendants(run.pid)
        if any("uvicorn" in _cmdline(pid) for pid in family):
            # Let the flow start its tasks, so workers and readers are running too.
            time.sleep(3)
            return run, {**family, **descendants(run.pid)}
        time.sleep(0.2)
    run.kill()
    pytest.fail(f"the run never started its temporary server: {run.stderr.read()[-2000:]}")


def _survivors(family: dict[int, str]) -> list[str]:
    return [_cmdline(pid) for pid, start in family.items() if _start_time(pid) == start]


def test_a_run_killed_with_sigkill_leaves_no_process_behind(tmp_path):
    run, family = _start_run(tmp_path)
    assert any("uvicorn" in _cmdline(pid) for pid in family)
    run.kill()
    run.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _survivors(family):
        time.sleep(0.25)
    assert _survivors(family) == []


def test_sigterm_ends_a_run_within_ten_seconds_with_one_line_and_a_readable_store(tmp_path):
    run, family = _start_run(tmp_path)
    run.send_signal(signal.SIGTERM)
    start = time.monotonic()
    try:
        run.wait(timeout=10)
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail("the run was still alive 10 s after SIGTERM")
    stopped_after = time.monotonic() - start
    stderr = run.stderr.read()
    assert run.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "eegmi: stopped by SIGTERM; everything stored before is intact"
    assert stopped_after < 10
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _survivors(family):
        time.sleep(0.25)
    assert _survivors(family) == []
    store = tmp_path / "run" / "frames.zarr"
    if store.exists():  # what was committed is readable, and no subject is half stored
        opened = FrameStore.open(str(store))
        assert len(opened.committed_rows()) % 40 == 0  # whole subjects only: each file commits at once
    shutil.rmtree(tmp_path / "prefect-home", ignore_errors=True)


def test_sigterm_during_training_ends_the_run_within_ten_seconds(tmp_path):
    """The case cron and container stops hit most: a run told to stop while its β-VAE trains."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "OMP_NUM_THREADS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",  # the epoch lines tell when training has begun
    }
    command = [str(EEGMI), "deap", "--subjects", "2", "--out", str(tmp_path / "run")]
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in run.stderr:  # Prefect logs to stderr; the first epoch's progress means training is on
        seen.append(line)
        if "VAE epoch" in line:
            break
    else:
        pytest.fail(f"the run ended before training: {''.join(seen)[-2000:]}")
    family = descendants(run.pid)
    run.send_signal(signal.SIGTERM)
    start = time.monotonic()
    try:
        _, rest = run.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail("the run was still alive 10 s after SIGTERM during training")
    assert time.monotonic() - start < 10
    assert run.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1] == "eegmi: stopped by SIGTERM; everything stored before is intact"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _survivors(family):
        time.sleep(0.25)
    assert _survivors(family) == []
    shutil.rmtree(tmp_path / "prefect-home", ignore_errors=True)

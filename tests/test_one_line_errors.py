"""Clumsy input that used to end in a traceback ends in one line naming what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_failure_safety import _child_env
from test_ingest_recordings import write_recording

from pipeline.errors import InputError
from pipeline.models.checkpoint import load_checkpoint
from pipeline.models.vae import VAEConfig
from pipeline.store.runlock import OutputLocationError, check_run_folder


def _error_lines(captured_err: str) -> list[str]:
    return [line for line in captured_err.strip().splitlines() if line.startswith("eegmi:")]


def test_an_over_long_run_folder_is_refused_in_one_line(tmp_path):
    too_long = str(tmp_path / ("a" * 300) / "run")
    with pytest.raises(OutputLocationError, match="cannot write here: File name too long"):
        check_run_folder(too_long)


@pytest.mark.parametrize(
    "command",
    [
        ["preprocess", "--synthetic", "--subjects", "1"],
        ["preprocess", "--data-dir", "{data}"],
        ["deap", "--subjects", "1"],
    ],
)
@pytest.mark.parametrize(
    ("out", "problem"),
    [("{tmp}/" + "a" * 300 + "/run", "cannot write here: File name too long"), ("s3://bucket/run", "URL")],
)
def test_an_unusable_out_ends_the_command_in_one_line_before_the_run_starts(
    tmp_path, capsys, command, out, problem
):
    # Through the command, not only the check: a refusal raised inside a flow reaches the terminal
    # with Prefect's logged traceback, so it must come before the flow starts.
    from flows.cli import EXIT_BAD_INPUT, main
    from pipeline.sources.synthetic_files import write_synthetic_deap
    from pipeline.sources.synthetic_spec import SyntheticDeapSpec

    write_synthetic_deap(SyntheticDeapSpec(n_subjects=1, n_trials=2, seed=1), tmp_path / "data")
    arguments = [part.format(data=tmp_path / "data") for part in command]
    code = main([*arguments, "--out", out.format(tmp=tmp_path)])
    captured = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "Traceback" not in captured
    lines = _error_lines(captured)
    assert len(lines) == 1 and problem in lines[0], captured[-2000:]


def test_a_path_that_is_not_utf8_is_refused_before_the_run_starts(tmp_path, capsys):
    from flows.cli import EXIT_BAD_INPUT, main

    data_dir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/deap-\xff")
    code = main(["preprocess", "--data-dir", data_dir, "--out", str(tmp_path / "run")])
    assert code == EXIT_BAD_INPUT
    lines = _error_lines(capsys.readouterr().err)
    shown = os.fsencode(data_dir)
    assert lines == [f"eegmi: error: --data-dir: {shown!r} is not valid UTF-8; rename it or use another path"]
    assert not (tmp_path / "run").exists()


def test_inbox_files_whose_names_are_not_utf8_are_skipped_with_a_warning(tmp_path):
    from pipeline.runs.inbox import inbox_recordings

    good = write_recording(tmp_path, "sub-01_eeg.fif", seed=1)
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/sub-\xff_eeg.fif")
    with open(bad, "wb") as handle:
        handle.write(good.read_bytes())
    with pytest.warns(UserWarning, match=r"sub-\\xff_eeg\.fif'?: skipped: the file name is not valid UTF-8"):
        assert inbox_recordings(tmp_path) == [good]


def test_a_url_whose_file_system_is_not_installed_is_refused_in_one_line():
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("s3fs is installed here")
    with pytest.raises(OutputLocationError, match=r"s3://bucket/run: cannot open this URL: .*s3fs"):
        check_run_folder("s3://bucket/run")


def test_deeply_nested_report_and_checkpoint_pointer_are_named_errors(tmp_path):
    from pipeline.runs.recordings import previous_report

    nested = "[" * 100_000 + "]" * 100_000
    (tmp_path / "report.json").write_text(nested)
    with pytest.raises(InputError, match="is not a JSON report") as caught:
        previous_report(str(tmp_path))
    assert caught.value.where == str(tmp_path / "report.json")
    assert "\n" not in str(caught.value)

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "best.json").write_text('{"format": ' + nested + "}")
    with pytest.raises(InputError, match="is not a JSON checkpoint pointer"):
        load_checkpoint(checkpoints, "best")


NESTED_JSON = "[" * 100_000 + "]" * 100_000
TOO_DEEP = "maximum recursion depth exceeded while decoding a JSON array from a unicode string"


@pytest.mark.parametrize(
    ("crafted", "problem"),
    [
        ("report.json", f"is not a JSON report ({TOO_DEEP})"),
        ("checkpoints/vae/best.json", f"is not a JSON checkpoint pointer ({TOO_DEEP})"),
    ],
)
def test_a_deeply_nested_report_or_pointer_ends_eegmi_ingest_in_one_line(
    prefect_harness, tmp_path, crafted, problem
):
    """Through the command, in its own process: the error is raised inside the flow, where Prefect
    used to log it with its traceback above the command's line."""
    from flows.ingest import ingest_recordings

    recordings = [write_recording(tmp_path / "data", f"sub-0{s}_eeg.fif", seed=s) for s in (1, 2)]
    out = tmp_path / "run"
    ingest_recordings(recordings=[str(recordings[0])], out_dir=str(out))
    if crafted.startswith("checkpoints/"):  # models seem present, so ingest encodes with them
        (out / "checkpoints" / "vae").mkdir(parents=True)
        (out / "checkpoints" / "classifier.json").write_text("{}")
    (out / crafted).write_text(NESTED_JSON)

    child = subprocess.run(
        [str(Path(sys.executable).with_name("eegmi")), "ingest", str(recordings[1]), "--out", str(out)],
        env=_child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 2, child.stderr[-3000:]
    assert "Traceback" not in child.stderr, child.stderr[-3000:]
    assert _error_lines(child.stderr) == [f"eegmi: error: {out / crafted}: {problem}"]


@pytest.mark.parametrize("n_latents", [10**9, 4097, 0])
def test_an_absurd_number_of_latents_is_refused_before_any_allocation(n_latents):
    with pytest.raises(InputError, match=r"n_latents: .* must be an integer from 1 to 4096"):
        VAEConfig(n_latents=n_latents)
    assert VAEConfig(n_latents=4096).n_latents == 4096


def test_a_sidecar_error_names_the_csv_and_its_line(prefect_harness, tmp_path):
    from flows.ingest import store_recordings

    (tmp_path / "data").mkdir()
    recording = write_recording(tmp_path / "data", "sub-01_eeg.fif", seed=3)
    sidecar = recording.with_name("sub-01_eeg_labels.csv")
    lines = sidecar.read_text().splitlines()
    onset, _, arousal = lines[2].split(",")  # line 3 of the file: trial 1
    lines[2] = f"{onset},not-a-number,{arousal}"
    sidecar.write_text("\n".join(lines) + "\n")
    result = store_recordings(recordings=[str(recording)], out_dir=str(tmp_path / "run"))
    failure = result["failures"][str(recording)]
    assert failure.startswith(f"{sidecar}: line 3 (trial 1)"), failure

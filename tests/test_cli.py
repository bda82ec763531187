"""The ``eegmi`` command line: help text, one-line errors with exit 2, exit 1 naming a bad file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main
from pipeline.sources.deap import read_deap_dat
from pipeline.sources.synthetic import generate_subject
from pipeline.sources.synthetic_files import write_synthetic_deap
from pipeline.sources.synthetic_spec import SyntheticDeapSpec
from pipeline.store.frames import FrameStore
from pipeline.store.run_folder import store_path


@pytest.fixture(scope="module")
def subject_files(tmp_path_factory) -> list[Path]:
    """Three synthetic DEAP subject files of one trial each."""
    spec = SyntheticDeapSpec(n_subjects=3, n_trials=1, seed=2)
    return write_synthetic_deap(spec, tmp_path_factory.mktemp("deap"))


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("usage: eegmi ")
    assert "preprocess" in out and "DEAP signals → band images → OUT/frames.zarr" in out


def test_preprocess_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--help"])
    assert exit_info.value.code == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("usage: eegmi preprocess ")
    for option in ("--data-dir", "--synthetic", "--out", "--subjects", "--seed", "--synthetic-scenario"):
        assert option in out
    assert "OUT/frames.zarr" in out


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["preprocess", "--data-dir", "somewhere"], "the following arguments are required: --out"),
        (["preprocess", "--synthetic", "--data-dir", "d", "--out", "o"], "not allowed with argument"),
        (["preprocess", "--out", "o", "--subjects", "two"], "invalid int value: 'two'"),
        (["summarise"], "invalid choice: 'summarise'"),
        (["deap", "--protocol", "frames"], "invalid choice: 'frames'"),
        (["deap", "--beta", "1,two"], "'1,two' is not a comma-separated list of numbers"),
        (["deap", "--beta", "2,0"], "every β must be a positive finite number"),
        (["deap", "--beta", "2,4,2"], "lists a value twice"),
    ],
)
def test_malformed_command_lines_exit_2_with_the_usage(capsys, argv, complaint):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("usage: eegmi")
    assert complaint in err.splitlines()[-1]


def _empty(folder: Path) -> str:
    folder.mkdir()
    return "is empty"


def _no_subject_files(folder: Path) -> str:
    folder.mkdir()
    (folder / "notes.txt").write_text("DEAP arrives next week\n")
    return "holds no subject file of any layout"


def _missing(folder: Path) -> str:
    return "folder does not exist"


@pytest.mark.parametrize("make_folder", [_empty, _no_subject_files, _missing])
def test_an_unusable_data_folder_exits_2_with_one_line_naming_it(tmp_path, capsys, make_folder):
    folder = tmp_path / "deap"
    problem = make_folder(folder)

    code = main(["preprocess", "--data-dir", str(folder), "--out", str(tmp_path / "out")])

    assert code == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"eegmi: error: {folder}: {problem}")
    assert not (tmp_path / "out").exists()


def test_an_impossible_synthetic_data_set_exits_2_with_one_line(tmp_path, capsys):
    code = main(["preprocess", "--synthetic", "--subjects", "0", "--out", str(tmp_path / "out")])
    assert code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.splitlines() == [
        "eegmi: error: SyntheticDeapSpec: n_subjects must be an integer >= 1, got 0"
    ]
    assert not (tmp_path / "out").exists()


def test_the_installed_command_reports_bad_input_in_one_line(tmp_path):
    """The console script end to end: exit 2 and one stderr line, before any Prefect server starts."""
    eegmi = Path(sys.executable).with_name("eegmi")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    missing = tmp_path / "no-such-folder"

    result = subprocess.run(
        [str(eegmi), "preprocess", "--data-dir", str(missing), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip

    assert result.returncode == EXIT_BAD_INPUT
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"eegmi: error: {missing}: folder does not exist"]


def test_a_bad_file_exits_1_naming_it_while_the_others_are_stored(
    prefect_harness, tmp_path, capsys, subject_files
):
    folder = tmp_path / "deap"
    folder.mkdir()
    for path in subject_files:
        shutil.copyfile(path, folder / path.name)
    (folder / "s02.dat").write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00data")  # cut off after a key
    out = tmp_path / "out"

    code = main(["preprocess", "--data-dir", str(folder), "--out", str(out)])

    assert code == EXIT_FAILED
    err_lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("eegmi: error: s02.dat: truncated or corrupt pickle") for line in err_lines)
    assert err_lines[-1] == "eegmi: 1 file(s) failed; 2 stored"
    store = FrameStore.open(store_path(str(out)))
    expected = [read_deap_dat(folder / name) for name in ("s01.dat", "s03.dat")]
    assert sorted(store.source_sha256.tolist()) == sorted(trials.source_sha256 for trials in expected)
    assert sorted(store.subject.tolist()) == [1, 3]


def test_synthetic_preprocess_exits_0_and_reports_the_store(prefect_harness, tmp_path, capsys):
    out = tmp_path / "out"

    code = main(["preprocess", "--synthetic", "--subjects", "1", "--seed", "4", "--out", str(out)])

    assert code == EXIT_OK
    reference = generate_subject(SyntheticDeapSpec(n_subjects=1, seed=4), 1)
    n_trials = len(reference)
    assert capsys.readouterr().out.splitlines() == [
        f"{store_path(str(out))}: {n_trials} trials stored ({n_trials} new from 1 file(s))"
    ]
    store = FrameStore.open(store_path(str(out)))
    assert store.attrs["data_kind"] == "synthetic"
    assert store.attrs["synthetic"] == SyntheticDeapSpec(n_subjects=1, seed=4).identity()
    assert store.attrs["synthetic"]["scenario"] == "planted"
    assert set(store.source_sha256.tolist()) == {reference.source_sha256}
    np.testing.assert_array_equal(np.sort(store.trial), reference.trial)


def test_another_scenario_or_seed_is_refused_in_one_line_and_leaves_the_store(tmp_path, capsys):
    from pipeline.signal.config import PreprocessConfig
    from pipeline.sources.synthetic_spec import scenario_spec
    from pipeline.store.ingest_eeg import deap_store_spec, open_store

    out = tmp_path / "out"
    stored = scenario_spec("planted", n_subjects=1, seed=4)
    open_store(str(out), deap_store_spec(PreprocessConfig(), "synthetic", stored.identity()))
    path = store_path(str(out))
    before = FrameStore.open(path).attrs

    refusals = {
        ("--synthetic-scenario", "confound", "--seed", "4"): "this run asks for the synthetic 'confound' "
        "scenario with seed 4",
        ("--seed", "5"): "this run asks for the synthetic 'planted' scenario with seed 5",
    }
    for options, asked in refusals.items():
        code = main(["preprocess", "--synthetic", "--subjects", "1", *options, "--out", str(out)])
        assert code == EXIT_BAD_INPUT
        assert capsys.readouterr().err.splitlines() == [
            f"eegmi: error: {path}: holds the synthetic 'planted' scenario with seed 4; {asked}; "
            "use a new --out folder"
        ]
    code = main(["deap", "--synthetic-scenario", "null", "--seed", "4", "--out", str(out)])
    assert code == EXIT_BAD_INPUT
    assert "holds the synthetic 'planted' scenario with seed 4" in capsys.readouterr().err
    assert FrameStore.open(path).attrs == before


def test_protocol_and_beta_reach_the_flow(monkeypatch, capsys, tmp_path):
    """``--protocol both --beta 1,2,4,6`` runs the flow with both protocols and a four-value sweep."""
    import flows.deap

    seen = {}

    class Finished:
        def result(self, raise_on_failure):
            figures = {"verdict": "accuracy 0.50 (…): distinguishable from chance"}
            return {
                "report_html": "r.html",
                "n_influential": 3,
                "linked": [],
                "beta_sweep": {"chosen_beta": 2.0, "rule": "the rule"},
                "classification": {"trial": figures, "subject": figures},
                "ground_truth_passed": None,
            }

    def fake_deap(**options):
        seen.update(options)
        return Finished()

    monkeypatch.setattr(flows.deap, "deap", fake_deap)
    out = str(tmp_path / "o")
    code = main(["deap", "--data-dir", "d", "--protocol", "both", "--beta", "1,2,4,6", "--out", out])
    assert code == 0
    assert seen["protocol"] == "both" and seen["betas"] == [1.0, 2.0, 4.0, 6.0]
    out = capsys.readouterr().out
    assert "β sweep: kept β = 2" in out
    assert "split by trial: accuracy" in out and "split by subject: accuracy" in out


def test_schema_prints_the_shipped_report_and_manifest_schemas(capsys):
    import jsonschema

    import pipeline
    from pipeline.report import REPORT_SCHEMA_VERSION
    from pipeline.sources.manifests import load_manifest

    assert main(["schema"]) == EXIT_OK
    printed = capsys.readouterr().out
    shipped = Path(pipeline.__file__).parent / "report" / "report.schema.json"
    assert printed == shipped.read_text(encoding="utf-8")
    report_schema = json.loads(printed)
    jsonschema.Draft202012Validator.check_schema(report_schema)
    assert report_schema["properties"]["schema_version"]["const"] == REPORT_SCHEMA_VERSION

    assert main(["schema", "manifest"]) == EXIT_OK
    manifest_schema = json.loads(capsys.readouterr().out)
    assert manifest_schema["$id"] == "urn:eegmi:schema:manifest:1"
    jsonschema.validate(load_manifest("deap"), manifest_schema)

    with pytest.raises(SystemExit) as exit_info:
        main(["schema", "store"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "invalid choice: 'store'" in capsys.readouterr().err


def test_seeds_reach_the_flow_and_its_stability_is_printed(monkeypatch, capsys, tmp_path):
    """``--seeds 3`` runs the flow with three seeds; the output names the reported seed and only the
    linked blocks the flow found in a majority of them."""
    import flows.deap

    seen = {}

    class Finished:
        def result(self, raise_on_failure):
            return {
                "report_html": "r.html",
                "n_influential": 2,
                "linked": [5],
                "beta_sweep": None,
                "classification": {},
                "ground_truth_passed": None,
                "stability": {"n_seeds": 3, "reported_seed": 2, "most_representative_seed": 2},
                "linked_blocks": [
                    {
                        "factor": 5,
                        "band": "gamma",
                        "electrodes": ["C4", "T8"],
                        "seeds_found": 2,
                        "seeds_linked": 1,
                        "n_seeds": 3,
                    }
                ],
            }

    def fake_deap(**options):
        seen.update(options)
        return Finished()

    monkeypatch.setattr(flows.deap, "deap", fake_deap)
    assert main(["deap", "--data-dir", "d", "--seeds", "3", "--seed", "1", "--out", str(tmp_path / "o")]) == 0
    assert seen["n_seeds"] == 3 and seen["seed"] == 1
    out = capsys.readouterr().out
    assert "seed 2's (the most representative)" in out
    headline = (
        "emotion-linked blocks found in most seeds: C4-T8 (gamma, z5, found in 2 of 3 seeds, linked in 1)"
    )
    assert headline in out


def test_a_seed_ensemble_with_a_beta_sweep_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    import flows.deap

    monkeypatch.setattr(flows.deap, "deap", lambda **options: pytest.fail("the flow must not start"))
    code = main(["deap", "--data-dir", "d", "--out", str(tmp_path / "o"), "--seeds", "2", "--beta", "2,6"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "a seed ensemble takes one β" in err and "Traceback" not in err


def test_zero_seeds_is_refused_by_the_argument_parser(capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        main(["deap", "--data-dir", "d", "--out", str(tmp_path / "o"), "--seeds", "0"])
    assert stopped.value.code == 2
    assert "at least 1 seed" in capsys.readouterr().err


def _heartbeats_seen_by_the_flow(monkeypatch, tmp_path) -> int | None:
    """The heartbeat frequency in force while ``eegmi deap`` runs its flow."""
    from prefect.settings import get_current_settings

    import flows.deap

    seen = {}

    def fake_deap(**options):
        seen["heartbeat_frequency"] = get_current_settings().flows.heartbeat_frequency
        raise SystemExit(0)

    monkeypatch.setattr(flows.deap, "deap", fake_deap)
    with pytest.raises(SystemExit):
        main(["deap", "--out", str(tmp_path / "o")])
    return seen["heartbeat_frequency"]


@contextlib.contextmanager
def _prefect_settings_from_the_environment(updates: dict | None = None):
    """Prefect's settings as a fresh process reads them from the environment (plus ``updates``),
    not those a test harness set in this one."""
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import Settings

    settings = Settings()
    if updates:
        settings = settings.copy_with_update(updates=updates)
    with SettingsContext(profile=get_settings_context().profile, settings=settings):
        yield


def test_flows_on_the_temporary_server_send_no_heartbeats_and_with_a_server_they_do(monkeypatch, tmp_path):
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    frequency_variables = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")
    for name in ("PREFECT_API_URL", *frequency_variables):
        monkeypatch.delenv(name, raising=False)
    with _prefect_settings_from_the_environment():
        default_frequency = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
        # Without a server each flow's end would wait for the heartbeat thread to wake.
        assert default_frequency is not None
        assert _heartbeats_seen_by_the_flow(monkeypatch, tmp_path) is None
    with _prefect_settings_from_the_environment({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert _heartbeats_seen_by_the_flow(monkeypatch, tmp_path) == default_frequency
    # A frequency the user set is theirs, server or not, by either of Prefect's variables.
    for name in frequency_variables:
        monkeypatch.setenv(name, "60")
        with _prefect_settings_from_the_environment():
            assert _heartbeats_seen_by_the_flow(monkeypatch, tmp_path) == 60
        monkeypatch.delenv(name)

"""Scheduled runs: the declared deployments and schedules, the listing, and a served deployment's run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from test_ingest_recordings import TRIALS_PER_RECORDING, expected_keys, stored_keys, write_recording

from pipeline.errors import InputError

EEGMI = str(Path(sys.executable).with_name("eegmi"))
# A Wednesday, so the next nightly run is the next day and the next weekly run the coming Sunday.
WEDNESDAY_NOON = datetime(2026, 1, 7, 12, 0, tzinfo=UTC)


def _env(tmp_path: Path, api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_API_URL=api_url,
    )
    return env


def test_the_nightly_ingest_and_the_weekly_retrain_are_declared_with_their_schedules(tmp_path):
    from flows.deployments import deployment_specs

    nightly, weekly = deployment_specs(tmp_path / "inbox", tmp_path / "run")
    assert (nightly.full_name, nightly.cron, nightly.timezone) == (
        "ingest-inbox/nightly-ingest",
        "0 2 * * *",
        "UTC",
    )
    assert (weekly.full_name, weekly.cron, weekly.timezone) == (
        "ingest-inbox/weekly-retrain",
        "0 3 * * 0",
        "UTC",
    )
    common = {
        "inbox_dir": str(tmp_path / "inbox"),
        "out_dir": str(tmp_path / "run"),
        "interpolate_missing": False,
        "settle_seconds": 300.0,
    }
    assert nightly.parameters == {**common, "retrain": False}
    assert weekly.parameters == {**common, "retrain": True}
    assert nightly.next_runs(2, after=WEDNESDAY_NOON) == [
        datetime(2026, 1, 8, 2, 0, tzinfo=UTC),
        datetime(2026, 1, 9, 2, 0, tzinfo=UTC),
    ]
    assert weekly.next_runs(1, after=WEDNESDAY_NOON) == [datetime(2026, 1, 11, 3, 0, tzinfo=UTC)]


def test_schedules_follow_the_time_zone_and_the_given_cron(tmp_path):
    from flows.deployments import deployment_specs

    berlin = ZoneInfo("Europe/Berlin")
    nightly, weekly = deployment_specs(
        "inbox", "run", nightly_cron="30 1 * * 1-5", weekly_cron="0 4 1 * *", timezone="Europe/Berlin"
    )
    # Thursday 8 January 2026, 01:30 in Berlin (UTC+1 in winter) is 00:30 UTC.
    assert nightly.next_runs(1, after=WEDNESDAY_NOON) == [datetime(2026, 1, 8, 1, 30, tzinfo=berlin)]
    assert nightly.next_runs(1, after=WEDNESDAY_NOON)[0].astimezone(UTC).hour == 0
    assert weekly.next_runs(1, after=WEDNESDAY_NOON) == [datetime(2026, 2, 1, 4, 0, tzinfo=berlin)]
    # Relative folders become absolute: a served run may start in another working directory.
    assert Path(nightly.parameters["out_dir"]).is_absolute()


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"nightly_cron": "61 * * * *"}, "--nightly: '61 * * * *' is not a valid cron expression"),
        ({"weekly_cron": "H 3 * * 0"}, "--weekly: 'H 3 * * 0' is not a valid cron expression"),
        ({"timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not an IANA time zone"),
        ({"settle_seconds": -1}, "settle_seconds: must be a number >= 0"),
    ],
)
def test_invalid_schedules_are_refused(options, complaint):
    from flows.deployments import deployment_specs

    with pytest.raises(InputError, match=complaint.replace("*", r"\*")):
        deployment_specs("inbox", "run", **options)


def test_url_folders_are_refused_for_scheduled_runs():
    from flows.deployments import deployment_specs

    with pytest.raises(InputError, match="scheduled runs need local folders"):
        deployment_specs("inbox", "s3://bucket/run")


def test_the_prefect_deployments_carry_the_schedules_and_parameters(tmp_path):
    from flows.deployments import build_deployments, deployment_specs

    specs = deployment_specs(tmp_path / "inbox", tmp_path / "run", timezone="Europe/Berlin")
    deployments = build_deployments(specs)
    for spec, deployment in zip(specs, deployments, strict=True):
        assert (deployment.name, deployment.flow_name) == (spec.name, "ingest-inbox")
        assert deployment.entrypoint == "flows.ingest.ingest_inbox"
        [schedule] = deployment.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (spec.cron, "Europe/Berlin")
        assert deployment.parameters == spec.parameters


def test_the_listing_shows_schedules_and_parameters_without_a_server(tmp_path):
    # Nothing listens on port 9: any attempt to reach Prefect would fail the command.
    listing = subprocess.run(
        [EEGMI, "deployments", "--inbox", str(tmp_path / "inbox"), "--out", str(tmp_path / "run")],
        env={**_env(tmp_path, "http://127.0.0.1:9/api"), "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0] == "ingest-inbox/nightly-ingest"
    assert lines[1].startswith("  schedule:   0 2 * * * (UTC); next run ")
    assert f"  parameter:  inbox_dir = {str(tmp_path / 'inbox')!r}" in lines
    assert "  parameter:  retrain = False" in lines and "  parameter:  retrain = True" in lines
    assert "ingest-inbox/weekly-retrain" in lines
    assert any(line.startswith("  schedule:   0 3 * * 0 (UTC); next run ") for line in lines)
    assert not (tmp_path / "run").exists() and not (tmp_path / "inbox").exists()


def test_without_folders_the_listing_shows_the_defaults_and_cannot_be_served(tmp_path, capsys, monkeypatch):
    from flows.cli import EXIT_OK, main
    from flows.deployments import build_deployments, deployment_specs

    monkeypatch.chdir(tmp_path)
    assert main(["deployments"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ingest-inbox/nightly-ingest"
    assert lines[1].startswith("  schedule:   0 2 * * * (UTC); next run ")
    assert "ingest-inbox/weekly-retrain" in lines
    assert any(line.startswith("  schedule:   0 3 * * 0 (UTC); next run ") for line in lines)
    for default in (
        "interpolate_missing = False",
        "settle_seconds = 300.0",
        "retrain = False",
        "retrain = True",
    ):
        assert f"  parameter:  {default}" in lines
    assert lines.count("  parameter:  inbox_dir = <set by --inbox DIR>") == 2
    assert lines.count("  parameter:  out_dir = <set by --out DIR>") == 2
    assert lines[-1].startswith("Serve them with `eegmi serve --inbox DIR --out DIR`")
    assert list(tmp_path.iterdir()) == []  # nothing created in the working directory

    # One folder given: the other stays open, and open folders cannot be deployed.
    nightly, _ = deployment_specs(None, tmp_path / "run", weekly_cron="0 4 * * 6")
    assert nightly.parameters["out_dir"] == str(tmp_path / "run")
    with pytest.raises(
        InputError, match="ingest-inbox/nightly-ingest: has no folder for --inbox; give --inbox DIR"
    ):
        build_deployments([nightly])


def test_a_bad_schedule_exits_2_naming_it(tmp_path, capsys):
    from flows.cli import EXIT_BAD_INPUT, main

    code = main(["deployments", "--inbox", "i", "--out", "o", "--weekly", "every sunday"])
    assert code == EXIT_BAD_INPUT
    assert (
        capsys.readouterr().err.strip()
        == "eegmi: error: --weekly: 'every sunday' is not a valid cron expression"
    )


def _wait_for_deployment(name: str, serve: subprocess.Popen, timeout: float = 180):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                assert serve.poll() is None, serve.stdout.read()
                assert time.monotonic() < deadline, f"{name} not registered within {timeout} s"
                time.sleep(0.5)


def test_a_served_deployment_runs_and_stores_the_inbox(prefect_harness, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import get_current_settings

    inbox, out_dir = tmp_path / "inbox", tmp_path / "run"
    recording = write_recording(inbox, "sub-01_eeg.fif", seed=1)
    serve = subprocess.Popen(
        [EEGMI, "serve", "--inbox", str(inbox), "--out", str(out_dir), "--settle-seconds", "0"],
        env=_env(tmp_path, str(get_current_settings().api.url)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deployment = _wait_for_deployment("ingest-inbox/nightly-ingest", serve)
        [schedule] = deployment.schedules
        assert (schedule.schedule.cron, schedule.active) == ("0 2 * * *", True)
        assert deployment.parameters["retrain"] is False

        flow_run = run_deployment("ingest-inbox/nightly-ingest", timeout=300)
        assert flow_run.state.is_completed(), flow_run.state
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
    keys = stored_keys(out_dir)
    assert len(keys) == TRIALS_PER_RECORDING and set(keys) == expected_keys([recording])
    ledger = json.loads((out_dir / "inbox.json").read_text())
    assert [entry["name"] for entry in ledger["files"].values()] == ["sub-01_eeg.fif"]


def test_parameters_registered_by_earlier_versions_still_validate_against_the_flow(tmp_path):
    # The shape `eegmi serve` registered before the settings became typed models; a deployment
    # stored on a Prefect server keeps sending it.
    from flows.deployments import deployment_specs
    from flows.ingest import ingest_inbox

    registered = {
        "inbox_dir": str(tmp_path / "inbox"),
        "out_dir": str(tmp_path / "run"),
        "interpolate_missing": False,
        "settle_seconds": 300.0,
        "retrain": True,
    }
    defaults = {"preset": None, "seed": 0, "dask_address": None, "dask_workers": None}
    assert ingest_inbox.validate_parameters(registered) == {**registered, **defaults}
    weekly = deployment_specs(tmp_path / "inbox", tmp_path / "run")[1]
    assert ingest_inbox.validate_parameters(dict(weekly.parameters)) == {**registered, **defaults}
    with pytest.raises(Exception, match="settle_seconds"):
        ingest_inbox.validate_parameters({**registered, "settle_seconds": "soon"})


def test_flows_take_the_settings_models_a_dict_of_their_fields_included(tmp_path):
    # A deployment or a caller may pass the whole settings: Prefect validates a dict of a preset's
    # fields into the model, and a name stays a name.
    from flows.deap import deap
    from flows.ingest import ingest_recordings
    from flows.mnist import mnist
    from pipeline.models.presets import DeapPreset, ImagePreset, deap_preset, image_preset

    settings = deap_preset("demo", seed=3)
    recorded = settings.model_dump(mode="json")
    for flow_, name in ((deap, "deap"), (ingest_recordings, "ingest")):
        extra = {"recordings": []} if name == "ingest" else {}
        validated = flow_.validate_parameters({"out_dir": str(tmp_path), "preset": recorded, **extra})
        assert isinstance(validated["preset"], DeapPreset) and validated["preset"] == settings
        assert (
            flow_.validate_parameters({"out_dir": str(tmp_path), "preset": "paper", **extra})["preset"]
            == "paper"
        )
    images = image_preset("mnist", "demo", seed=2)
    validated = mnist.validate_parameters(
        {"out_dir": str(tmp_path), "preset": images.model_dump(mode="json")}
    )
    assert isinstance(validated["preset"], ImagePreset) and validated["preset"] == images
    with pytest.raises(Exception, match="preset"):
        deap.validate_parameters({"out_dir": str(tmp_path), "preset": {**recorded, "learn": "no"}})


def test_settings_given_whole_keep_their_seeds_and_take_the_options_asked_for():
    from pipeline.models.presets import deap_preset, image_preset
    from pipeline.runs.deap import deap_settings
    from pipeline.runs.images import IMAGE_DATASETS

    settings = deap_preset("demo", seed=3)
    assert deap_settings(settings, seed=0) == settings
    chosen = deap_settings(settings, seed=0, protocol="subject", betas=[2.0, 4.0], compile_model=True)
    assert (chosen.protocol, chosen.betas, chosen.learn.vae.beta) == ("subject", (2.0, 4.0), 2.0)
    assert chosen.learn.train.compile_model and chosen.learn.train.seed == settings.learn.train.seed == 3
    images = image_preset("mnist", "demo", seed=2)
    assert IMAGE_DATASETS["mnist"].settings(images, seed=0, data_dir=None) == images
    with pytest.raises(InputError, match="holds mnist settings; this run is celeba"):
        IMAGE_DATASETS["celeba"].settings(images, seed=0, data_dir=None)

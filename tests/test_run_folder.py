"""The run folder object: every path of a run comes from it, and the guards use the same paths."""

import json

import pytest

from pipeline.errors import InputError
from pipeline.signal.config import PreprocessConfig
from pipeline.store.ingest_eeg import deap_store_spec, open_store
from pipeline.store.run_folder import RunFolder, read_json_file, store_path
from pipeline.store.runlock import begin_update, finish_update, pending_update, run_lock


def test_every_path_of_a_run_folder(tmp_path):
    run = RunFolder(tmp_path / "run")
    root = tmp_path / "run"
    assert run.path == root and str(run) == str(root) and RunFolder(run) == run
    assert run.store_path == str(root / "frames.zarr") == store_path(root)
    assert run.vae_dir() == root / "checkpoints" / "vae"
    assert run.vae_dir("subject") == root / "checkpoints" / "subject" / "vae"
    assert run.classifier_dir() == root / "checkpoints"
    assert run.classifier_dir("subject") == root / "checkpoints" / "subject"
    # The reference seed (or a one-seed run) uses the main β-VAE's folder; other seeds their own.
    assert run.seed_vae_dir(3, 3) == run.seed_vae_dir(3) == run.vae_dir()
    assert run.seed_vae_dir(4, 3) == root / "checkpoints" / "vae_seed4"
    assert run.sweep_dir(2.5) == root / "checkpoints" / "sweep" / "beta-2.5"
    assert (run.report_json, run.report_html, run.figures) == (
        root / "report.json",
        root / "report.html",
        root / "figures",
    )
    assert run.inbox_ledger == root / "inbox.json"
    assert run.update_marker == root / "checkpoints" / "update-in-progress.json"
    assert run.lock_file == root / ".eegmi-run.lock"


def test_a_remote_run_folder_keeps_its_url_for_the_store():
    run = RunFolder("s3://bucket/runs/a/")
    assert run.store_path == "s3://bucket/runs/a/frames.zarr"
    assert RunFolder("file:///tmp/run").path.as_posix() == "/tmp/run"
    with pytest.raises(InputError, match="must be a folder path or URL"):
        RunFolder("")


def test_the_lock_the_marker_and_the_store_live_where_the_run_folder_says(tmp_path):
    run = RunFolder(tmp_path / "run")
    with run_lock(run, flow="test"):
        assert json.loads(run.lock_file.read_text())["flow"] == "test"
    begin_update(run, {"name": "demo"}, "training")
    assert json.loads(run.update_marker.read_text())["stage"] == "training"
    assert pending_update(run.location).settings == {"name": "demo"}
    finish_update(run)
    assert not run.update_marker.exists() and pending_update(run) is None
    assert run.n_stored() == 0  # no store yet
    open_store(run.location, deap_store_spec(PreprocessConfig(), "synthetic"))
    assert run.open_store().path == run.store_path and run.n_stored() == 0


def test_a_json_file_that_does_not_parse_is_named_with_what_it_should_be(tmp_path):
    path = tmp_path / "inbox.json"
    assert read_json_file(path, "an inbox ledger") is None
    path.write_text("{not json")
    with pytest.raises(InputError) as caught:
        read_json_file(path, "an inbox ledger", "; delete it")
    assert str(caught.value).startswith(f"{path}: is not an inbox ledger (Expecting property name")
    assert str(caught.value).endswith("; delete it")

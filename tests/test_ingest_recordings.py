"""New recordings into an existing run: stored once by content, encoded with the run's model without
retraining, retrained on request, and picked up once each from an inbox folder.

The recordings are small FIF files written here with MNE (32 DEAP channels at 128 Hz, two 63-s
trials each, a labels sidecar beside each). The helpers at the top are shared with the other
operations tests (failure safety, security, deployments).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import mne
import numpy as np
import pytest
import torch

from pipeline.analysis.factors import FactorRules
from pipeline.errors import InputError
from pipeline.models.configs import ClassifierConfig, TrainConfig
from pipeline.models.encoding import encode_frames
from pipeline.models.learn import LearnConfig, checkpoint_model_id, store_normaliser
from pipeline.models.presets import DEAP_FRAME_SHAPE, DeapPreset
from pipeline.models.state import load_vae
from pipeline.models.vae import VAEConfig
from pipeline.signal.config import PreprocessConfig
from pipeline.sources.raw import read_recording
from pipeline.sources.synthetic import generate_subject
from pipeline.sources.synthetic_spec import SyntheticDeapSpec
from pipeline.sources.trials import DEAP_CHANNELS, SFREQ, file_sha256
from pipeline.store.frames import FrameStore
from pipeline.store.ingest_eeg import deap_store_spec, ingest_trials, open_store, trials_to_frames
from pipeline.store.run_folder import store_path

TRIALS_PER_RECORDING = 2
TRIAL_SECONDS = 63.0
ONSET_GAP_SECONDS = 1.0
FRAMES_PER_TRIAL = 63


def tiny_preset() -> dict:
    """Run settings that train in seconds; the subject split needs the 3 subjects of ``base_recordings``.

    ``encode_batch_size`` of one trial's frames makes encoding write one trial at a time, so a
    test can stop it between two trials.
    """
    return DeapPreset(
        name="tiny",
        synthetic_subjects=3,
        learn=LearnConfig(
            vae=VAEConfig(input_shape=DEAP_FRAME_SHAPE, n_latents=3, beta=4.0),
            train=TrainConfig(epochs=2, batch_size=63, patience=2, seed=0, trials_per_read=4, device="cpu"),
            classifier=ClassifierConfig(hidden=4, epochs=2, batch_size=4, patience=2, seed=0, device="cpu"),
            split_protocol="subject",
            split_seed=0,
            encode_batch_size=FRAMES_PER_TRIAL,
        ),
        # One reported factor (none passes the threshold): the report's figures dominate its cost.
        rules=FactorRules(min_reported=1, influential_threshold_nats=1e3, n_permutations=20, n_seed_frames=2),
    ).model_dump(mode="json")


def write_recording(
    folder: Path,
    name: str,
    seed: int,
    n_trials: int = TRIALS_PER_RECORDING,
    extra_channels: tuple[str, ...] = (),
) -> Path:
    """A FIF recording of the 32 DEAP channels (plus ``extra_channels``) and its labels sidecar.

    Background noise plus a 10-Hz rhythm whose strength follows each trial's valence, so trials
    differ in a way the band images show; trials alternate between the high-valence-high-arousal
    and the low-low class. ``name`` must end in ``_eeg.fif`` (MNE's convention).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_samples = round((ONSET_GAP_SECONDS + n_trials * (TRIAL_SECONDS + ONSET_GAP_SECONDS)) * SFREQ)
    times = np.arange(n_samples) / SFREQ
    n_channels = len(DEAP_CHANNELS) + len(extra_channels)
    signals = 5e-6 * rng.standard_normal((n_channels, n_samples))
    # Trials alternate high-high and low-low, so every class present has trials in each subject.
    high = np.arange(n_trials) % 2 == 0
    valence = np.where(high, 7.0, 3.0) + rng.uniform(-0.5, 0.5, n_trials).round(1)
    arousal = np.where(high, 7.5, 2.5) + rng.uniform(-0.5, 0.5, n_trials).round(1)
    onsets = ONSET_GAP_SECONDS + np.arange(n_trials) * (TRIAL_SECONDS + ONSET_GAP_SECONDS)
    for onset, score in zip(onsets, valence, strict=True):
        inside = (times >= onset) & (times < onset + TRIAL_SECONDS)
        signals[:, inside] += score * 1e-6 * np.sin(2 * np.pi * 10.0 * times[inside])
    info = mne.create_info([*DEAP_CHANNELS, *extra_channels], SFREQ, "eeg")
    path = folder / name
    mne.io.RawArray(signals, info, verbose=False).save(path, overwrite=True, verbose=False)
    rows = "\n".join(f"{o:.3f},{v},{a}" for o, v, a in zip(onsets, valence, arousal, strict=True))
    sidecar = folder / (name.removesuffix(".fif") + "_labels.csv")
    sidecar.write_text("onset,valence,arousal\n" + rows + "\n", encoding="utf-8")
    return path


def base_recordings(folder: Path) -> list[Path]:
    """Three subjects' recordings: enough for the tiny preset's subject split."""
    return [write_recording(folder, f"sub-0{subject}_eeg.fif", seed=subject) for subject in (1, 2, 3)]


def stored_keys(out_dir: Path) -> list[tuple[str, int]]:
    """``(source sha256, trial)`` of every committed trial, one entry per row (duplicates would show)."""
    store = FrameStore.open(store_path(str(out_dir)))
    return [(str(sha), int(trial)) for sha, trial in zip(store.source_sha256, store.trial, strict=True)]


def expected_keys(recordings: list[Path]) -> set[tuple[str, int]]:
    """The keys of every trial of ``recordings`` (a one-file FIF is keyed by the SHA-256 of its bytes)."""
    return {(file_sha256(path), trial) for path in recordings for trial in range(TRIALS_PER_RECORDING)}


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def train_run(out_dir: Path, recordings: list[Path]) -> dict:
    """A run folder with trained models and a report, made by ``eegmi ingest --retrain``."""
    from flows.ingest import ingest_recordings

    return ingest_recordings(
        recordings=[str(path) for path in recordings],
        out_dir=str(out_dir),
        retrain=True,
        preset=tiny_preset(),
    )


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recordings")
    paths = {f"s{index}": path for index, path in enumerate(base_recordings(folder), start=1)}
    paths["s4"] = write_recording(folder, "sub-04_eeg.fif", seed=4)
    return paths


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory, recordings) -> Path:
    """A run trained on subjects 1-3; tests copy it before changing it."""
    out_dir = tmp_path_factory.mktemp("trained") / "run"
    train_run(out_dir, [recordings[key] for key in ("s1", "s2", "s3")])
    return out_dir


def _copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_recordings_are_stored_once_by_content_with_the_readers_frames(prefect_harness, tmp_path, recordings):
    from flows.ingest import ingest_recordings

    out_dir = tmp_path / "run"
    first = ingest_recordings(recordings=[str(recordings["s1"]), str(recordings["s2"])], out_dir=str(out_dir))
    assert first["n_trials_new"] == first["n_trials_stored"] == 2 * TRIALS_PER_RECORDING
    assert first["action"] == "stored only" and first["report_html"] is None

    store = FrameStore.open(store_path(str(out_dir)))
    assert store.attrs["data_kind"] == "raw"
    trials = read_recording(recordings["s1"])
    frames = trials_to_frames(trials, PreprocessConfig())
    for index, trial in enumerate(trials.trial):
        row = store.committed_rows()[
            np.flatnonzero((store.source_sha256 == trials.source_sha256) & (store.trial == trial))
        ]
        np.testing.assert_array_equal(store.read_frames(row)[0], frames[index], strict=True)

    # The same bytes under another name, and the same file again: nothing new is stored.
    renamed = tmp_path / "copy" / "sub-01-again_eeg.fif"
    renamed.parent.mkdir()
    shutil.copyfile(recordings["s1"], renamed)
    shutil.copyfile(
        recordings["s1"].with_name("sub-01_eeg_labels.csv"), renamed.with_name("sub-01-again_eeg_labels.csv")
    )
    again = ingest_recordings(recordings=[str(recordings["s1"]), str(renamed)], out_dir=str(out_dir))
    assert again["n_trials_new"] == 0
    keys = stored_keys(out_dir)
    assert len(keys) == len(set(keys)) == 2 * TRIALS_PER_RECORDING
    assert set(keys) == expected_keys([recordings["s1"], recordings["s2"]])


def test_recordings_join_real_data_stores_but_never_synthetic_ones(tmp_path, recordings):
    from pipeline.runs.recordings import recordings_store_kind

    config = PreprocessConfig()
    assert recordings_store_kind(str(tmp_path / "new")) == ("raw", config)

    open_store(str(tmp_path / "deap"), deap_store_spec(config, "deap-python"))
    assert recordings_store_kind(str(tmp_path / "deap")) == ("deap-python", config)

    synthetic_dir = str(tmp_path / "synthetic")
    store = open_store(synthetic_dir, deap_store_spec(config, "synthetic"))
    ingest_trials(store, generate_subject(SyntheticDeapSpec(n_subjects=1, n_trials=1), 1), config)
    with pytest.raises(InputError, match=r"frames\.zarr: holds synthetic data; recordings join only"):
        recordings_store_kind(synthetic_dir)


def test_a_synthetic_run_folder_refuses_recordings_and_keeps_its_store(prefect_harness, tmp_path, recordings):
    from flows.ingest import ingest_recordings

    out_dir = tmp_path / "synthetic"
    config = PreprocessConfig()
    store = open_store(str(out_dir), deap_store_spec(config, "synthetic"))
    ingest_trials(store, generate_subject(SyntheticDeapSpec(n_subjects=1, n_trials=1), 1), config)
    before = file_digests(out_dir / "frames.zarr")

    state = ingest_recordings(recordings=[str(recordings["s1"])], out_dir=str(out_dir), return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InputError) and "holds synthetic data" in str(error)
    assert file_digests(out_dir / "frames.zarr") == before


def test_new_recordings_are_encoded_with_the_existing_model_without_retraining(tmp_path, trained, recordings):
    from flows.ingest import ingest_recordings

    out_dir = _copy_run(trained, tmp_path)
    checkpoints_before = file_digests(out_dir / "checkpoints")
    report_before = json.loads((out_dir / "report.json").read_text())
    store_before = FrameStore.open(store_path(str(out_dir)))
    old_rows = store_before.committed_rows()
    old_mu, old_logvar = store_before.read_latents(old_rows)

    result = ingest_recordings(recordings=[str(recordings["s4"])], out_dir=str(out_dir))

    assert result["action"] == "encoded"
    assert result["n_trials_new"] == result["n_encoded"] == TRIALS_PER_RECORDING
    assert file_digests(out_dir / "checkpoints") == checkpoints_before
    store = FrameStore.open(store_path(str(out_dir)))
    np.testing.assert_array_equal(store.latent_rows(), store.committed_rows())
    mu, logvar = store.read_latents(old_rows)
    np.testing.assert_array_equal(mu, old_mu)
    np.testing.assert_array_equal(logvar, old_logvar)
    # The new trials' latents are the stored model's encoding of their frames.
    new_rows = np.setdiff1d(store.committed_rows(), old_rows)
    model = load_vae(out_dir / "checkpoints" / "vae")
    expected_mu, _ = encode_frames(model, store.frames, new_rows, normalise=store_normaliser(store))
    np.testing.assert_allclose(store.read_latents(new_rows)[0], expected_mu, rtol=1e-5, atol=1e-6)
    assert store.latent_model_id == checkpoint_model_id(out_dir / "checkpoints" / "vae")

    report = json.loads((out_dir / "report.json").read_text())
    assert report["source"]["n_trials"] == report_before["source"]["n_trials"] + TRIALS_PER_RECORDING
    assert report["source"]["kind"] == "raw"
    # Î is estimated on the training trials, which did not change: the same numbers, not a retrain.
    assert report["mi"]["per_factor_nats"] == report_before["mi"]["per_factor_nats"]
    assert report["classification"]["confusion"] == report_before["classification"]["confusion"]
    assert report["config"]["update"]["action"] == "encoded"

    # Nothing new: nothing is encoded or rewritten.
    report_bytes = (out_dir / "report.json").read_bytes()
    assert (
        ingest_recordings(recordings=[str(recordings["s4"])], out_dir=str(out_dir))["action"] == "unchanged"
    )
    assert (out_dir / "report.json").read_bytes() == report_bytes


def test_retrain_fits_the_models_again_on_every_stored_trial(tmp_path, trained, recordings):
    from flows.ingest import ingest_recordings

    out_dir = _copy_run(trained, tmp_path)
    old_model = checkpoint_model_id(out_dir / "checkpoints" / "vae")
    result = ingest_recordings(recordings=[str(recordings["s4"])], out_dir=str(out_dir), retrain=True)

    assert result["action"] == "retrained"
    store = FrameStore.open(store_path(str(out_dir)))
    split = store.attrs["split"]
    assert sorted(split["train"] + split["val"] + split["test"]) == store.committed_rows().tolist()
    assert checkpoint_model_id(out_dir / "checkpoints" / "vae") != old_model
    assert store.latent_model_id == checkpoint_model_id(out_dir / "checkpoints" / "vae")
    np.testing.assert_array_equal(store.latent_rows(), store.committed_rows())
    report = json.loads((out_dir / "report.json").read_text())
    # Without --preset the settings the run was trained with are used again.
    assert report["config"]["preset"] == tiny_preset()
    assert report["source"]["n_trials"] == 4 * TRIALS_PER_RECORDING
    assert not (out_dir / "checkpoints" / "update-in-progress.json").exists()


def test_a_seed_ensemble_is_retrained_and_encoded_with_every_seed(tmp_path, trained, recordings):
    """A run made with ``eegmi deap --seeds 2`` (its report says so): ``--retrain`` trains both seeds
    again, and new recordings are encoded with both, each into its own latents."""
    from flows.ingest import ingest_recordings

    out_dir = _copy_run(trained, tmp_path)
    report = json.loads((out_dir / "report.json").read_text())
    reference = report["config"]["preset"]["learn"]["train"]["seed"]
    report["stability"] = {**report["stability"], "n_seeds": 2, "reported_seed": reference}
    (out_dir / "report.json").write_text(json.dumps(report))
    checkpoints = out_dir / "checkpoints"
    retrained = ingest_recordings(recordings=[], out_dir=str(out_dir), retrain=True)
    assert retrained["action"] == "retrained"
    other = checkpoints / f"vae_seed{reference + 1}"
    report = json.loads((out_dir / "report.json").read_text())
    assert report["stability"]["seeds"] == [reference, reference + 1]
    before = file_digests(checkpoints)

    result = ingest_recordings(recordings=[str(recordings["s4"])], out_dir=str(out_dir))
    assert result["action"] == "encoded"
    assert file_digests(checkpoints) == before  # encoded, not retrained
    store = FrameStore.open(store_path(str(out_dir)))
    for group, directory in (("latents", checkpoints / "vae"), (f"latents_seed{reference + 1}", other)):
        np.testing.assert_array_equal(store.latent_rows(group), store.committed_rows())
        assert store.latent_model_id_of(group) == checkpoint_model_id(directory)
    report = json.loads((out_dir / "report.json").read_text())
    assert report["stability"]["n_seeds"] == 2
    assert report["source"]["n_trials"] == 4 * TRIALS_PER_RECORDING


def _stage_in_inbox(inbox: Path, recording: Path, name: str | None = None) -> Path:
    name = name or recording.name
    target = inbox / name
    shutil.copyfile(recording, target)
    sidecar = recording.with_name(recording.name.removesuffix(".fif") + "_labels.csv")
    shutil.copyfile(sidecar, inbox / (name.removesuffix(".fif") + "_labels.csv"))
    return target


def test_the_inbox_flow_picks_up_each_new_file_once(prefect_harness, tmp_path, recordings):
    import pipeline.runs.inbox
    from flows.ingest import ingest_inbox
    from pipeline.store.run_folder import INBOX_LEDGER_NAME

    inbox, out_dir = tmp_path / "inbox", tmp_path / "run"
    inbox.mkdir()
    _stage_in_inbox(inbox, recordings["s1"])
    _stage_in_inbox(inbox, recordings["s2"])
    (inbox / "notes.txt").write_text("not a recording")
    first = ingest_inbox(inbox_dir=str(inbox), out_dir=str(out_dir))
    assert (first["n_recordings"], first["n_skipped"], first["n_trials_new"]) == (2, 0, 4)

    ledger = json.loads((out_dir / INBOX_LEDGER_NAME).read_text())["files"]
    assert {entry["name"] for entry in ledger.values()} == {"sub-01_eeg.fif", "sub-02_eeg.fif"}

    # A new file, the bytes of a stored one under a new name, and a file still being copied.
    _stage_in_inbox(inbox, recordings["s3"])
    _stage_in_inbox(inbox, recordings["s1"], "sub-01-copy_eeg.fif")
    hidden = inbox / ".sub-04_eeg.fif.part"
    shutil.copyfile(recordings["s4"], hidden)
    second = ingest_inbox(inbox_dir=str(inbox), out_dir=str(out_dir))
    assert (second["n_recordings"], second["n_skipped"], second["n_trials_new"]) == (1, 3, 2)

    # Stored files are known by name, size and time: only the copy stored under no name is hashed.
    hashed = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            pipeline.runs.inbox, "file_sha256", lambda path: hashed.append(path.name) or file_sha256(path)
        )
        third = ingest_inbox(inbox_dir=str(inbox), out_dir=str(out_dir))
    assert (third["n_recordings"], third["n_trials_new"]) == (0, 0)
    assert hashed == ["sub-01-copy_eeg.fif"]
    keys = stored_keys(out_dir)
    assert len(keys) == len(set(keys)) == 6
    assert set(keys) == expected_keys([recordings[key] for key in ("s1", "s2", "s3")])


def test_an_inbox_file_that_fails_is_tried_again_and_young_files_wait(prefect_harness, tmp_path, recordings):
    from flows.deap import SourceFilesFailed
    from flows.ingest import ingest_inbox

    inbox, out_dir = tmp_path / "inbox", tmp_path / "run"
    inbox.mkdir()
    without_sidecar = inbox / "sub-02_eeg.fif"
    shutil.copyfile(recordings["s2"], without_sidecar)
    _stage_in_inbox(inbox, recordings["s1"])

    state = ingest_inbox(inbox_dir=str(inbox), out_dir=str(out_dir), return_state=True)
    failed = state.result(raise_on_failure=False)
    assert isinstance(failed, SourceFilesFailed)
    assert list(failed.failures) == [str(without_sidecar)]
    assert "labels sidecar not found" in failed.failures[str(without_sidecar)]
    assert len(stored_keys(out_dir)) == TRIALS_PER_RECORDING

    _stage_in_inbox(inbox, recordings["s2"])  # the sidecar arrives; the file is taken next time
    fresh = _stage_in_inbox(inbox, recordings["s3"])
    os.utime(fresh, (time.time(), time.time()))
    result = ingest_inbox(inbox_dir=str(inbox), out_dir=str(out_dir), settle_seconds=3600)
    assert result["n_recordings"] == 0, "files changed within the settle time must wait"
    old = time.time() - 7200
    for path in (without_sidecar, fresh):
        os.utime(path, (old, old))
    result = ingest_inbox(inbox_dir=str(inbox), out_dir=str(out_dir), settle_seconds=3600)
    assert (result["n_recordings"], result["n_trials_new"]) == (2, 2 * TRIALS_PER_RECORDING)
    assert set(stored_keys(out_dir)) == expected_keys([recordings[key] for key in ("s1", "s2", "s3")])


def test_the_ingest_command_reports_what_it_stored(prefect_harness, tmp_path, recordings, capsys):
    from flows.cli import EXIT_BAD_INPUT, EXIT_OK, main

    out_dir = tmp_path / "run"
    assert main(["ingest", str(recordings["s1"]), "--out", str(out_dir)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{store_path(str(out_dir))}: 2 trials stored (2 new from 1 recording(s))"
    hint = f"run `eegmi ingest --retrain --out {out_dir}` to train"
    assert lines[1] == f"no trained models in {out_dir} yet: {hint}"

    assert main(["ingest", "--out", str(out_dir)]) == EXIT_BAD_INPUT
    assert "nothing to do" in capsys.readouterr().err

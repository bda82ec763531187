"""The learn-and-rank stages on a small synthetic frame store, without Prefect: splits, normalisation,
β-VAE training (and its resume after a kill), encoding, Î, the emotion LSTM and the top-k table."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import pipeline.models.encoding
import pipeline.models.learn as learn
from pipeline.analysis.mi import estimate_mi
from pipeline.analysis.splits import Split, emotion_classes
from pipeline.analysis.tables import topk_table
from pipeline.errors import InputError
from pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.models.classifier import load_classifier
from pipeline.models.configs import ClassifierConfig, TrainConfig
from pipeline.models.encoding import encode_frames, encode_store, iter_encode_frames, read_frames
from pipeline.models.learn import (
    LearnConfig,
    checkpoint_model_id,
    fit_store_normalisation,
    make_split,
    reconstruction_mse,
    store_mi,
    store_normaliser,
    stored_split,
    train_store_classifier,
    train_store_vae,
)
from pipeline.models.sequence import evaluate_classifier
from pipeline.models.state import load_vae
from pipeline.models.vae import VAEConfig
from pipeline.signal.config import PreprocessConfig
from pipeline.signal.imaging import deap_imaging_operator
from pipeline.sources.synthetic import generate_subject
from pipeline.sources.synthetic_spec import SyntheticDeapSpec
from pipeline.store.frames import FrameStore
from pipeline.store.ingest_eeg import deap_store_spec, ingest_trials, open_store

N_SUBJECTS = 3
TRIALS_PER_SUBJECT = 8
N_TRIALS = N_SUBJECTS * TRIALS_PER_SUBJECT
N_LATENTS = 6
FRAMES_PER_TRIAL = 63
THRESHOLD = 5.0
CONFIG = LearnConfig(
    # β = 1 and a high learning rate: two epochs then already give factors that carry information.
    vae=VAEConfig(input_shape=(3, 32, 32), n_latents=N_LATENTS, beta=1.0),
    train=TrainConfig(epochs=2, batch_size=32, lr=3e-3, seed=1, trials_per_read=4, device="cpu"),
    classifier=ClassifierConfig(hidden=16, epochs=3, batch_size=8, seed=1, device="cpu"),
    class_threshold=THRESHOLD,
    encode_batch_size=256,
)
KILL_SCRIPT = Path(__file__).with_name("learn_kill_script.py")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The machine is shared; one thread also makes two runs of the same training bitwise equal."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    """A store of 3 synthetic subjects × 8 trials, split by trial and normalised; tests copy it."""
    out_dir = tmp_path_factory.mktemp("learn-base")
    config = PreprocessConfig()
    store = open_store(str(out_dir), deap_store_spec(config, "synthetic"))
    spec = SyntheticDeapSpec(n_subjects=N_SUBJECTS, n_trials=TRIALS_PER_SUBJECT, seed=5)
    for subject in range(1, N_SUBJECTS + 1):
        ingest_trials(store, generate_subject(spec, subject), config)
    fit_store_normalisation(store, make_split(store, "trial", seed=0, threshold=THRESHOLD))
    return Path(store.path)


def copy_store(source: Path, folder: Path) -> FrameStore:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, folder / source.name)
    return FrameStore.open(folder / source.name, writable=True)


class RecordingFrames:
    """A frame array that logs the index of every read, to show which trials a stage touches."""

    def __init__(self, frames, log: list):
        self._frames = frames
        self.shape = frames.shape
        self._log = log

    def __getitem__(self, index):
        self._log.append(index)
        return self._frames[index]


@pytest.fixture(scope="module")
def trained(base_store, tmp_path_factory) -> dict:
    """The tiny β-VAE trained on a copy of the store whose test trials hold only NaN, every read logged."""
    folder = tmp_path_factory.mktemp("learn-trained")
    poisoned = copy_store(base_store, folder)
    split = stored_split(poisoned)
    for row in split.test:
        poisoned.frames[int(row)] = np.full(poisoned.frame_shape, np.nan, dtype=np.float32)
    reads: list = []
    history: list[dict] = []
    plain_frames = FrameStore.frames.fget
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            FrameStore, "frames", property(lambda store: RecordingFrames(plain_frames(store), reads))
        )
        result = train_store_vae(poisoned, CONFIG, folder / "checkpoints", progress=history.append)
    return {
        "poisoned": poisoned,
        "split": split,
        "reads": reads,
        "history": history,
        "result": result,
        "checkpoint_dir": folder / "checkpoints",
    }


@pytest.fixture(scope="module")
def encoded(base_store, trained, tmp_path_factory) -> dict:
    """A copy of the clean store with every trial encoded by the trained model."""
    store = copy_store(base_store, tmp_path_factory.mktemp("learn-encoded"))
    model = load_vae(trained["checkpoint_dir"], "best")
    encode_store(
        store,
        model,
        checkpoint_model_id(trained["checkpoint_dir"]),
        normalise=store_normaliser(store),
        batch_size=256,
    )
    return {"store": store, "model": model, "split": stored_split(store)}


# ---------------------------------------------------------------------------------------- splits


def test_trial_split_is_stratified_eighty_ten_ten_within_every_class(base_store):
    store = FrameStore.open(base_store)
    split = make_split(store, "trial", seed=0, threshold=THRESHOLD)
    classes = emotion_classes(store.labels, THRESHOLD)
    rows = store.committed_rows()
    assert split.protocol == "trial"
    for value in np.unique(classes):
        members = rows[classes == value]
        counts = [np.isin(members, part).sum() for part in (split.train, split.val, split.test)]
        assert sum(counts) == members.size
        # Each part gets its share of the class, to the nearest whole trial.
        assert abs(counts[1] - 0.1 * members.size) <= 0.5
        assert abs(counts[2] - 0.1 * members.size) <= 0.5
        assert abs(counts[0] - 0.8 * members.size) <= 1.0


def test_subject_split_holds_whole_subjects_out(base_store):
    store = FrameStore.open(base_store)
    split = make_split(store, "subject", seed=2, threshold=THRESHOLD)
    subject_of_row = dict(zip(store.committed_rows().tolist(), store.subject.tolist(), strict=True))
    subjects = [{subject_of_row[int(row)] for row in part} for part in (split.train, split.val, split.test)]
    assert all(len(part) == 1 for part in subjects)
    assert set.union(*subjects) == set(range(1, N_SUBJECTS + 1))
    for part, part_subjects in zip((split.train, split.val, split.test), subjects, strict=True):
        (subject,) = part_subjects
        assert part.size == np.count_nonzero(store.subject == subject) == TRIALS_PER_SUBJECT


@pytest.mark.parametrize(("protocol", "seed"), [("trial", 0), ("trial", 7), ("subject", 0), ("subject", 4)])
def test_every_trial_lands_in_exactly_one_part(base_store, protocol, seed):
    store = FrameStore.open(base_store)
    split = make_split(store, protocol, seed=seed, threshold=THRESHOLD)
    every_row = np.concatenate([split.train, split.val, split.test])
    assert np.array_equal(np.sort(every_row), store.committed_rows())
    assert split.train.size and split.val.size and split.test.size


@pytest.mark.parametrize("protocol", ["trial", "subject"])
def test_the_split_does_not_depend_on_the_order_files_were_stored_in(tmp_path, protocol):
    """Parallel ingestion stores files in the order their tasks finish; the split must not notice."""
    rng = np.random.default_rng(5)
    files = [
        {
            "frames": rng.standard_normal((10, 2, 3, 4, 4)).astype(np.float32),
            "labels": rng.uniform(1, 9, (10, 4)).astype(np.float32),
            "subject": np.full(10, subject, dtype=np.int32),
            "trial": np.arange(10, dtype=np.int32),
            "source": f"s{subject:02d}.dat",
            "source_sha256": f"{subject:064x}",
        }
        for subject in (1, 2, 3, 4)
    ]
    keys = []
    for name, file_order in (("forward", [0, 1, 2, 3]), ("shuffled", [2, 0, 3, 1])):
        store = FrameStore.create_or_open(
            tmp_path / name, config_hash="cfg", attrs={}, frame_shape=(2, 3, 4, 4), label_width=4
        )
        for index in file_order:
            store.add_trials(**files[index])
        split = make_split(store, protocol, seed=3, threshold=THRESHOLD)
        position = {int(row): i for i, row in enumerate(store.committed_rows())}
        keys.append(
            [
                [
                    (int(store.subject[position[int(row)]]), int(store.trial[position[int(row)]]))
                    for row in part
                ]
                for part in (split.train, split.val, split.test)
            ]
        )
    # The same trials in the same order (the order training shuffles from), whatever the rows.
    assert keys[0] == keys[1]
    assert sum(len(part) for part in keys[0]) == 40


def test_an_unknown_split_protocol_is_refused(base_store):
    with pytest.raises(InputError, match="'frames' must be 'trial' or 'subject'"):
        make_split(FrameStore.open(base_store), "frames", seed=0, threshold=THRESHOLD)


# --------------------------------------------------------------------------------- normalisation


def test_band_statistics_come_from_the_training_trials_only(base_store, tmp_path):
    store = copy_store(base_store, tmp_path)
    split = stored_split(store)
    recorded = store.attrs["normalisation"]
    assert recorded["fitted_on"] == {
        "split": "train",
        "protocol": "trial",
        "seed": 0,
        "n_trials": split.train.size,
    }
    assert store.attrs["split"] == split.to_dict()

    mask = deap_imaging_operator(PreprocessConfig()).mask
    training_pixels = store.read_frames(split.train).astype(np.float64)[..., mask]  # (n, 63, 3, pixels)
    bands_last = np.moveaxis(training_pixels, 2, -1).reshape(-1, 3)
    np.testing.assert_allclose(recorded["mean"], bands_last.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(recorded["std"], bands_last.std(axis=0), rtol=1e-10)

    for row in (*split.test, *split.val):
        store.frames[int(row)] = store.frames[int(row)] * 3.0 + 7.0
    assert fit_store_normalisation(store, split).to_dict() == recorded

    store.frames[int(split.train[0])] = store.frames[int(split.train[0])] + 1.0
    assert not np.allclose(fit_store_normalisation(store, split).mean, recorded["mean"])


def test_a_second_protocol_keeps_its_own_split_statistics_and_latents(base_store, tmp_path):
    """``--protocol both``: the subject protocol's normalisation never sees its test subjects, and
    the two models' latents live side by side in the store."""
    store = copy_store(base_store, tmp_path)
    trial_split, trial_statistics = stored_split(store), store.attrs["normalisation"]
    subject_split = make_split(store, "subject", seed=0, threshold=THRESHOLD)
    fit_store_normalisation(store, subject_split, slot="subject")

    assert learn.secondary_protocols(store) == ["subject"]
    assert stored_split(store).to_dict() == trial_split.to_dict()
    assert store.attrs["normalisation"] == trial_statistics
    stored = stored_split(store, "subject")
    subject_of_row = dict(zip(store.committed_rows().tolist(), store.subject.tolist(), strict=True))
    train_subjects, val_subjects, test_subjects = (
        {subject_of_row[int(row)] for row in part} for part in (stored.train, stored.val, stored.test)
    )
    assert train_subjects.isdisjoint(test_subjects) and val_subjects.isdisjoint(test_subjects)
    statistics = store.attrs["protocols"]["subject"]["normalisation"]
    assert statistics["fitted_on"]["protocol"] == "subject"
    assert statistics["fitted_on"]["n_trials"] == stored.train.size == TRIALS_PER_SUBJECT
    mask = deap_imaging_operator(PreprocessConfig()).mask
    training_pixels = np.moveaxis(store.read_frames(stored.train).astype(np.float64)[..., mask], 2, -1)
    np.testing.assert_allclose(statistics["mean"], training_pixels.reshape(-1, 3).mean(axis=0), rtol=1e-10)
    block = store.read_frames(stored.test[:1])
    assert not np.allclose(store_normaliser(store, "subject")(block), store_normaliser(store)(block))

    rows = store.committed_rows()
    shape = (rows.size, FRAMES_PER_TRIAL, N_LATENTS)
    store.write_latents(rows, np.zeros(shape), np.zeros(shape), model_id="trial-model")
    store.write_latents(rows, np.ones(shape), np.zeros(shape), model_id="subject", group="latents_subject")
    assert store.latent_model_id == "trial-model"
    assert store.latent_model_id_of("latents_subject") == "subject"
    assert np.all(store.read_latents(rows)[0] == 0)
    assert np.all(store.read_latents(rows, "latents_subject")[0] == 1)

    learn.keep_secondary_protocols(store, [])
    assert learn.secondary_protocols(store) == [] and store.latent_rows("latents_subject").size == 0
    assert store.latent_model_id == "trial-model" and stored_split(store).to_dict() == trial_split.to_dict()
    with pytest.raises(InputError, match="no split yet"):
        stored_split(store, "subject")


def test_the_scalp_mask_is_built_once_per_store_handle(base_store, tmp_path, monkeypatch):
    built = []

    def counting_operator(config):
        built.append(config)
        return deap_imaging_operator(config)

    monkeypatch.setattr(learn, "deap_imaging_operator", counting_operator)
    store = FrameStore.open(base_store)
    normaliser = store_normaliser(store)
    block = store.read_frames(store.committed_rows()[:2])
    first = normaliser(block)
    assert np.array_equal(store_normaliser(store)(block), first)
    mask = learn.frame_mask(store)
    assert len(built) == 1 and mask.sum() == deap_imaging_operator(PreprocessConfig()).mask.sum() < mask.size
    assert not mask.flags.writeable  # shared by every caller: nobody may change it
    # Another handle (another store, or the same one reopened) builds its own.
    learn.frame_mask(FrameStore.open(base_store))
    assert len(built) == 2


def test_run_protocols_lists_the_main_protocol_first():
    assert learn.run_protocols("both") == ("trial", "subject")
    assert learn.run_protocols("subject") == ("subject",)
    with pytest.raises(InputError, match="protocol"):
        learn.run_protocols("frames")


# ------------------------------------------------------------------------------------------ VAE


def test_the_vae_reads_training_and_validation_trials_only(trained):
    split = trained["split"]
    read_rows = np.array(trained["reads"])
    assert read_rows.dtype.kind == "i"  # whole trials, never slices of frames
    assert set(read_rows.tolist()) == set(split.train.tolist()) | set(split.val.tolist())
    assert not np.isin(read_rows, split.test).any()
    # The test trials really are unreadable: any read of one would have stopped training.
    with pytest.raises(InputError, match="NaN"):
        read_frames(trained["poisoned"].frames, split.test[:1])

    history = trained["history"]
    assert [record["epoch"] for record in history] == [1, 2]
    assert all(np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"]) for record in history)
    _, metadata = load_checkpoint(trained["checkpoint_dir"], "last")
    assert metadata["train_rows"] == split.train.tolist()
    assert metadata["val_rows"] == split.val.tolist()
    assert metadata["monitor"] == "val_loss"


def test_training_without_normalisation_statistics_is_refused(base_store, tmp_path):
    store = copy_store(base_store, tmp_path)
    del zarr.open_group(store.path, mode="r+").attrs["normalisation"]
    with pytest.raises(InputError, match="no normalisation statistics"):
        train_store_vae(FrameStore.open(store.path), CONFIG, tmp_path / "checkpoints")


# -------------------------------------------------------------------------------------- encoding
# The stored latents are compared bitwise with encode_frames: the same model encodes the same rows in
# batches of the same size in this process, so the same kernels run on the same inputs.


def test_encode_store_writes_every_committed_trial_once(base_store, trained, tmp_path):
    store = copy_store(base_store, tmp_path)
    model = load_vae(trained["checkpoint_dir"], "best")
    model_id = checkpoint_model_id(trained["checkpoint_dir"])

    assert encode_store(store, model, model_id, normalise=store_normaliser(store), batch_size=256) == N_TRIALS
    assert np.array_equal(store.latent_rows(), store.committed_rows())
    assert store.latent_model_id == model_id
    rows = store.committed_rows()
    mu, logvar = store.read_latents(rows)
    expected_mu, expected_logvar = encode_frames(model, store.frames, rows, 256, store_normaliser(store))
    np.testing.assert_array_equal(mu, expected_mu)
    np.testing.assert_array_equal(logvar, expected_logvar)

    # Same model again: nothing to do, nothing changed.
    assert encode_store(store, model, model_id, normalise=store_normaliser(store), batch_size=256) == 0
    np.testing.assert_array_equal(store.read_latents(rows)[0], mu)


def test_encode_store_resumes_where_an_interrupted_run_stopped(base_store, trained, tmp_path, monkeypatch):
    store = copy_store(base_store, tmp_path)
    model = load_vae(trained["checkpoint_dir"], "best")
    model_id = checkpoint_model_id(trained["checkpoint_dir"])

    def first_group_then_crash(*args, **kwargs):
        yield next(iter_encode_frames(*args, **kwargs))
        raise RuntimeError("killed")

    monkeypatch.setattr(pipeline.models.encoding, "iter_encode_frames", first_group_then_crash)
    with pytest.raises(RuntimeError, match="killed"):
        encode_store(store, model, model_id, normalise=store_normaliser(store), batch_size=256)
    trials_per_group = 256 // FRAMES_PER_TRIAL
    assert np.array_equal(store.latent_rows(), store.committed_rows()[:trials_per_group])

    monkeypatch.setattr(pipeline.models.encoding, "iter_encode_frames", iter_encode_frames)
    assert (
        encode_store(store, model, model_id, normalise=store_normaliser(store), batch_size=256)
        == N_TRIALS - trials_per_group
    )
    rows = store.committed_rows()
    expected_mu, _ = encode_frames(model, store.frames, rows, 256, store_normaliser(store))
    np.testing.assert_array_equal(store.read_latents(rows)[0], expected_mu)


def test_encode_store_replaces_the_latents_of_another_model(base_store, trained, tmp_path):
    store = copy_store(base_store, tmp_path)
    rows = store.committed_rows()
    trained_model = load_vae(trained["checkpoint_dir"], "best")
    encode_store(store, trained_model, "trained", normalise=store_normaliser(store), batch_size=256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        other_model = CONFIG.vae.build().eval()

    assert (
        encode_store(store, other_model, "other", normalise=store_normaliser(store), batch_size=256)
        == N_TRIALS
    )
    assert store.latent_model_id == "other"
    other_mu, _ = encode_frames(other_model, store.frames, rows, 256, store_normaliser(store))
    trained_mu, _ = encode_frames(trained_model, store.frames, rows, 256, store_normaliser(store))
    np.testing.assert_array_equal(store.read_latents(rows)[0], other_mu)
    assert not np.allclose(other_mu, trained_mu)


def test_encode_store_replaces_latents_written_without_a_model_id(base_store, trained, tmp_path):
    store = copy_store(base_store, tmp_path)
    rows = store.committed_rows()
    store.write_latents(
        rows[:2], np.zeros((2, FRAMES_PER_TRIAL, N_LATENTS)), np.zeros((2, FRAMES_PER_TRIAL, N_LATENTS))
    )
    model = load_vae(trained["checkpoint_dir"], "best")
    assert (
        encode_store(store, model, "trained", normalise=store_normaliser(store), batch_size=256) == N_TRIALS
    )
    expected_mu, _ = encode_frames(model, store.frames, rows, 256, store_normaliser(store))
    np.testing.assert_array_equal(store.read_latents(rows)[0], expected_mu)


def test_model_id_follows_the_weights_not_the_checkpoint_files(trained, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    shutil.copytree(trained["checkpoint_dir"], checkpoint_dir)
    model_id = checkpoint_model_id(checkpoint_dir)
    pointer = (checkpoint_dir / "best.json").read_bytes()

    # Resuming a finished run re-saves the same best weights under a new file name.
    resumed = train_store_vae(trained["poisoned"], CONFIG, checkpoint_dir, resume=True)
    assert len(resumed.history) == CONFIG.train.epochs
    assert (checkpoint_dir / "best.json").read_bytes() != pointer
    assert checkpoint_model_id(checkpoint_dir) == model_id

    tensors, metadata = load_checkpoint(checkpoint_dir, "best")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-6
    save_checkpoint(tmp_path / "changed", "best", tensors, metadata)
    assert checkpoint_model_id(tmp_path / "changed") != model_id
    with pytest.raises(InputError, match="no such checkpoint"):
        checkpoint_model_id(tmp_path / "missing")


# ------------------------------------------------------------------------------------ Î and top-k


def test_store_mi_streams_to_the_estimate_of_all_latents_at_once(encoded):
    store, split = encoded["store"], encoded["split"]
    streamed = store_mi(store, split.train, trials_per_read=3)
    whole = estimate_mi(*store.read_latents(split.train))
    assert streamed.n_samples == split.train.size * FRAMES_PER_TRIAL
    np.testing.assert_allclose(streamed.per_factor_nats, whole.per_factor_nats, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(streamed.variance, whole.variance, rtol=1e-12)
    np.testing.assert_allclose(streamed.kl_prior_nats, whole.kl_prior_nats, rtol=1e-12)
    assert np.array_equal(streamed.ranking, whole.ranking)
    assert streamed.total_nats == pytest.approx(whole.total_nats, rel=1e-12)


def test_topk_table_of_the_trained_model(encoded):
    store, model, split = encoded["store"], encoded["model"], encoded["split"]
    estimate = store_mi(store, split.train)
    rows = topk_table(
        estimate, reconstruction_mse=lambda keep: reconstruction_mse(model, store, split.test, keep)
    )
    totals = [row["total_mi_nats"] for row in rows]
    assert rows[0]["percent"] == 100 and rows[-1]["percent"] == 0
    assert totals[0] == pytest.approx(estimate.total_nats) and totals[-1] == 0.0
    assert np.all(np.diff(totals) <= 0)
    assert rows[-1]["mse"] >= rows[0]["mse"] > 0

    # The 1-factor row by hand: decode μ with all but the top factor zeroed, compare on the scalp.
    keep = np.zeros(N_LATENTS, dtype=bool)
    keep[estimate.ranking[0]] = True
    frames = read_frames(store.frames, split.test, store_normaliser(store)).reshape(-1, 3, 32, 32)
    with torch.no_grad():
        mu, _ = model.encode(torch.from_numpy(frames))
        decoded = model.decode(mu * torch.from_numpy(keep).float()).numpy()
    scalp = deap_imaging_operator(PreprocessConfig()).mask
    by_hand = np.mean(((decoded - frames) ** 2)[..., scalp], dtype=np.float64)
    one_factor = next(row for row in rows if row["n_factors"] == 1)
    assert one_factor["mse"] == pytest.approx(by_hand, rel=1e-5)


def test_reconstruction_error_of_no_trials_is_refused(encoded):
    with pytest.raises(InputError, match="rows"):
        reconstruction_mse(
            encoded["model"], encoded["store"], np.array([], dtype=np.int64), np.ones(N_LATENTS, bool)
        )


# ------------------------------------------------------------------------------------------ LSTM


def test_the_lstm_learns_from_training_and_validation_sequences_only(encoded, tmp_path, monkeypatch):
    store, split = encoded["store"], encoded["split"]
    seen: dict = {}
    plain_train_classifier = learn.train_classifier

    def spy(train_x, train_y, val_x, val_y, **kwargs):
        seen.update(train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y)
        return plain_train_classifier(train_x, train_y, val_x, val_y, **kwargs)

    monkeypatch.setattr(learn, "train_classifier", spy)
    model, evaluation = train_store_classifier(store, CONFIG, tmp_path)

    classes = emotion_classes(store.labels, THRESHOLD)
    np.testing.assert_array_equal(seen["train_x"], store.read_latents(split.train)[0])
    np.testing.assert_array_equal(seen["val_x"], store.read_latents(split.val)[0])
    np.testing.assert_array_equal(seen["train_y"], classes[split.train])
    np.testing.assert_array_equal(seen["val_y"], classes[split.val])

    test_mu = store.read_latents(split.test)[0]
    assert evaluation == evaluate_classifier(model, test_mu, classes[split.test])
    assert evaluation["n"] == split.test.size == int(np.sum(evaluation["confusion"]))
    saved = load_classifier(tmp_path / "checkpoints", "classifier")
    assert evaluate_classifier(saved, test_mu, classes[split.test]) == evaluation


# ------------------------------------------------------------------------------------ kill/resume


# Bitwise equality is right here: the same training code runs on the same machine with one torch
# thread in the killed subprocess and in this process.
def test_a_killed_vae_training_resumes_to_the_uninterrupted_weights_and_ranking(
    base_store, tmp_path, one_torch_thread
):
    store = copy_store(base_store, tmp_path / "run")
    # A hand-made split with 3 training trials keeps the three runs below short.
    rows = store.committed_rows()
    fit_store_normalisation(store, Split(rows[:3], rows[3:5], rows[5:], protocol="trial", seed=0))
    config = LearnConfig(
        vae=CONFIG.vae,
        train=TrainConfig(epochs=4, batch_size=32, lr=3e-3, seed=4, trials_per_read=2, device="cpu"),
        classifier=CONFIG.classifier,
    )
    killed_dir, fresh_dir = tmp_path / "killed", tmp_path / "fresh"

    command = [
        sys.executable,
        str(KILL_SCRIPT),
        store.path,
        str(killed_dir),
        json.dumps(config.model_dump(mode="json")),
    ]
    printed = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        for line in child.stdout:
            printed.append(json.loads(line.split(" ", 2)[2]))
            if printed[-1]["epoch"] == 2:
                child.send_signal(signal.SIGKILL)
                break
    assert child.returncode == -signal.SIGKILL
    _, metadata = load_checkpoint(killed_dir, "last")
    # At least epoch 2 was checkpointed, and the kill came before the run's end.
    assert 2 <= metadata["epoch"] < config.train.epochs

    resumed = train_store_vae(store, config, killed_dir, resume=True)
    uninterrupted = train_store_vae(store, config, fresh_dir)

    def losses(history):
        return [(record["train_loss"], record["val_loss"]) for record in history]

    assert losses(resumed.history[:2]) == losses(printed[:2])
    assert losses(resumed.history) == losses(uninterrupted.history)
    for which in ("best", "last"):
        resumed_state = load_vae(killed_dir, which).state_dict()
        fresh_state = load_vae(fresh_dir, which).state_dict()
        assert all(torch.equal(resumed_state[key], fresh_state[key]) for key in fresh_state)

    split = stored_split(store)
    estimates = []
    for checkpoint_dir in (killed_dir, fresh_dir):
        encode_store(
            store,
            load_vae(checkpoint_dir),
            checkpoint_model_id(checkpoint_dir),
            normalise=store_normaliser(store),
        )
        estimates.append(store_mi(store, split.train))
    assert np.array_equal(estimates[0].ranking, estimates[1].ranking)
    np.testing.assert_array_equal(estimates[0].per_factor_nats, estimates[1].per_factor_nats)

"""VAE training: streaming reads, determinism, resume after a crash or SIGKILL, divergence, checkpoints."""

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import zarr

from pipeline.analysis.splits import Split
from pipeline.errors import InputError
from pipeline.models.checkpoint import load_checkpoint
from pipeline.models.configs import TrainConfig
from pipeline.models.early_stopping import TrainingDiverged
from pipeline.models.encoding import encode_frames, iter_encode_frames, read_frames
from pipeline.models.learn import train_split_vae
from pipeline.models.state import load_vae
from pipeline.models.training import train_vae
from pipeline.models.vae import BetaVAE, VAEConfig

N_TRIALS, N_FRAMES = 10, 12
TRAIN_ROWS, VAL_ROWS = np.arange(8), np.array([8, 9])
MODEL = VAEConfig((3, 32, 32), n_latents=8)
SCRIPT = Path(__file__).with_name("train_script.py")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _structured_frames(n_trials=N_TRIALS, n_frames=N_FRAMES, seed=0):
    """Frames spanned by three smooth patterns: a low-dimensional signal a VAE can learn."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(-1, 1, 32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    patterns = np.stack(
        [np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.2) for cx, cy in [(-0.5, 0), (0.5, 0), (0, 0.6)]]
    )
    patterns = np.stack(
        [patterns, patterns[[1, 2, 0]], patterns[[2, 0, 1]]], axis=1
    )  # (3 patterns, 3 bands, 32, 32)
    weights = rng.normal(size=(n_trials, n_frames, 3))
    frames = np.einsum("tfp,pchw->tfchw", weights, patterns) + 0.05 * rng.normal(
        size=(n_trials, n_frames, 3, 32, 32)
    )
    return frames.astype(np.float32)


def _config(epochs=4, **changes):
    values = {"epochs": epochs, "batch_size": 32, "lr": 2e-3, "patience": 10, "seed": 7, "trials_per_read": 3}
    return TrainConfig(**{**values, "device": "cpu", **changes})


def _weights(model):
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _without_seconds(history):
    return [{key: value for key, value in record.items() if key != "seconds"} for record in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: four epochs in one go under the default settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("uninterrupted")
    yield train_vae(_structured_frames(), TRAIN_ROWS, VAL_ROWS, MODEL, _config(), directory)
    torch.set_num_threads(threads)


class _RecordingArray:
    """A read-only frame array that records which trials were read."""

    def __init__(self, data):
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.reads: list[int] = []

    def __getitem__(self, index):
        assert isinstance(index, int), f"frames must be read trial by trial, got {index!r}"
        self.reads.append(index)
        return self.data[index]


def test_training_reduces_the_loss_and_reads_only_its_trials(tmp_path):
    frames = _RecordingArray(_structured_frames(n_frames=21))
    records = []
    config = _config(batch_size=8, lr=1e-3)
    result = train_vae(frames, TRAIN_ROWS, VAL_ROWS, MODEL, config, tmp_path, progress=records.append)
    # Each epoch reads every training and validation trial exactly once, and nothing else.
    assert np.bincount(frames.reads).tolist() == [4] * N_TRIALS
    # The untrained model's validation loss is the baseline the trained one must clearly beat.
    untrained = train_vae(
        frames, TRAIN_ROWS, VAL_ROWS, MODEL, _config(epochs=1, lr=1e-30), tmp_path / "untrained"
    )
    val_losses = [record["val_loss"] for record in result.history]
    assert result.best_loss == min(val_losses) < 0.85 * untrained.history[0]["val_loss"]
    assert min(record["train_loss"] for record in result.history[1:]) < 0.85 * result.history[0]["train_loss"]
    assert records == result.history
    assert set(records[0]) == {"epoch", "train_loss", "reconstruction", "kl", "val_loss", "seconds"}
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    _assert_same_weights(_weights(result.model), _weights(load_vae(tmp_path, "best")))


def test_two_runs_with_one_seed_are_bitwise_equal_and_another_seed_differs(tmp_path):
    frames = _structured_frames()
    first = train_vae(frames, TRAIN_ROWS, VAL_ROWS, MODEL, _config(epochs=2), tmp_path / "a")
    second = train_vae(frames, TRAIN_ROWS, VAL_ROWS, MODEL, _config(epochs=2), tmp_path / "b")
    _assert_same_weights(_weights(first.model), _weights(second.model))
    assert _without_seconds(first.history) == _without_seconds(second.history)
    other = train_vae(frames, TRAIN_ROWS, VAL_ROWS, MODEL, _config(epochs=2, seed=8), tmp_path / "c")
    assert other.history[0]["train_loss"] != first.history[0]["train_loss"]


class _Crash(Exception):
    pass


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path):
    data = _structured_frames()
    frames = zarr.create_array(
        tmp_path / "frames.zarr", shape=data.shape, chunks=(1, *data.shape[1:]), dtype="f4"
    )
    frames[:] = data
    uninterrupted = train_vae(frames, TRAIN_ROWS, VAL_ROWS, MODEL, _config(), tmp_path / "full")

    def crash_after_second_epoch(record):
        if record["epoch"] == 2:
            raise _Crash

    with pytest.raises(_Crash):
        train_vae(
            frames,
            TRAIN_ROWS,
            VAL_ROWS,
            MODEL,
            _config(),
            tmp_path / "crashed",
            progress=crash_after_second_epoch,
        )
    _, metadata = load_checkpoint(tmp_path / "crashed", "last")
    assert metadata["epoch"] == 2
    epochs_run = []
    resumed = train_vae(
        frames, TRAIN_ROWS, VAL_ROWS, MODEL, _config(), tmp_path / "crashed", resume=True,
        progress=lambda record: epochs_run.append(record["epoch"]),
    )  # fmt: skip
    assert epochs_run == [3, 4]
    _assert_same_weights(_weights(uninterrupted.model), _weights(resumed.model))
    assert _without_seconds(uninterrupted.history) == _without_seconds(resumed.history)
    last_full, _ = load_checkpoint(uninterrupted.checkpoint_dir, "last")
    last_resumed, _ = load_checkpoint(tmp_path / "crashed", "last")
    _assert_same_weights(last_full, last_resumed)  # model, best model and Adam state alike

    with pytest.raises(InputError, match=r"lr=0\.002"):
        train_vae(frames, TRAIN_ROWS, VAL_ROWS, MODEL, _config(lr=1e-3), tmp_path / "crashed", resume=True)
    with pytest.raises(InputError, match="train_rows"):
        train_vae(frames, TRAIN_ROWS[1:], VAL_ROWS, MODEL, _config(), tmp_path / "crashed", resume=True)


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path, uninterrupted):
    frames = _structured_frames()
    np.save(tmp_path / "frames.npy", frames)
    settings = {
        "model_config": MODEL.model_dump(mode="json"),
        "train_config": _config().model_dump(mode="json"),
        "train_rows": TRAIN_ROWS.tolist(),
        "val_rows": VAL_ROWS.tolist(),
    }
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    checkpoints = tmp_path / "killed"
    command = [
        sys.executable,
        str(SCRIPT),
        str(tmp_path / "frames.npy"),
        str(checkpoints),
        str(tmp_path / "settings.json"),
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if line.strip() == "epoch 2":
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    _, metadata = load_checkpoint(checkpoints, "last")
    assert 2 <= metadata["epoch"] < 4  # killed before the end

    resumed = train_vae(frames, TRAIN_ROWS, VAL_ROWS, MODEL, _config(), checkpoints, resume=True)
    _assert_same_weights(_weights(uninterrupted.model), _weights(resumed.model))
    assert _without_seconds(uninterrupted.history) == _without_seconds(resumed.history)
    # last and best, each a pointer and a tensor file; no temporary or superseded files remain.
    assert sorted(path.suffix for path in checkpoints.iterdir()) == [
        ".json",
        ".json",
        ".safetensors",
        ".safetensors",
    ]


def test_early_stopping_stops_after_patience_and_a_resume_adds_nothing(tmp_path):
    frames = _structured_frames()
    # A learning rate far below float32 resolution leaves the weights, hence the loss, unchanged.
    config = _config(epochs=10, lr=1e-30, patience=2)
    result = train_vae(frames, TRAIN_ROWS, VAL_ROWS, MODEL, config, tmp_path)
    assert result.stopped_early
    assert [record["epoch"] for record in result.history] == [1, 2, 3]
    assert result.best_epoch == 1
    again = train_vae(frames, TRAIN_ROWS, VAL_ROWS, MODEL, config, tmp_path, resume=True)
    assert _without_seconds(again.history) == _without_seconds(result.history)


def test_without_validation_trials_the_training_loss_is_monitored(tmp_path):
    result = train_vae(_structured_frames(), TRAIN_ROWS[:4], [], MODEL, _config(epochs=2), tmp_path)
    assert result.monitor == "train_loss"
    assert all(record["val_loss"] is None for record in result.history)
    assert result.best_loss == min(record["train_loss"] for record in result.history)


def test_a_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, uninterrupted
):
    frames = _structured_frames()
    poisoned = {"on": False}
    original_loss = BetaVAE.loss

    def loss_that_turns_nan(self, x, generator=None, kl_weight=1.0):
        terms = original_loss(self, x, generator, kl_weight)
        if poisoned["on"]:
            terms["total"] = terms["total"] * float("nan")
        return terms

    def poison_after_second_epoch(record):
        poisoned["on"] = record["epoch"] == 2

    monkeypatch.setattr(BetaVAE, "loss", loss_that_turns_nan)
    with pytest.raises(
        TrainingDiverged, match=r"nan at epoch 3, batch 1.*last good checkpoint \(epoch 2\)"
    ) as caught:
        train_vae(
            frames, TRAIN_ROWS, VAL_ROWS, MODEL, _config(), tmp_path, progress=poison_after_second_epoch
        )
    assert (caught.value.epoch, caught.value.batch, caught.value.last_good_epoch) == (3, 1, 2)
    monkeypatch.setattr(BetaVAE, "loss", original_loss)

    _, metadata = load_checkpoint(tmp_path, "last")
    # The kept state is epoch 2 of the same run: its losses are those of the clean run.
    assert metadata["epoch"] == 2
    assert _without_seconds(metadata["history"]) == _without_seconds(uninterrupted.history[:2])
    kept = load_vae(tmp_path, "last")
    assert all(torch.isfinite(value).all() for value in kept.state_dict().values())


def test_crafted_checkpoints_are_refused_without_running_anything(tmp_path):
    train_vae(_structured_frames(), TRAIN_ROWS, VAL_ROWS, MODEL, _config(epochs=1), tmp_path)
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    exploit = pickle.dumps(Exploit())
    pointer = json.loads((tmp_path / "best.json").read_text())
    tensors_path = tmp_path / pointer["tensors_file"]

    tensors_path.write_bytes(exploit)  # swapped for a pickle: the digest no longer matches
    with pytest.raises(InputError, match="SHA-256 does not match"):
        load_vae(tmp_path)
    pointer["tensors_sha256"] = hashlib.sha256(exploit).hexdigest()
    (tmp_path / "best.json").write_text(json.dumps(pointer))  # digest forged too: still no safetensors
    with pytest.raises(InputError, match="is not a safetensors file"):
        load_vae(tmp_path)
    (tmp_path / "best.json").write_bytes(exploit)  # a pickle named as the checkpoint pointer
    with pytest.raises(InputError, match="not a JSON checkpoint pointer"):
        load_vae(tmp_path)
    (tmp_path / "last.json").write_bytes(exploit)
    with pytest.raises(InputError, match=r"last\.json"):
        train_vae(_structured_frames(), TRAIN_ROWS, VAL_ROWS, MODEL, _config(), tmp_path, resume=True)
    assert not marker.exists()


def test_a_checkpoint_with_the_wrong_tensors_is_refused(tmp_path):
    train_vae(_structured_frames(), TRAIN_ROWS, VAL_ROWS, MODEL, _config(epochs=1), tmp_path)
    pointer = json.loads((tmp_path / "best.json").read_text())
    tensors, _ = load_checkpoint(tmp_path, "best")
    tensors["model.encoder.0.weight"] = torch.zeros(5, 5)
    payload = safetensors.torch.save(tensors)
    (tmp_path / pointer["tensors_file"]).write_bytes(payload)
    pointer["tensors_sha256"] = hashlib.sha256(payload).hexdigest()
    (tmp_path / "best.json").write_text(json.dumps(pointer))
    with pytest.raises(InputError, match=r"'encoder.0.weight' is \(5, 5\)"):
        load_vae(tmp_path)


def test_encode_frames_matches_the_model_and_reads_only_the_given_rows():
    data = _structured_frames(n_frames=63)
    frames = _RecordingArray(data)
    torch.manual_seed(0)
    model = MODEL.build().eval()

    def normalise(block):
        return (block - 0.1) / 2.0

    rows = np.array([7, 2, 5])
    mu, logvar = encode_frames(model, frames, rows, batch_size=100, normalise=normalise)
    assert sorted(frames.reads) == sorted(rows.tolist())
    assert mu.dtype == logvar.dtype == np.float32
    assert mu.shape == logvar.shape == (3, 63, 8)
    with torch.no_grad():
        expected_mu, expected_logvar = model.encode(
            torch.from_numpy(normalise(data[rows]).reshape(-1, 3, 32, 32))
        )
    np.testing.assert_allclose(mu.reshape(-1, 8), expected_mu.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logvar.reshape(-1, 8), expected_logvar.numpy(), rtol=1e-5, atol=1e-5)
    groups = list(iter_encode_frames(model, data, rows, batch_size=100, normalise=normalise))
    assert [group.tolist() for group, _, _ in groups] == [[7], [2], [5]]  # 100 frames hold one 63-frame trial
    np.testing.assert_array_equal(np.concatenate([part for _, part, _ in groups]), mu)


def test_bad_inputs_are_refused_with_the_array_named(tmp_path):
    frames = _structured_frames()
    with pytest.raises(InputError, match="val_rows: shares trials"):
        train_vae(frames, TRAIN_ROWS, [7, 8], MODEL, _config(), tmp_path)
    with pytest.raises(InputError, match=r"train_rows: indices span \[0, 10\]"):
        train_vae(frames, np.arange(11), [], MODEL, _config(), tmp_path)
    with pytest.raises(InputError, match=r"frames: images are \(3, 32, 32\)"):
        train_vae(frames, TRAIN_ROWS, VAL_ROWS, VAEConfig((1, 28, 28), 8), _config(), tmp_path)
    broken = frames.copy()
    broken[4, 3, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"frames\[4\]: contains NaN"):
        read_frames(broken, np.array([2, 4]))
    with pytest.raises(InputError, match="normalise: returned shape"):
        read_frames(frames, np.array([1]), normalise=lambda block: block[:, :3])
    with pytest.raises(InputError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(InputError, match="learning_rate: unknown key"):
        TrainConfig.model_validate({"epochs": 3, "learning_rate": 0.1})
    assert TrainConfig.model_validate(json.loads(json.dumps(_config().model_dump(mode="json")))) == _config()


def test_kl_warm_up_ramps_beta_over_the_first_epochs_and_validation_scores_the_full_objective(tmp_path):
    config = _config(epochs=4, kl_warmup_epochs=3)
    assert [config.kl_weight(epoch) for epoch in (1, 2, 3, 4, 5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert _config().kl_weight(1) == 1.0
    model = VAEConfig((3, 32, 32), n_latents=8, beta=4.0)
    result = train_vae(_structured_frames(), TRAIN_ROWS, VAL_ROWS, model, config, tmp_path)
    for record in result.history:
        weight = config.kl_weight(record["epoch"])
        assert record["train_loss"] == pytest.approx(
            record["reconstruction"] + weight * 4.0 * record["kl"], rel=1e-5
        )
    # A resume must not change the schedule: a different warm-up is a different run.
    with pytest.raises(InputError, match="kl_warmup_epochs"):
        train_vae(
            _structured_frames(),
            TRAIN_ROWS,
            VAL_ROWS,
            model,
            _config(epochs=5, kl_warmup_epochs=1),
            tmp_path,
            resume=True,
        )
    with pytest.raises(InputError, match="kl_warmup_epochs"):
        _config(kl_warmup_epochs=-1)


def test_the_training_step_reuses_a_finished_state_of_the_same_split_only_when_asked(tmp_path):
    frames = _structured_frames()
    split = Split(train=TRAIN_ROWS, val=VAL_ROWS, test=np.zeros(0, np.int64), protocol="image", seed=0)
    first = train_split_vae(frames, split, MODEL, _config(epochs=2), tmp_path)
    epochs_run = []
    again = train_split_vae(
        frames, split, MODEL, _config(epochs=2), tmp_path, reuse=True, progress=epochs_run.append
    )
    assert epochs_run == [] and _without_seconds(again.history) == _without_seconds(first.history)
    _assert_same_weights(_weights(again.model), _weights(first.model))
    # Without reuse (and without resume), a finished state is overwritten by a fresh training.
    train_split_vae(frames, split, MODEL, _config(epochs=2), tmp_path, progress=epochs_run.append)
    assert [record["epoch"] for record in epochs_run] == [1, 2]
    # Another split is another model: trained afresh, whatever reuse says.
    epochs_run.clear()
    other = Split(train=TRAIN_ROWS[1:], val=VAL_ROWS, test=np.zeros(0, np.int64), protocol="image", seed=0)
    train_split_vae(frames, other, MODEL, _config(epochs=2), tmp_path, reuse=True, progress=epochs_run.append)
    assert [record["epoch"] for record in epochs_run] == [1, 2]

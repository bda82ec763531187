"""Training throughput options: frames held on the device train exactly as streamed frames do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import InputError
from pipeline.models.configs import TrainConfig
from pipeline.models.state import load_vae
from pipeline.models.training import VAETrainer, train_vae
from pipeline.models.vae import VAEConfig

MODEL = VAEConfig((3, 32, 32), n_latents=4)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(tmp_path, frames_on_device: bool):
    frames = np.random.default_rng(0).normal(size=(7, 9, 3, 32, 32)).astype(np.float32)
    config = TrainConfig(
        epochs=2,
        batch_size=10,
        patience=5,
        trials_per_read=2,
        device="cpu",
        frames_on_device=frames_on_device,
    )
    # Rows out of order and a validation trial in the middle: positions must map back to rows.
    result = train_vae(
        frames,
        np.array([5, 0, 3, 1, 6]),
        np.array([2]),
        MODEL,
        config,
        tmp_path,
        normalise=lambda block: (block - 0.1) * 2.0,
    )
    return result.history, {key: value.clone() for key, value in result.model.state_dict().items()}


def test_frames_held_on_the_device_give_the_same_batches_and_weights_as_streaming(tmp_path, one_thread):
    streamed_history, streamed = _train(tmp_path / "streamed", frames_on_device=False)
    resident_history, resident = _train(tmp_path / "resident", frames_on_device=True)
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(resident_history) == strip(streamed_history)
    for key, value in streamed.items():
        torch.testing.assert_close(resident[key], value, rtol=0, atol=0)
    # The checkpoint is the plain model's either way.
    assert set(load_vae(tmp_path / "resident").state_dict()) == set(streamed)


def test_throughput_switches_must_be_booleans():
    with pytest.raises(InputError, match="frames_on_device"):
        TrainConfig(frames_on_device="yes")
    with pytest.raises(InputError, match="compile_model"):
        TrainConfig(compile_model=1)


def test_channels_last_trains_the_same_model_up_to_rounding_and_saves_plain_checkpoints(tmp_path, one_thread):
    frames = np.random.default_rng(3).normal(size=(6, 8, 3, 32, 32)).astype(np.float32)
    histories, models = {}, {}
    for channels_last in (False, True):
        config = TrainConfig(
            epochs=2, batch_size=8, patience=5, trials_per_read=2, device="cpu", channels_last=channels_last
        )
        folder = tmp_path / str(channels_last)
        result = train_vae(frames, np.arange(5), np.array([5]), MODEL, config, folder)
        histories[channels_last] = [record["train_loss"] for record in result.history]
        models[channels_last] = load_vae(folder)
    np.testing.assert_allclose(histories[True], histories[False], rtol=1e-4)
    # The checkpoint holds ordinary tensors that load into a model that never saw channels-last.
    for name, tensor in models[True].state_dict().items():
        assert tensor.is_contiguous(), name
        torch.testing.assert_close(tensor, models[False].state_dict()[name], rtol=1e-3, atol=1e-4)


def test_channels_last_is_applied_to_the_weights_and_every_batch(tmp_path):
    frames = np.zeros((2, 4, 3, 32, 32), dtype=np.float32)
    config = TrainConfig(epochs=1, device="cpu", channels_last=True)
    trainer = VAETrainer(frames, np.array([0]), np.array([1]), MODEL, config, tmp_path)
    model = trainer._prepared_model(MODEL.build())
    assert model.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.encoder[0].weight.is_contiguous()
    batch = trainer._to_device(frames[0])
    assert batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()

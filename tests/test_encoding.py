"""The one masked reconstruction error EEG and image runs share."""

import numpy as np
import pytest
import torch

from pipeline.errors import InputError
from pipeline.models.encoding import masked_reconstruction_mse
from pipeline.models.vae import VAEConfig


def _model_and_images():
    torch.manual_seed(3)
    model = VAEConfig((1, 28, 28), n_latents=6, likelihood="bernoulli").build().eval()
    return model, torch.rand(9, 1, 28, 28)


def test_masked_reconstruction_mse_from_stored_means_equals_reconstructing_with_the_mask():
    model, images = _model_and_images()
    keep = np.array([True, False, True, True, False, False])
    with torch.no_grad():
        mu = model.encode(images)[0].numpy()
        expected = float(((model.reconstruct(images, keep) - images) ** 2).mean())
    # Images are trials of one frame: (n, 1, C, H, W), their means (n, 1, n_latents).
    frames, rows = images.numpy()[:, None], np.arange(9)
    from_mu = masked_reconstruction_mse(model, frames, rows, keep, mu=mu[:, None], trials_per_read=4)
    encoded = masked_reconstruction_mse(model, frames, rows, keep, trials_per_read=4)
    assert from_mu == pytest.approx(expected, rel=1e-5) and encoded == pytest.approx(expected, rel=1e-5)
    # The stored means are what is decoded: other means, another error.
    shifted = masked_reconstruction_mse(model, frames, rows, keep, mu=mu[:, None] + 50.0)
    assert shifted != pytest.approx(expected, rel=1e-2)
    with pytest.raises(InputError, match=r"mu: shape \(9, 1, 5\)"):
        masked_reconstruction_mse(model, frames, rows, keep, mu=mu[:, None, :5])


def test_masked_reconstruction_mse_counts_only_the_pixels_of_the_mask():
    model, images = _model_and_images()
    keep = np.ones(6, bool)
    pixels = np.zeros((28, 28), bool)
    pixels[5:20, 3:11] = True
    with torch.no_grad():
        error = (model.reconstruct(images, keep) - images) ** 2
    expected = float(error[..., torch.from_numpy(pixels)].double().mean())
    got = masked_reconstruction_mse(model, images.numpy()[:, None], np.arange(9), keep, pixel_mask=pixels)
    assert got == pytest.approx(expected, rel=1e-6)
    assert got != pytest.approx(float(error.mean()), rel=1e-3)
    with pytest.raises(InputError, match="rows"):
        masked_reconstruction_mse(model, images.numpy()[:, None], np.array([], dtype=np.int64), keep)

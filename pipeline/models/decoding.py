"""The β-VAE's decoder as a numpy function, for traversals, effect maps and reconstruction errors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.models.vae import BetaVAE


def latent_decoder(model: BetaVAE) -> Callable[[np.ndarray], np.ndarray]:
    """The mean of p(x|z) as a numpy function: float32 latents (m, n_latents) -> outputs (m, C, H, W).

    The form :func:`pipeline.analysis.blocks.traverse_factor` takes; the output is not clipped. EEG
    models return band-power images (C = bands), image models pixels.
    """
    if not isinstance(model, BetaVAE):
        raise InputError("model", f"expected a BetaVAE, got {type(model).__name__}")
    device = next(model.parameters()).device

    def decode(latents: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (
                model.decode(torch.from_numpy(np.ascontiguousarray(latents)).to(device)).float().cpu().numpy()
            )

    return decode

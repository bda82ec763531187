"""β-VAE with the convolutional architectures of Liu et al., appendix A.4, chosen by input shape.

Encoder: 4x4 convolutions with stride 2 and padding 1 (each halves the image), ReLU, then
FC 256 with ReLU and a linear layer to the posterior mean and log-variance. Decoder: FC 256,
FC to the last convolution's shape (both ReLU), then transposed convolutions mirroring the
encoder; the last one is linear and emits the likelihood's parameters.

Likelihoods p(x|z), all factorised over pixels:

- ``"gaussian"``: with ``decoder_variance="unit"``, unit variance, so the negative
  log-likelihood is half the sum of squared errors; with ``"learned"``, one variance per input
  channel is a trained parameter, so the reconstruction term weighs the errors by how well
  the channel can be reconstructed rather than by a fixed unit scale (on standardised frames a
  unit variance over-weights the KL term: the model then keeps only a few factors). The
  constant ``D/2 log 2π`` is left out: it moves no gradient and no ranking;
- ``"bernoulli"``: the decoder emits logits; inputs must lie in [0, 1];
- ``"gaussian-mixture"``: two Gaussians per pixel with learned mixing logits, means and
  log-scales; the exact negative log-density, computed with log-sum-exp.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import model_validator
from torch import nn
from torch.nn import functional

from pipeline.errors import InputError
from pipeline.validators import ConfigModel, RealNumber, WholeNumber

# Far beyond any use (the paper uses up to 128); a larger value would only exhaust memory.
MAX_LATENTS = 4096
LIKELIHOODS: tuple[str, ...] = ("gaussian", "bernoulli", "gaussian-mixture")
DECODER_VARIANCES: tuple[str, ...] = ("unit", "learned")
# Input shape (C, H, W) -> convolution widths of the encoder (appendix A.4).
ARCHITECTURES: dict[tuple[int, int, int], tuple[int, ...]] = {
    (3, 32, 32): (32, 32, 64, 64),  # DEAP band images
    (1, 28, 28): (32, 32),  # MNIST
    (3, 64, 64): (32, 32, 64, 64),  # CelebA
}
HIDDEN_UNITS = 256
# Log-variances and mixture log-scales pass through bound * tanh(raw / bound): smooth, so the
# gradient never dies as it would under a hard clamp, and exp() can neither overflow nor reach 0.
LOGVAR_BOUND = 10.0
LOG_SCALE_BOUND = 5.0
MIXTURE_COMPONENTS = 2


class VAEConfig(ConfigModel):
    """What defines a β-VAE: input shape (C, H, W), number of latents, β, the likelihood and,
    for a Gaussian likelihood, whether its variance is fixed at 1 or learned per channel
    (configurations written before ``decoder_variance`` existed mean ``"unit"``)."""

    input_shape: tuple[int, int, int] = (3, 32, 32)
    n_latents: WholeNumber = 32
    beta: RealNumber = 1.0
    likelihood: str = "gaussian"
    decoder_variance: str = "unit"

    @model_validator(mode="after")
    def _supported(self) -> VAEConfig:
        _check_architecture(self.input_shape, self.n_latents, self.likelihood, self.beta)
        _check_decoder_variance(self.likelihood, self.decoder_variance)
        return self

    def build(self) -> BetaVAE:
        """A freshly initialised model of this configuration (uses torch's global RNG)."""
        return BetaVAE(self.input_shape, self.n_latents, self.likelihood, self.beta, self.decoder_variance)


def _check_architecture(input_shape: tuple[int, ...], n_latents: int, likelihood: str, beta: float) -> None:
    if input_shape not in ARCHITECTURES:
        supported = ", ".join(str(shape) for shape in ARCHITECTURES)
        raise InputError(
            "input_shape", f"{input_shape} has no architecture; supported (C, H, W): {supported}"
        )
    if isinstance(n_latents, bool) or not isinstance(n_latents, int) or not 1 <= n_latents <= MAX_LATENTS:
        raise InputError("n_latents", f"{n_latents!r} must be an integer from 1 to {MAX_LATENTS}")
    if likelihood not in LIKELIHOODS:
        raise InputError("likelihood", f"{likelihood!r} is not one of {LIKELIHOODS}")
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not (math.isfinite(beta) and beta >= 0):
        raise InputError("beta", f"{beta!r} must be a finite number >= 0")


def _check_decoder_variance(likelihood: str, decoder_variance: str) -> None:
    if decoder_variance not in DECODER_VARIANCES:
        raise InputError("decoder_variance", f"{decoder_variance!r} is not one of {DECODER_VARIANCES}")
    if decoder_variance == "learned" and likelihood != "gaussian":
        raise InputError("decoder_variance", f"'learned' needs the gaussian likelihood, not {likelihood!r}")


def _soft_bound(raw: torch.Tensor, bound: float) -> torch.Tensor:
    return bound * torch.tanh(raw / bound)


def check_keep_mask(keep_mask, n_latents: int) -> np.ndarray:
    """Validate a factor mask: a boolean array-like of length ``n_latents`` (True = keep).

    Returns
    -------
    numpy.ndarray of bool, shape (n_latents,)
    """
    mask = np.asarray(keep_mask)
    if mask.dtype != np.bool_ or mask.shape != (n_latents,):
        raise InputError(
            "keep_mask",
            f"dtype {mask.dtype}, shape {mask.shape}; expected a boolean array of shape ({n_latents},)",
        )
    return mask


class BetaVAE(nn.Module):
    """β-VAE for one of the supported input shapes.

    Parameters
    ----------
    input_shape : tuple (C, H, W)
        (3, 32, 32) DEAP, (1, 28, 28) MNIST or (3, 64, 64) CelebA; anything else is refused.
    n_latents : int
        Number of latent factors.
    likelihood : {"gaussian", "bernoulli", "gaussian-mixture"}
    beta : float
        Weight of the KL term, >= 0.
    decoder_variance : {"unit", "learned"}
        Gaussian likelihood only: variance fixed at 1, or one learned log-variance per channel
        (the parameter ``decoder_log_variance``, bounded like the posterior's).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        n_latents: int = 32,
        likelihood: str = "gaussian",
        beta: float = 1.0,
        decoder_variance: str = "unit",
    ):
        super().__init__()
        input_shape = tuple(int(size) for size in input_shape)
        _check_architecture(input_shape, n_latents, likelihood, beta)
        _check_decoder_variance(likelihood, decoder_variance)
        self.decoder_variance = decoder_variance
        self.input_shape = input_shape
        self.n_latents = n_latents
        self.likelihood = likelihood
        self.beta = float(beta)

        channels, height, width = input_shape
        widths = ARCHITECTURES[input_shape]
        scale = 2 ** len(widths)
        self._feature_shape = (widths[-1], height // scale, width // scale)
        n_features = math.prod(self._feature_shape)

        encoder_layers: list[nn.Module] = []
        previous = channels
        for width_out in widths:
            encoder_layers += [nn.Conv2d(previous, width_out, 4, stride=2, padding=1), nn.ReLU()]
            previous = width_out
        self.encoder = nn.Sequential(
            *encoder_layers,
            nn.Flatten(),
            nn.Linear(n_features, HIDDEN_UNITS),
            nn.ReLU(),
            nn.Linear(HIDDEN_UNITS, 2 * n_latents),
        )

        outputs_per_channel = 3 * MIXTURE_COMPONENTS if likelihood == "gaussian-mixture" else 1
        decoder_layers: list[nn.Module] = [
            nn.Linear(n_latents, HIDDEN_UNITS),
            nn.ReLU(),
            nn.Linear(HIDDEN_UNITS, n_features),
            nn.ReLU(),
            nn.Unflatten(1, self._feature_shape),
        ]
        mirrored = [*reversed(widths[:-1]), channels * outputs_per_channel]
        previous = widths[-1]
        for index, width_out in enumerate(mirrored):
            decoder_layers.append(nn.ConvTranspose2d(previous, width_out, 4, stride=2, padding=1))
            if index < len(mirrored) - 1:
                decoder_layers.append(nn.ReLU())
            previous = width_out
        self.decoder = nn.Sequential(*decoder_layers)
        if decoder_variance == "learned":
            # Starts at unit variance, so training begins where the fixed-variance model does.
            self.decoder_log_variance = nn.Parameter(torch.zeros(channels))

    @property
    def config(self) -> VAEConfig:
        return VAEConfig(self.input_shape, self.n_latents, self.beta, self.likelihood, self.decoder_variance)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(
                "x", f"shape {shape}; expected a tensor (batch, {', '.join(map(str, self.input_shape))})"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (batch, n_latents); log-variance in (-10, 10)."""
        self._check_input(x)
        mu, raw_logvar = self.encoder(x).chunk(2, dim=1)
        return mu, _soft_bound(raw_logvar, LOGVAR_BOUND)

    def decode_parameters(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The likelihood's parameters for latents ``z`` (batch, n_latents).

        Returns ``{"mean": ...}`` (gaussian), ``{"logits": ...}`` (bernoulli), or
        ``{"logits", "means", "log_scales"}`` each (batch, 2, C, H, W) (gaussian-mixture).
        """
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != self.n_latents:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise InputError("z", f"shape {shape}; expected a tensor (batch, {self.n_latents})")
        output = self.decoder(z)
        if self.likelihood == "gaussian":
            return {"mean": output}
        if self.likelihood == "bernoulli":
            return {"logits": output}
        per_pixel = output.view(output.shape[0], 3, MIXTURE_COMPONENTS, *self.input_shape)
        return {
            "logits": per_pixel[:, 0],
            "means": per_pixel[:, 1],
            "log_scales": _soft_bound(per_pixel[:, 2], LOG_SCALE_BOUND),
        }

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z), shape (batch, C, H, W): the reconstruction a user looks at."""
        parameters = self.decode_parameters(z)
        if self.likelihood == "gaussian":
            return parameters["mean"]
        if self.likelihood == "bernoulli":
            return torch.sigmoid(parameters["logits"])
        weights = torch.softmax(parameters["logits"], dim=1)
        return (weights * parameters["means"]).sum(dim=1)

    def sample_latents(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reparameterised draw z = μ + σ ε, with ε from ``generator`` (torch's global RNG if None)."""
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * noise

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction mean from a posterior sample, with the posterior mean and log-variance."""
        mu, logvar = self.encode(x)
        return self.decode(self.sample_latents(mu, logvar, generator)), mu, logvar

    def negative_log_likelihood(self, x: torch.Tensor, parameters: dict[str, torch.Tensor]) -> torch.Tensor:
        """-log p(x|z) per sample (batch,), in nats, computed in float32."""
        x = x.float()
        parameters = {key: value.float() for key, value in parameters.items()}
        if self.likelihood == "gaussian" and self.decoder_variance == "learned":
            log_variance = _soft_bound(self.decoder_log_variance.float(), LOGVAR_BOUND).view(-1, 1, 1)
            per_pixel = 0.5 * ((x - parameters["mean"]) ** 2 * torch.exp(-log_variance) + log_variance)
        elif self.likelihood == "gaussian":
            per_pixel = 0.5 * (x - parameters["mean"]) ** 2
        elif self.likelihood == "bernoulli":
            per_pixel = functional.binary_cross_entropy_with_logits(parameters["logits"], x, reduction="none")
        else:
            log_scales = parameters["log_scales"]
            standardised = (x.unsqueeze(1) - parameters["means"]) * torch.exp(-log_scales)
            log_density = -0.5 * standardised**2 - log_scales - 0.5 * math.log(2 * math.pi)
            log_weights = torch.log_softmax(parameters["logits"], dim=1)
            per_pixel = -torch.logsumexp(log_weights + log_density, dim=1)
        return per_pixel.flatten(1).sum(dim=1)

    def loss(
        self, x: torch.Tensor, generator: torch.Generator | None = None, kl_weight: float = 1.0
    ) -> dict[str, torch.Tensor]:
        """The β-VAE objective on a batch, averaged per sample.

        ``kl_weight`` scales β during a KL warm-up (0 → 1 over the first epochs); 1 is the
        objective itself.

        Returns
        -------
        dict
            ``total`` = reconstruction + kl_weight·β·kl (differentiable scalar), ``reconstruction``
            (-log p(x|z) at one posterior sample), ``kl`` (KL(q(z|x) ‖ N(0, I))) and
            ``kl_per_dim`` (n_latents,), its share per factor.
        """
        self._check_input(x)
        if self.likelihood == "bernoulli" and bool(((x < 0) | (x > 1)).any()):
            raise InputError("x", "a Bernoulli likelihood needs inputs in [0, 1]")
        mu, logvar = self.encode(x)
        z = self.sample_latents(mu, logvar, generator)
        reconstruction = self.negative_log_likelihood(x, self.decode_parameters(z)).mean()
        mu, logvar = mu.float(), logvar.float()
        kl_per_dim = (0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar)).mean(dim=0)
        kl = kl_per_dim.sum()
        return {
            "total": reconstruction + kl_weight * self.beta * kl,
            "reconstruction": reconstruction,
            "kl": kl,
            "kl_per_dim": kl_per_dim,
        }

    def reconstruct(self, x: torch.Tensor, keep_mask=None) -> torch.Tensor:
        """Decode the posterior mean of ``x``, with the factors outside ``keep_mask`` set to zero.

        Parameters
        ----------
        x : torch.Tensor (batch, C, H, W)
        keep_mask : boolean array-like (n_latents,), optional
            True for the factors to keep; all are kept if None.
        """
        mu, _ = self.encode(x)
        if keep_mask is not None:
            mask = torch.as_tensor(check_keep_mask(keep_mask, self.n_latents), device=mu.device)
            mu = mu * mask.to(mu.dtype)
        return self.decode(mu)

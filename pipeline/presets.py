"""Named run settings: ``demo`` fits a 2-core laptop in minutes, ``paper`` follows Liu et al."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from pipeline.errors import InputError
from pipeline.factors import FactorRules
from pipeline.learn import LearnConfig, run_protocols
from pipeline.models.vae import VAEConfig
from pipeline.train import ClassifierConfig, TrainConfig

DEAP_FRAME_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class DeapPreset:
    """A DEAP run's settings; ``synthetic_subjects`` applies only when no data folder is given.

    ``protocol`` is ``trial``, ``subject`` or ``both`` (each protocol with its own split,
    normalisation and models). ``betas`` lists the β values of a sweep: with more than one,
    one β-VAE is trained per value and :func:`pipeline.sweep.choose_beta` keeps one
    (``learn.vae.beta`` is then the chosen value only after the sweep).
    """

    name: str
    synthetic_subjects: int
    learn: LearnConfig
    rules: FactorRules
    protocol: str = "trial"
    betas: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        run_protocols(self.protocol)
        betas = tuple(self.betas) or (self.learn.vae.beta,)
        for beta in betas:
            if isinstance(beta, bool) or not isinstance(beta, int | float) or not beta > 0:
                raise InputError("beta", f"{beta!r} must be a positive number")
        if len(set(betas)) != len(betas):
            raise InputError("beta", f"{list(betas)} lists a value twice")
        object.__setattr__(self, "betas", tuple(float(beta) for beta in betas))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "synthetic_subjects": self.synthetic_subjects,
            "learn": self.learn.to_dict(),
            "rules": self.rules.to_dict(),
            "protocol": self.protocol,
            "betas": list(self.betas),
        }


class _Scale(NamedTuple):
    """What differs between the presets; the model (β = 6, learned decoder variance, LSTM 128) and
    optimisers are shared."""

    synthetic_subjects: int
    n_latents: int
    vae_epochs: int
    vae_batch_size: int
    vae_patience: int
    trials_per_read: int
    lstm_epochs: int
    lstm_patience: int


_SCALES = {
    # Sized for <= 10 minutes end to end on 2 CPU cores (measured in the README).
    "demo": _Scale(8, 32, 10, 128, 4, 16, 80, 12),
    # Appendix A.3/A.4: 128 latents, beta = 6, 300 epochs, LSTM 128; meant for a GPU.
    "paper": _Scale(32, 128, 300, 1024, 30, 64, 200, 20),
}


# The demo reports one protocol to stay within minutes; the paper setting compares both.
_DEFAULT_PROTOCOL = {"demo": "trial", "paper": "both"}


def deap_preset(
    name: str, seed: int = 0, protocol: str | None = None, betas: tuple[float, ...] | None = None
) -> DeapPreset:
    """The ``demo`` or ``paper`` preset with every seed set to ``seed``.

    ``protocol`` and ``betas`` override the preset's (one β replaces it; several run a sweep).
    """
    if name not in _SCALES:
        raise InputError("preset", f"{name!r} is not a preset; choose one of {sorted(_SCALES)}")
    scale = _SCALES[name]
    preset = DeapPreset(
        name=name,
        synthetic_subjects=scale.synthetic_subjects,
        learn=LearnConfig(
            # A learned decoder variance: with unit variance on standardised frames the reconstruction
            # term is under-weighted (the residual variance is about 0.4), so fewer factors carry
            # less information; measured in benchmarks/results/factor_structure_*.json (README).
            vae=VAEConfig(
                input_shape=DEAP_FRAME_SHAPE, n_latents=scale.n_latents, beta=6.0, decoder_variance="learned"
            ),
            train=TrainConfig(
                epochs=scale.vae_epochs,
                batch_size=scale.vae_batch_size,
                lr=1e-3,
                patience=scale.vae_patience,
                seed=seed,
                trials_per_read=scale.trials_per_read,
                # 80,640 frames at DEAP's full size are 1 GB: held on a GPU, nothing is read twice.
                frames_on_device=name == "paper",
                # 1.5-2x the CPU frames/s (benchmarks/train.py, cpu_options); same findings.
                channels_last=name == "demo",
            ),
            classifier=ClassifierConfig(
                hidden=128,
                epochs=scale.lstm_epochs,
                batch_size=32,
                lr=1e-3,
                patience=scale.lstm_patience,
                seed=seed,
            ),
            split_seed=seed,
        ),
        rules=FactorRules(),
        protocol=protocol or _DEFAULT_PROTOCOL[name],
    )

    if betas:
        preset = with_betas(preset, tuple(betas))
    return preset


def with_training_options(preset: DeapPreset, mixed_precision: bool, compile_model: bool) -> DeapPreset:
    """``preset`` with bf16 autocast (CUDA only) and/or a compiled encoder and decoder for the β-VAE."""
    train = replace(preset.learn.train, mixed_precision=mixed_precision, compile_model=compile_model)
    return replace(preset, learn=replace(preset.learn, train=train))


def with_betas(preset: DeapPreset, betas: tuple[float, ...]) -> DeapPreset:
    """``preset`` with the β sweep ``betas``; the model's β is the first until a sweep chooses."""
    return replace(preset, learn=with_beta(preset.learn, betas[0]), betas=tuple(betas))


def with_beta(learn: LearnConfig, beta: float) -> LearnConfig:
    """``learn`` with the β-VAE's β set to ``beta``."""
    return replace(learn, vae=replace(learn.vae, beta=float(beta)))

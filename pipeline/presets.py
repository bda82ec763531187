"""Named run settings: ``demo`` fits a 2-core laptop in minutes, ``paper`` follows Liu et al."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import InputError
from pipeline.factors import FactorRules
from pipeline.learn import LearnConfig
from pipeline.models.vae import VAEConfig
from pipeline.train import ClassifierConfig, TrainConfig

DEAP_FRAME_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class DeapPreset:
    """A DEAP run's settings; ``synthetic_subjects`` applies only when no data folder is given."""

    name: str
    synthetic_subjects: int
    learn: LearnConfig
    rules: FactorRules

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "synthetic_subjects": self.synthetic_subjects,
            "learn": self.learn.to_dict(),
            "rules": self.rules.to_dict(),
        }


def deap_preset(name: str, seed: int = 0) -> DeapPreset:
    """The ``demo`` or ``paper`` preset with every seed set to ``seed``."""
    if name == "demo":
        # Sized for <= 10 minutes end to end on 2 CPU cores (measured in the README).
        return DeapPreset(
            name="demo",
            synthetic_subjects=8,
            learn=LearnConfig(
                vae=VAEConfig(input_shape=DEAP_FRAME_SHAPE, n_latents=32, beta=6.0),
                train=TrainConfig(
                    epochs=10, batch_size=128, lr=1e-3, patience=4, seed=seed, trials_per_read=16
                ),
                classifier=ClassifierConfig(
                    hidden=128, epochs=80, batch_size=32, lr=1e-3, patience=12, seed=seed
                ),
                split_seed=seed,
            ),
            rules=FactorRules(),
        )
    if name == "paper":
        # Appendix A.3/A.4: 128 latents, beta = 6, 300 epochs, LSTM 128; meant for a GPU.
        return DeapPreset(
            name="paper",
            synthetic_subjects=32,
            learn=LearnConfig(
                vae=VAEConfig(input_shape=DEAP_FRAME_SHAPE, n_latents=128, beta=6.0),
                train=TrainConfig(
                    epochs=300, batch_size=1024, lr=1e-3, patience=30, seed=seed, trials_per_read=64
                ),
                classifier=ClassifierConfig(
                    hidden=128, epochs=200, batch_size=32, lr=1e-3, patience=20, seed=seed
                ),
                split_seed=seed,
            ),
            rules=FactorRules(),
        )
    raise InputError("preset", f"{name!r} is not a preset; choose 'demo' or 'paper'")

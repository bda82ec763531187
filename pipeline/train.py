"""How the β-VAE and the emotion LSTM are trained: their configurations.

The training itself is in :mod:`pipeline.models.training` (the β-VAE),
:mod:`pipeline.models.classifier` (the LSTM) and :mod:`pipeline.models.early_stopping` (the loop
both share).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import InputError
from pipeline.models.vae import config_from_dict

__all__ = ["ClassifierConfig", "TrainConfig"]


def _check_positive_int(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(where, f"{value!r} must be a positive integer")


def _check_seed(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError("seed", f"{value!r} must be a non-negative integer")


def _check_learning_rate(value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise InputError("lr", f"{value!r} must be a positive finite number")


def _check_device_name(value: Any) -> None:
    if not isinstance(value, str) or not (value in ("auto", "cpu", "cuda") or value.startswith("cuda:")):
        raise InputError("device", f"{value!r} must be 'auto', 'cpu', 'cuda' or 'cuda:<index>'")


@dataclass(frozen=True)
class TrainConfig:
    """How the VAE is trained.

    Attributes
    ----------
    epochs : int
        Maximum number of epochs (the paper trains DEAP for 300).
    batch_size : int
        Frames per optimiser step.
    lr : float
        Adam learning rate.
    patience : int
        Epochs without improvement of the monitored loss before training stops.
    seed : int
        Seeds the initial weights and every epoch's shuffles and noise.
    trials_per_read : int
        Trials read from the frame array at a time; frames are shuffled within such a group.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
    mixed_precision : bool
        bf16 autocast for the forward pass; used on CUDA only, ignored on CPU.
    frames_on_device : bool
        Read the training and validation frames once, normalised, into one tensor on the
        training device, and cut every epoch's batches from it (the same batches, in the same
        order, as streaming them trial group by trial group). Needs
        (train + validation frames) × 4 bytes × C·H·W of device memory.
    compile_model : bool
        ``torch.compile`` the encoder and decoder (weights and checkpoints unchanged). Pays a
        compilation at the start; meant for CUDA, where it needs no system compiler.
    channels_last : bool
        Keep the weights and batches in channels-last memory order during training (1.5–2×
        more frames/s on CPU, measured in ``benchmarks/train.py``; the checkpoints are the
        usual contiguous tensors). The convolutions sum in another order, so the weights
        differ from a channels-first run in the last bits.
    kl_warmup_epochs : int
        β rises linearly from β/(n+1) to β over the first ``n`` epochs, so the encoder learns
        to use its factors before the KL term prunes them; 0 trains at β from the start.
        Validation always scores the full objective.
    """

    epochs: int = 300
    batch_size: int = 64
    lr: float = 5e-4
    patience: int = 20
    seed: int = 0
    trials_per_read: int = 8
    device: str = "auto"
    mixed_precision: bool = False
    frames_on_device: bool = False
    compile_model: bool = False
    channels_last: bool = False
    kl_warmup_epochs: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "trials_per_read"):
            _check_positive_int(name, getattr(self, name))
        if (
            isinstance(self.kl_warmup_epochs, bool)
            or not isinstance(self.kl_warmup_epochs, int)
            or self.kl_warmup_epochs < 0
        ):
            raise InputError("kl_warmup_epochs", f"{self.kl_warmup_epochs!r} must be a non-negative integer")
        _check_learning_rate(self.lr)
        _check_seed(self.seed)
        _check_device_name(self.device)
        for name in ("mixed_precision", "frames_on_device", "compile_model", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(name, f"{getattr(self, name)!r} must be true or false")

    def to_dict(self) -> dict:
        return asdict(self)

    def kl_weight(self, epoch: int) -> float:
        """The share of β applied in (1-based) ``epoch``."""
        return min(1.0, epoch / (self.kl_warmup_epochs + 1))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise InputError."""
        return config_from_dict(cls, values, "TrainConfig")


@dataclass(frozen=True)
class ClassifierConfig:
    """How the emotion LSTM is trained (Adam, cross-entropy, early stopping)."""

    hidden: int = 128
    epochs: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 20
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("hidden", "epochs", "batch_size", "patience"):
            _check_positive_int(name, getattr(self, name))
        _check_learning_rate(self.lr)
        _check_seed(self.seed)
        _check_device_name(self.device)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ClassifierConfig:
        return config_from_dict(cls, values, "ClassifierConfig")

"""How the β-VAE and the emotion LSTM are trained: their configurations.

The training itself is in :mod:`pipeline.models.training` (the β-VAE),
:mod:`pipeline.models.classifier` (the LSTM) and :mod:`pipeline.models.early_stopping` (the loop
both share).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from pipeline.validators import ConfigModel, Flag, NonNegativeInt, PositiveInt, PositiveNumber

__all__ = ["ClassifierConfig", "TrainConfig"]


def _check_device_name(value: str) -> str:
    if not isinstance(value, str) or not (value in ("auto", "cpu", "cuda") or value.startswith("cuda:")):
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:<index>'")
    return value


# "auto" (CUDA when available), "cpu", "cuda" or "cuda:<index>".
DeviceName = Annotated[str, AfterValidator(_check_device_name)]


class TrainConfig(ConfigModel):
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

    epochs: PositiveInt = 300
    batch_size: PositiveInt = 64
    lr: PositiveNumber = 5e-4
    patience: PositiveInt = 20
    seed: NonNegativeInt = 0
    trials_per_read: PositiveInt = 8
    device: DeviceName = "auto"
    mixed_precision: Flag = False
    frames_on_device: Flag = False
    compile_model: Flag = False
    channels_last: Flag = False
    kl_warmup_epochs: NonNegativeInt = 0

    def kl_weight(self, epoch: int) -> float:
        """The share of β applied in (1-based) ``epoch``."""
        return min(1.0, epoch / (self.kl_warmup_epochs + 1))


class ClassifierConfig(ConfigModel):
    """How the emotion LSTM is trained (Adam, cross-entropy, early stopping)."""

    hidden: PositiveInt = 128
    epochs: PositiveInt = 200
    batch_size: PositiveInt = 32
    lr: PositiveNumber = 1e-3
    patience: PositiveInt = 20
    seed: NonNegativeInt = 0
    device: DeviceName = "auto"

"""The one early-stopping loop the β-VAE (:mod:`pipeline.models.training`) and the emotion LSTM
(:mod:`pipeline.models.classifier`) train with, and the seeding both share.

Each epoch's record holds the monitored loss; the weights of the epoch with the lowest one are
kept, and training stops once it has not improved for ``patience`` epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Separate random streams per purpose, so validation noise never shifts the training draws.
TRAIN_STREAM = 0
VALIDATION_STREAM = 1
INIT_STREAM = 2


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint written before it is kept."""

    def __init__(
        self,
        value: float,
        epoch: int,
        batch: int,
        phase: str,
        checkpoint_dir: Path | None = None,
        last_good_epoch: int = 0,
    ):
        self.epoch = epoch
        self.batch = batch
        self.last_good_epoch = last_good_epoch
        if checkpoint_dir is None:
            kept = "nothing was checkpointed"
        elif last_good_epoch > 0:
            kept = f"the last good checkpoint (epoch {last_good_epoch}) is kept in {checkpoint_dir}"
        else:
            kept = f"no checkpoint had been written yet in {checkpoint_dir}"
        super().__init__(
            f"{phase} loss became {value} at epoch {epoch}, batch {batch}; training stopped and {kept}. "
            "Lower the learning rate or check the input scale, then retrain or resume."
        )


@dataclass
class BestSoFar:
    """Early-stopping state: the best monitored loss, its epoch and weights, and the epochs since."""

    epoch: int = 0
    loss: float = math.inf
    since: int = 0
    state: dict[str, torch.Tensor] | None = None

    def observe(self, epoch: int, loss: float, model: nn.Module) -> None:
        if loss < self.loss:
            weights = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
            self.epoch, self.loss, self.since, self.state = epoch, loss, 0, weights
        else:
            self.since += 1


def fit_with_early_stopping(
    model: nn.Module,
    run_epoch: Callable[[int], dict],
    *,
    epochs: int,
    patience: int,
    monitor: str,
    history: list[dict],
    best: BestSoFar,
    stopped_early: bool = False,
    after_epoch: Callable[[list[dict], BestSoFar, bool], None] | None = None,
) -> bool:
    """Run epochs ``len(history) + 1 ...`` until ``epochs``, or until the monitored loss has not
    improved for ``patience`` epochs; then load the best weights into ``model`` (eval mode).

    ``run_epoch(epoch)`` trains one epoch and returns its history record, which holds ``monitor``;
    ``after_epoch(history, best, stopped_early)`` runs after each (a checkpoint, a progress line).
    ``history`` and ``best`` are updated in place (a resumed run passes its restored ones).
    Returns whether training stopped early.
    """
    epoch = len(history)
    while not stopped_early and epoch < epochs:
        epoch += 1
        record = run_epoch(epoch)
        history.append(record)
        best.observe(epoch, record[monitor], model)
        stopped_early = best.since >= patience
        if after_epoch is not None:
            after_epoch(history, best, stopped_early)
    model.load_state_dict(best.state)
    model.eval()
    return stopped_early


def seeded_init(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` under a private RNG state seeded from ``seed``, so a model's initial weights
    depend on the seed alone and the caller's RNG state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([seed, INIT_STREAM, 0]).generate_state(1)[0]))
        return build()

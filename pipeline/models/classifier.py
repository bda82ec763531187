"""Training, saving and loading the emotion LSTM (:class:`pipeline.models.sequence.EmotionLSTM`)
on latent sequences: Adam, cross-entropy, and the early stopping the β-VAE uses."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from pipeline.errors import InputError
from pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.models.configs import ClassifierConfig
from pipeline.models.early_stopping import (
    TRAIN_STREAM,
    BestSoFar,
    TrainingDiverged,
    fit_with_early_stopping,
    seeded_init,
)
from pipeline.models.sequence import N_CLASSES, EmotionLSTM, check_sequences
from pipeline.models.state import load_module_state, prefixed, select_device
from pipeline.threads import keep_fair_share


@dataclass
class ClassifierResult:
    """Outcome of :func:`train_classifier`: the model with its best weights (eval mode) and the history.

    ``history`` has one dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy``,
    ``val_loss`` and ``val_accuracy`` (None without validation trials).
    """

    model: EmotionLSTM
    history: list[dict]
    best_epoch: int
    monitor: str
    config: ClassifierConfig


def _classifier_pass(
    model: EmotionLSTM,
    sequences: torch.Tensor,
    classes: torch.Tensor,
    batch_size: int,
    optimizer: torch.optim.Optimizer | None = None,
    order: np.ndarray | None = None,
) -> tuple[float, float]:
    """One pass over the data (training if an optimiser is given); mean loss and accuracy."""
    indices = torch.as_tensor(order) if order is not None else torch.arange(len(classes))
    loss_sum, correct = 0.0, 0
    model.train(optimizer is not None)
    with torch.set_grad_enabled(optimizer is not None):
        for start in range(0, len(indices), batch_size):
            keep_fair_share()
            batch = indices[start : start + batch_size].to(sequences.device)
            logits = model(sequences[batch])
            loss = functional.cross_entropy(logits, classes[batch])
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * len(batch)
            correct += int((logits.argmax(dim=1) == classes[batch]).sum())
    return loss_sum / len(indices), correct / len(indices)


def _checked_sequences(
    train_sequences: Any, train_classes: Any, val_sequences: Any, val_classes: Any, n_classes: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The training (and, when given, validation) sequences and classes, checked and aligned."""
    train_x = np.asarray(train_sequences, dtype=np.float32)
    if train_x.ndim != 3:
        raise InputError("train_sequences", f"shape {train_x.shape}; expected (n_trials, steps, n_latents)")
    n_latents = train_x.shape[2]
    parts = {"train": check_sequences(train_x, train_classes, n_latents, n_classes)}
    if val_sequences is not None and len(val_sequences) > 0:
        val_x, val_y = check_sequences(val_sequences, val_classes, n_latents, n_classes)
        if val_x.shape[1] != train_x.shape[1]:
            raise InputError(
                "val_sequences", f"have {val_x.shape[1]} steps; the training sequences {train_x.shape[1]}"
            )
        parts["val"] = (val_x, val_y)
    return parts


def train_classifier(
    train_sequences: Any,
    train_classes: Any,
    val_sequences: Any = None,
    val_classes: Any = None,
    config: ClassifierConfig | None = None,
    n_classes: int = N_CLASSES,
    progress: Callable[[dict], None] | None = None,
) -> ClassifierResult:
    """Train an :class:`EmotionLSTM` on latent sequences, deterministically given ``config.seed``.

    Parameters
    ----------
    train_sequences : array-like (n_trials, steps, n_latents)
    train_classes : int array-like (n_trials,)
    val_sequences, val_classes : optional
        Early stopping monitors the validation loss; without them, the training loss.
    config : ClassifierConfig, optional
    n_classes : int
    progress : callable, optional
        Called with each epoch's history dict.
    """
    config = config if config is not None else ClassifierConfig()
    if not isinstance(config, ClassifierConfig):
        raise InputError("config", f"expected a ClassifierConfig, got {type(config).__name__}")
    parts = _checked_sequences(train_sequences, train_classes, val_sequences, val_classes, n_classes)
    device = select_device(config.device)
    n_latents = parts["train"][0].shape[2]
    model = seeded_init(lambda: EmotionLSTM(n_latents, config.hidden, n_classes), config.seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    tensors = {
        part: (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
        for part, (x, y) in parts.items()
    }
    monitor = "val_loss" if "val" in tensors else "train_loss"

    def run_epoch(epoch: int) -> dict:
        order = np.random.default_rng(np.random.SeedSequence([config.seed, TRAIN_STREAM, epoch])).permutation(
            len(tensors["train"][1])
        )
        train_loss, train_accuracy = _classifier_pass(
            model, *tensors["train"], config.batch_size, optimizer, order
        )
        val_loss, val_accuracy = (
            _classifier_pass(model, *tensors["val"], config.batch_size) if "val" in tensors else (None, None)
        )
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
        }
        if progress is not None:
            progress(dict(record))
        if not math.isfinite(record[monitor]):
            raise TrainingDiverged(record[monitor], epoch, 0, "classifier")
        return record

    history: list[dict] = []
    best = BestSoFar()
    fit_with_early_stopping(
        model, run_epoch, epochs=config.epochs, patience=config.patience, monitor=monitor,
        history=history, best=best,
    )  # fmt: skip
    return ClassifierResult(
        model=model, history=history, best_epoch=best.epoch, monitor=monitor, config=config
    )


def save_classifier(model: EmotionLSTM, directory: str | os.PathLike, name: str = "classifier") -> Path:
    """Save an :class:`EmotionLSTM` as a safetensors + JSON checkpoint; returns the JSON pointer path."""
    if not isinstance(model, EmotionLSTM):
        raise InputError("model", f"expected an EmotionLSTM, got {type(model).__name__}")
    metadata = {
        "kind": "emotion-lstm",
        "n_latents": model.n_latents,
        "hidden": model.hidden,
        "n_classes": model.n_classes,
    }
    return save_checkpoint(
        directory, name, {f"model.{k}": v for k, v in model.state_dict().items()}, metadata
    )


def load_classifier(
    directory: str | os.PathLike, name: str = "classifier", device: str = "cpu"
) -> EmotionLSTM:
    """Load an :class:`EmotionLSTM` saved by :func:`save_classifier`, in eval mode."""
    tensors, metadata = load_checkpoint(directory, name)
    where = Path(directory) / f"{name}.json"
    if metadata.get("kind") != "emotion-lstm":
        raise InputError(where, f"is a {metadata.get('kind')!r} checkpoint, not an emotion LSTM")
    try:
        model = EmotionLSTM(metadata["n_latents"], metadata["hidden"], metadata["n_classes"])
    except KeyError as err:
        raise InputError(where, f"lacks {err}") from err
    load_module_state(model, prefixed(tensors, "model."), where)
    return model.to(select_device(device)).eval()

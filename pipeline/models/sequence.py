"""The emotion classifier: an LSTM over the per-frame latent means of a trial (appendix A.4)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.models.vae import check_keep_mask

N_CLASSES = 4


class EmotionLSTM(nn.Module):
    """One LSTM layer over a trial's latent sequence, then a linear layer to class logits.

    Parameters
    ----------
    n_latents : int
        Size of each step's input (the VAE's number of factors).
    hidden : int
        LSTM state size (128 in the paper).
    n_classes : int
        Number of emotion classes.
    """

    def __init__(self, n_latents: int, hidden: int = 128, n_classes: int = N_CLASSES):
        super().__init__()
        for name, value in (("n_latents", n_latents), ("hidden", hidden), ("n_classes", n_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(name, f"{value!r} must be a positive integer")
        if n_classes < 2:
            raise InputError("n_classes", f"{n_classes} must be at least 2")
        self.n_latents = n_latents
        self.hidden = hidden
        self.n_classes = n_classes
        self.lstm = nn.LSTM(n_latents, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """Class logits (batch, n_classes) from sequences (batch, steps, n_latents)."""
        if (
            not isinstance(sequences, torch.Tensor)
            or sequences.ndim != 3
            or sequences.shape[2] != self.n_latents
        ):
            shape = (
                tuple(sequences.shape) if isinstance(sequences, torch.Tensor) else type(sequences).__name__
            )
            raise InputError(
                "sequences", f"shape {shape}; expected a tensor (batch, steps, {self.n_latents})"
            )
        _, (last_hidden, _) = self.lstm(sequences)
        return self.head(last_hidden[-1])


def check_sequences(sequences, classes, n_latents: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate latent sequences (n, steps, n_latents) and their classes (n,) in [0, n_classes).

    Returns float32 sequences and int64 classes.
    """
    sequences = np.asarray(sequences, dtype=np.float32)
    classes = np.asarray(classes)
    if (
        sequences.ndim != 3
        or sequences.shape[2] != n_latents
        or sequences.shape[0] == 0
        or sequences.shape[1] == 0
    ):
        raise InputError(
            "sequences", f"shape {sequences.shape}; expected (n_trials > 0, steps > 0, {n_latents})"
        )
    if not np.isfinite(sequences).all():
        raise InputError("sequences", "contains NaN or infinite values")
    if classes.shape != (sequences.shape[0],) or not np.issubdtype(classes.dtype, np.integer):
        raise InputError(
            "classes",
            f"shape {classes.shape}, dtype {classes.dtype}; expected ({sequences.shape[0]},) integers",
        )
    if classes.min() < 0 or classes.max() >= n_classes:
        raise InputError(
            "classes", f"values span [{classes.min()}, {classes.max()}]; expected [0, {n_classes})"
        )
    return sequences, classes.astype(np.int64)


def mask_factors(sequences: np.ndarray, keep_mask) -> np.ndarray:
    """Copy of ``sequences`` (..., n_latents) with the factors outside ``keep_mask`` set to zero."""
    sequences = np.asarray(sequences)
    mask = check_keep_mask(keep_mask, sequences.shape[-1])
    return np.where(mask, sequences, np.zeros((), dtype=sequences.dtype))


def predict_classes(model: EmotionLSTM, sequences: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Most likely class of each sequence (n, steps, n_latents) -> int64 (n,)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = torch.as_tensor(
                np.ascontiguousarray(sequences[start : start + batch_size]), device=device
            )
            predictions.append(model(batch).argmax(dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(predictions).astype(np.int64)


def evaluate_classifier(model: EmotionLSTM, sequences, classes, keep_mask=None) -> dict:
    """Accuracy and confusion matrix of ``model`` on one split.

    Parameters
    ----------
    model : EmotionLSTM
    sequences : array-like (n_trials, steps, n_latents)
        Latent means per frame.
    classes : int array-like (n_trials,)
        True classes.
    keep_mask : boolean array-like (n_latents,), optional
        Factors to keep; the others are set to zero before classifying.

    Returns
    -------
    dict
        ``accuracy``, ``confusion`` (n_classes x n_classes list of int, rows = true class,
        columns = predicted), ``chance_accuracy`` (share of the split's most frequent class)
        and ``n`` (number of trials).
    """
    sequences, classes = check_sequences(sequences, classes, model.n_latents, model.n_classes)
    if keep_mask is not None:
        sequences = mask_factors(sequences, keep_mask)
    predicted = predict_classes(model, sequences)
    confusion = np.zeros((model.n_classes, model.n_classes), dtype=np.int64)
    np.add.at(confusion, (classes, predicted), 1)
    return {
        "accuracy": float(np.mean(predicted == classes)),
        "confusion": confusion.tolist(),
        "chance_accuracy": float(np.bincount(classes, minlength=model.n_classes).max() / classes.size),
        "n": int(classes.size),
    }

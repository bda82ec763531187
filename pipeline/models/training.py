"""Training the β-VAE (resumable, streaming from the store) and the early-stopping loop it
shares with the emotion LSTM (:mod:`pipeline.models.classifier`).

The VAE reads its frames trial by trial from any array-like of shape
(n_trials, n_frames, C, H, W), a numpy array or a zarr array, so a data set larger than
memory still trains. Each epoch shuffles the training trials, reads ``trials_per_read`` of
them at a time, shuffles their frames and cuts batches.

Determinism: all randomness of epoch ``e`` (trial order, frame order, reparameterisation
noise) is drawn from generators seeded by ``(seed, e)``, and the model is initialised from
``seed``. A run resumed from the checkpoint written after epoch ``e`` therefore continues
exactly as the uninterrupted run would have; on CPU the results are bitwise equal.

Checkpoints (see :mod:`pipeline.models.checkpoint`) are written after every epoch:

- ``last``: model and Adam state, the best weights so far, history and early-stopping state;
- ``best``: the weights with the lowest monitored loss (validation loss, or the training loss
  when there are no validation trials).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.models.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from pipeline.models.configs import TrainConfig
from pipeline.models.early_stopping import (
    TRAIN_STREAM,
    VALIDATION_STREAM,
    BestSoFar,
    TrainingDiverged,
    fit_with_early_stopping,
    seeded_init,
)
from pipeline.models.encoding import Normaliser, check_rows, frames_shape, read_frames
from pipeline.models.state import (
    check_state,
    load_module_state,
    load_optimizer_state,
    optimizer_tensors,
    prefixed,
    select_device,
    training_state_mismatch,
)
from pipeline.models.vae import BetaVAE, VAEConfig
from pipeline.progress import Progress
from pipeline.threads import keep_fair_share


@dataclass
class TrainResult:
    """Outcome of :func:`train_vae`.

    ``model`` holds the best weights (in eval mode, on the training device); ``history`` has
    one dict per epoch with ``epoch``, ``train_loss``, ``reconstruction``, ``kl``,
    ``val_loss`` (None without validation trials) and ``seconds``.
    """

    model: BetaVAE
    history: list[dict]
    best_epoch: int
    best_loss: float
    monitor: str
    stopped_early: bool
    checkpoint_dir: Path


def _generators(
    seed: int, stream: int, epoch: int, device: torch.device
) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream, epoch]))
    noise = torch.Generator(device=device)
    noise.manual_seed(int(rng.integers(2**63)))
    return rng, noise


class VAETrainer:
    """Trains a β-VAE on the frames of the training trials, checkpointing every epoch.

    Parameters
    ----------
    frames : array-like (n_trials, n_frames, C, H, W)
        numpy or zarr array; read trial by trial, never whole.
    train_rows, val_rows : int array-like
        Trial indices of the training and validation trials (disjoint). ``val_rows`` may be
        empty; early stopping then monitors the training loss.
    model_config : VAEConfig
        Its ``input_shape`` must equal the frames' (C, H, W).
    train_config : TrainConfig
    checkpoint_dir : path
        Where ``last`` and ``best`` checkpoints are written.
    normalise : callable, optional
        Maps a float32 block (k, n_frames, C, H, W) to the model's input scale.
    progress : callable, optional
        Called after every epoch with that epoch's history dict.
    steps : callable, optional
        ``steps(stage, done, total)`` after every training step of an epoch (see
        :mod:`pipeline.progress`).
    """

    def __init__(
        self,
        frames: Any,
        train_rows: Any,
        val_rows: Any,
        model_config: VAEConfig,
        train_config: TrainConfig,
        checkpoint_dir: str | os.PathLike,
        normalise: Normaliser | None = None,
        progress: Callable[[dict], None] | None = None,
        steps: Progress | None = None,
    ):
        if not isinstance(model_config, VAEConfig):
            raise InputError("model_config", f"expected a VAEConfig, got {type(model_config).__name__}")
        if not isinstance(train_config, TrainConfig):
            raise InputError("train_config", f"expected a TrainConfig, got {type(train_config).__name__}")
        shape = frames_shape(frames)
        if shape[2:] != model_config.input_shape:
            raise InputError(
                "frames", f"images are {shape[2:]}; the model expects {model_config.input_shape}"
            )
        self.frames = frames
        self.train_rows = check_rows(train_rows, shape[0], "train_rows")
        self.val_rows = check_rows(val_rows, shape[0], "val_rows", allow_empty=True)
        if np.intersect1d(self.train_rows, self.val_rows).size:
            raise InputError("val_rows", "shares trials with train_rows")
        self.model_config = model_config
        self.config = train_config
        self.checkpoint_dir = Path(checkpoint_dir)
        self.normalise = normalise
        self.progress = progress
        self.steps = steps
        self.device = select_device(train_config.device)
        self.monitor = "val_loss" if self.val_rows.size else "train_loss"
        self._use_autocast = train_config.mixed_precision and self.device.type == "cuda"
        self._resident: torch.Tensor | None = None
        self._resident_position: np.ndarray | None = None

    # ----------------------------------------------------------------- batches
    def _batches(self, rows: np.ndarray, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
        """Frame batches from ``rows``; shuffled by ``rng`` (trials, then frames per read group) if given.

        Frames left over after a group's last full batch open the next group's first batch.
        """
        if self._resident is not None:
            yield from self._resident_batches(rows, rng)
            return
        size = self.config.batch_size
        group = self.config.trials_per_read
        order = rng.permutation(rows) if rng is not None else rows
        carry: np.ndarray | None = None
        for start in range(0, order.size, group):
            block = read_frames(self.frames, order[start : start + group], self.normalise)
            block = block.reshape(-1, *block.shape[2:])
            if rng is not None:
                block = block[rng.permutation(len(block))]
            if carry is not None:
                block = np.concatenate([carry, block])
            n_full = len(block) - len(block) % size
            for begin in range(0, n_full, size):
                yield block[begin : begin + size]
            carry = block[n_full:] if n_full < len(block) else None
        if carry is not None:
            yield carry

    def _to_device(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        if not isinstance(batch, torch.Tensor):  # else cut from the frames held on the device
            batch = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if self.config.channels_last:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    # ------------------------------------------------------ throughput options
    def _hold_frames_on_device(self) -> None:
        """Read the training and validation trials once into one tensor on the device."""
        rows = np.concatenate([self.train_rows, self.val_rows])
        n_frames, image = frames_shape(self.frames)[1], frames_shape(self.frames)[2:]
        resident = torch.empty((rows.size * n_frames, *image), dtype=torch.float32, device=self.device)
        group = self.config.trials_per_read
        for start in range(0, rows.size, group):
            block = read_frames(self.frames, rows[start : start + group], self.normalise)
            first = start * n_frames
            resident[first : first + block.shape[0] * n_frames] = self._to_device(block.reshape(-1, *image))
        position = np.full(frames_shape(self.frames)[0], -1, dtype=np.int64)
        position[rows] = np.arange(rows.size)
        self._resident, self._resident_position = resident, position

    def _resident_batches(self, rows: np.ndarray, rng: np.random.Generator | None) -> Iterator[torch.Tensor]:
        """The batches :meth:`_batches` streams, drawn with the same random calls, cut on the device."""
        n_frames = frames_shape(self.frames)[1]
        group = self.config.trials_per_read
        order = rng.permutation(rows) if rng is not None else rows
        indices = []
        for start in range(0, order.size, group):
            trials = self._resident_position[order[start : start + group]]
            frames = (trials[:, None] * n_frames + np.arange(n_frames)).reshape(-1)
            indices.append(frames[rng.permutation(frames.size)] if rng is not None else frames)
        flat = torch.from_numpy(np.concatenate(indices)).to(self.device)
        for begin in range(0, flat.numel(), self.config.batch_size):
            yield self._resident[flat[begin : begin + self.config.batch_size]]

    def _prepared_model(self, model: BetaVAE) -> BetaVAE:
        """Apply the memory-order and compile options; parameter names, and so checkpoints, stay the same."""
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.config.compile_model:
            model.encoder.compile()
            model.decoder.compile()
        return model

    # ------------------------------------------------------------------ epochs
    def _train_epoch(
        self, model: BetaVAE, optimizer: torch.optim.Optimizer, epoch: int, last_good: int
    ) -> dict:
        rng, noise = _generators(self.config.seed, TRAIN_STREAM, epoch, self.device)
        kl_weight = self.config.kl_weight(epoch)
        model.train()
        sums = torch.zeros(3, dtype=torch.float64)
        count = 0
        for batch_index, batch in enumerate(self._batches(self.train_rows, rng), start=1):
            keep_fair_share()
            x = self._to_device(batch)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._use_autocast):
                terms = model.loss(x, noise, kl_weight)
            values = (
                torch.stack([terms["total"], terms["reconstruction"], terms["kl"]]).detach().double().cpu()
            )
            if not torch.isfinite(values[0]):
                raise TrainingDiverged(
                    values[0].item(), epoch, batch_index, "training", self.checkpoint_dir, last_good
                )
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            sums += values * len(batch)
            count += len(batch)
            self._report_step(epoch, batch_index)
        train_loss, reconstruction, kl = (sums / count).tolist()
        return {"train_loss": train_loss, "reconstruction": reconstruction, "kl": kl}

    def _report_step(self, epoch: int, done: int) -> None:
        if self.steps is not None:
            n_frames = self.train_rows.size * frames_shape(self.frames)[1]
            total = -(-n_frames // self.config.batch_size)  # the last batch may be short
            self.steps(f"VAE epoch {epoch}/{self.config.epochs} (steps)", done, total)

    def _validation_loss(self, model: BetaVAE, epoch: int, last_good: int) -> float | None:
        if not self.val_rows.size:
            return None
        # The same noise every epoch, so that epochs are compared on equal terms.
        _, noise = _generators(self.config.seed, VALIDATION_STREAM, 0, self.device)
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch_index, batch in enumerate(self._batches(self.val_rows, None), start=1):
                keep_fair_share()
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._use_autocast):
                    value = model.loss(self._to_device(batch), noise)["total"].item()
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        value, epoch, batch_index, "validation", self.checkpoint_dir, last_good
                    )
                total += value * len(batch)
                count += len(batch)
        return total / count

    # ------------------------------------------------------------- checkpoints
    def _state_metadata(self, history: list[dict], best: BestSoFar, stopped_early: bool) -> dict:
        return {
            "kind": "vae-training-state",
            "epoch": len(history),
            "history": history,
            "best_epoch": best.epoch,
            "best_loss": best.loss,
            "since_improvement": best.since,
            "monitor": self.monitor,
            "stopped_early": stopped_early,
            "model_config": self.model_config.model_dump(mode="json"),
            "train_config": self.config.model_dump(mode="json"),
            "train_rows": self.train_rows.tolist(),
            "val_rows": self.val_rows.tolist(),
        }

    def _save(
        self,
        model: BetaVAE,
        optimizer: torch.optim.Optimizer,
        history: list[dict],
        best: BestSoFar,
        stopped_early: bool,
    ) -> None:
        adam_tensors, groups = optimizer_tensors(optimizer)
        tensors = {f"model.{key}": value for key, value in model.state_dict().items()}
        tensors.update({f"best_model.{key}": value for key, value in best.state.items()})
        tensors.update(adam_tensors)
        metadata = self._state_metadata(history, best, stopped_early)
        metadata["optimizer_param_groups"] = groups
        save_checkpoint(self.checkpoint_dir, "last", tensors, metadata)
        self._save_best(best)

    def _save_best(self, best: BestSoFar) -> None:
        save_checkpoint(
            self.checkpoint_dir,
            "best",
            {f"model.{key}": value for key, value in best.state.items()},
            {
                "kind": "vae-weights",
                "epoch": best.epoch,
                "loss": best.loss,
                "monitor": self.monitor,
                "model_config": self.model_config.model_dump(mode="json"),
            },
        )

    def _restore(
        self, model: BetaVAE, optimizer: torch.optim.Optimizer
    ) -> tuple[list[dict], BestSoFar, bool]:
        where = self.checkpoint_dir / "last.json"
        tensors, metadata = load_checkpoint(self.checkpoint_dir, "last")
        if metadata.get("kind") != "vae-training-state":
            raise InputError(where, f"is a {metadata.get('kind')!r} checkpoint, not a VAE training state")
        mismatch = training_state_mismatch(
            metadata, self.model_config, self.config, self.train_rows, self.val_rows
        )
        if mismatch is not None:
            raise InputError(where, mismatch)
        try:
            history = list(metadata["history"])
            best = BestSoFar(
                epoch=int(metadata["best_epoch"]),
                loss=float(metadata["best_loss"]),
                since=int(metadata["since_improvement"]),
            )
            stopped_early = bool(metadata["stopped_early"])
            groups = metadata["optimizer_param_groups"]
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(where, f"has incomplete training metadata ({err})") from err
        if len(history) != metadata.get("epoch"):
            raise InputError(where, "history length does not match its epoch")
        load_module_state(model, prefixed(tensors, "model."), where)
        best.state = prefixed(tensors, "best_model.")
        check_state(best.state, model.state_dict(), where)
        load_optimizer_state(optimizer, tensors, groups, where)
        return history, best, stopped_early

    # --------------------------------------------------------------------- fit
    def fit(self, resume: bool = False) -> TrainResult:
        """Train until ``epochs`` or early stopping; with ``resume``, continue from the ``last`` checkpoint.

        ``resume=True`` without a checkpoint starts afresh; ``resume=False`` overwrites any
        checkpoint in ``checkpoint_dir``.

        Raises
        ------
        TrainingDiverged
            If a training or validation loss is NaN or infinite.
        InputError
            For bad frames, rows or configurations, or a checkpoint that cannot be resumed.
        """
        model = self._prepared_model(seeded_init(self.model_config.build, self.config.seed).to(self.device))
        if self.config.frames_on_device:
            self._hold_frames_on_device()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.config.lr)
        if resume and checkpoint_exists(self.checkpoint_dir, "last"):
            history, best, stopped_early = self._restore(model, optimizer)
            # Rewrites a best checkpoint a kill may have left one epoch behind.
            self._save_best(best)
        else:
            history, best, stopped_early = [], BestSoFar(), False

        def run_epoch(epoch: int) -> dict:
            started = time.perf_counter()
            record = {"epoch": epoch, **self._train_epoch(model, optimizer, epoch, epoch - 1)}
            record["val_loss"] = self._validation_loss(model, epoch, epoch - 1)
            record["seconds"] = time.perf_counter() - started
            return record

        def after_epoch(history: list[dict], best: BestSoFar, stopped_early: bool) -> None:
            self._save(model, optimizer, history, best, stopped_early)
            if self.progress is not None:
                self.progress(dict(history[-1]))

        stopped_early = fit_with_early_stopping(
            model, run_epoch, epochs=self.config.epochs, patience=self.config.patience,
            monitor=self.monitor, history=history, best=best, stopped_early=stopped_early,
            after_epoch=after_epoch,
        )  # fmt: skip
        return TrainResult(
            model=model,
            history=history,
            best_epoch=best.epoch,
            best_loss=best.loss,
            monitor=self.monitor,
            stopped_early=stopped_early,
            checkpoint_dir=self.checkpoint_dir,
        )


def train_vae(*trainer_args: Any, resume: bool = False, **trainer_kwargs: Any) -> TrainResult:
    """Train a β-VAE in one call: the arguments are :class:`VAETrainer`'s, ``resume`` is
    :meth:`VAETrainer.fit`'s."""
    return VAETrainer(*trainer_args, **trainer_kwargs).fit(resume=resume)

"""Training: the frame-level β-VAE (resumable, streaming from the store) and the emotion LSTM.

The VAE reads its frames trial by trial from any array-like of shape
(n_trials, n_frames, C, H, W), a numpy array or a zarr array, so a data set larger than
memory still trains. Each epoch shuffles the training trials, reads ``trials_per_read`` of
them at a time, shuffles their frames and cuts batches.

Determinism: all randomness of epoch ``e`` (trial order, frame order, reparameterisation
noise) is drawn from generators seeded by ``(seed, e)``, and the model is initialised from
``seed``. A run resumed from the checkpoint written after epoch ``e`` therefore continues
exactly as the uninterrupted run would have; on CPU the results are bitwise equal.

Checkpoints (see :mod:`pipeline.checkpoint`) are written after every epoch:

- ``last``: model and Adam state, the best weights so far, history and early-stopping state;
- ``best``: the weights with the lowest monitored loss (validation loss, or the training loss
  when there are no validation trials).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import AfterValidator
from torch import nn
from torch.nn import functional

from pipeline.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from pipeline.errors import InputError
from pipeline.models.sequence import N_CLASSES, EmotionLSTM, check_sequences
from pipeline.models.vae import BetaVAE, VAEConfig
from pipeline.progress import Progress
from pipeline.threads import keep_fair_share
from pipeline.validators import (
    ConfigModel,
    Flag,
    NonNegativeInt,
    PositiveInt,
    PositiveNumber,
    check_positive_int,
)

__all__ = [
    "ClassifierConfig",
    "ClassifierResult",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "VAEConfig",
    "VAETrainer",
    "encode_frames",
    "iter_encode_frames",
    "load_classifier",
    "load_vae",
    "read_frames",
    "save_classifier",
    "select_device",
    "train_classifier",
    "train_vae",
]

Normaliser = Callable[[np.ndarray], np.ndarray]
# Separate random streams per purpose, so validation noise never shifts the training draws.
_TRAIN_STREAM = 0
_VALIDATION_STREAM = 1
_INIT_STREAM = 2


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


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` gives CUDA when available, else CPU; an explicit CUDA device must exist."""
    try:
        _check_device_name(name)
    except ValueError as err:
        raise InputError("device", f"{name!r} {err}") from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device", f"{name!r} was requested but CUDA is not available")
    return torch.device(name)


def _frames_shape(frames: Any) -> tuple[int, ...]:
    shape = getattr(frames, "shape", None)
    if shape is None or len(shape) != 5 or min(shape) < 1:
        raise InputError("frames", f"shape {shape}; expected a non-empty array (n_trials, n_frames, C, H, W)")
    return tuple(int(size) for size in shape)


def _check_rows(rows: Any, n_trials: int, where: str, allow_empty: bool = False) -> np.ndarray:
    rows = np.asarray([] if rows is None else rows)
    if rows.size == 0:
        if allow_empty:
            return np.zeros(0, dtype=np.int64)
        raise InputError(where, "is empty; at least one trial is needed")
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise InputError(
            where, f"shape {rows.shape}, dtype {rows.dtype}; expected a 1-D array of trial indices"
        )
    if rows.min() < 0 or rows.max() >= n_trials:
        raise InputError(
            where, f"indices span [{rows.min()}, {rows.max()}]; the frame array has {n_trials} trials"
        )
    if np.unique(rows).size != rows.size:
        raise InputError(where, "lists a trial more than once")
    return rows.astype(np.int64)


def read_frames(frames: Any, rows: np.ndarray, normalise: Normaliser | None = None) -> np.ndarray:
    """Read trials ``rows`` one by one from ``frames`` and bring them to the model's scale.

    Parameters
    ----------
    frames : array-like (n_trials, n_frames, C, H, W)
        numpy or zarr array; only the listed trials are read.
    rows : int array (k,)
        Trial indices.
    normalise : callable, optional
        Maps the float32 block (k, n_frames, C, H, W) to the model's input scale.

    Returns
    -------
    numpy.ndarray float32 (k, n_frames, C, H, W)
    """
    shape = _frames_shape(frames)
    rows = _check_rows(rows, shape[0], "rows")
    block = np.stack([np.asarray(frames[int(row)], dtype=np.float32) for row in rows])
    if block.shape[1:] != shape[1:]:
        raise InputError("frames", f"a trial read as shape {block.shape[1:]}; expected {shape[1:]}")
    finite = np.isfinite(block).reshape(len(rows), -1).all(axis=1)
    if not finite.all():
        raise InputError(f"frames[{int(rows[np.argmin(finite)])}]", "contains NaN or infinite values")
    if normalise is None:
        return block
    normalised = np.asarray(normalise(block), dtype=np.float32)
    if normalised.shape != block.shape:
        raise InputError("normalise", f"returned shape {normalised.shape} for a block of shape {block.shape}")
    if not np.isfinite(normalised).all():
        raise InputError("normalise", f"returned NaN or infinite values for trials {rows.tolist()}")
    return normalised


def _generators(
    seed: int, stream: int, epoch: int, device: torch.device
) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream, epoch]))
    noise = torch.Generator(device=device)
    noise.manual_seed(int(rng.integers(2**63)))
    return rng, noise


def _initialised_vae(model_config: VAEConfig, seed: int) -> BetaVAE:
    # A private RNG state, so initialisation depends on the seed alone and the caller's is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([seed, _INIT_STREAM, 0]).generate_state(1)[0]))
        return model_config.build()


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def _check_state(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str | Path
) -> None:
    """Refuse ``tensors`` unless their names, shapes and dtypes are exactly those of ``expected``."""
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))[:5]
        unexpected = sorted(set(tensors) - set(expected))[:5]
        raise InputError(where, f"tensors do not fit the model (missing {missing}, unexpected {unexpected})")
    for key, value in tensors.items():
        if value.shape != expected[key].shape or value.dtype != expected[key].dtype:
            raise InputError(
                where,
                f"tensor {key!r} is {tuple(value.shape)} {value.dtype}; "
                f"the model needs {tuple(expected[key].shape)} {expected[key].dtype}",
            )


def _load_module_state(module: nn.Module, tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    _check_state(tensors, module.state_dict(), where)
    module.load_state_dict(tensors)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Adam's state as flat tensors ``optimizer.<param index>.<name>`` plus JSON-native groups."""
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{name}": value
        for index, values in state["state"].items()
        for name, value in values.items()
    }
    return tensors, json.loads(json.dumps(state["param_groups"]))


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: Any, where: str | Path
) -> None:
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in _prefixed(tensors, "optimizer.").items():
        index_text, _, name = key.partition(".")
        if not index_text.isdigit() or int(index_text) >= len(parameters) or not name:
            raise InputError(where, f"optimizer tensor {key!r} names no parameter of the model")
        index = int(index_text)
        wanted = () if name == "step" else parameters[index].shape
        if value.shape != wanted:
            raise InputError(
                where, f"optimizer tensor {key!r} has shape {tuple(value.shape)}; expected {tuple(wanted)}"
            )
        state.setdefault(index, {})[name] = value
    current = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(current):
        raise InputError(where, "optimizer parameter groups do not match the model")
    restored = []
    for group, reference in zip(groups, current, strict=True):
        if (
            not isinstance(group, dict)
            or set(group) != set(reference)
            or group["params"] != reference["params"]
        ):
            raise InputError(where, "optimizer parameter groups do not match the model")
        restored.append({**group, "betas": tuple(group["betas"])} if "betas" in group else group)
    optimizer.load_state_dict({"state": state, "param_groups": restored})


def training_state_mismatch(
    metadata: dict, model_config: VAEConfig, train_config: TrainConfig, train_rows, val_rows
) -> str | None:
    """Why a saved VAE training state (``last`` checkpoint metadata) cannot be continued with
    these settings and rows, or None when it can.

    Epochs and device may change on resume; anything else would make a different run.
    """
    stored_train_config = metadata.get("train_config")
    if not isinstance(stored_train_config, dict):
        return "lacks its training configuration"
    current = train_config.model_dump(mode="json")
    for key in ("seed", "batch_size", "lr", "patience", "trials_per_read", "kl_warmup_epochs"):
        if stored_train_config.get(key, 0 if key == "kl_warmup_epochs" else None) != current[key]:
            return (
                f"was written with {key}={stored_train_config.get(key)!r}, this run has {current[key]!r};"
                " resume with the same settings or start afresh (resume=False)"
            )
    wanted = {
        "model_config": model_config.model_dump(mode="json"),
        "train_rows": np.asarray(train_rows).tolist(),
        "val_rows": np.asarray(val_rows).tolist(),
    }
    for key, value in wanted.items():
        if metadata.get(key) != value:
            return f"was written for a different {key}; resume with the same one or start afresh"
    return None


def can_resume_training(
    checkpoint_dir: str | os.PathLike,
    model_config: VAEConfig,
    train_config: TrainConfig,
    train_rows,
    val_rows,
) -> bool:
    """Whether ``checkpoint_dir`` holds a training state of this model on these rows (finished, or
    killed midway) that :meth:`VAETrainer.fit` can continue with ``resume=True``."""
    if not checkpoint_exists(checkpoint_dir, "last"):
        return False
    try:
        _, metadata = load_checkpoint(checkpoint_dir, "last")
    except InputError:
        return False  # unreadable: trained afresh
    return metadata.get("kind") == "vae-training-state" and (
        training_state_mismatch(metadata, model_config, train_config, train_rows, val_rows) is None
    )


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
        shape = _frames_shape(frames)
        if shape[2:] != model_config.input_shape:
            raise InputError(
                "frames", f"images are {shape[2:]}; the model expects {model_config.input_shape}"
            )
        self.frames = frames
        self.train_rows = _check_rows(train_rows, shape[0], "train_rows")
        self.val_rows = _check_rows(val_rows, shape[0], "val_rows", allow_empty=True)
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
        n_frames, image = _frames_shape(self.frames)[1], _frames_shape(self.frames)[2:]
        resident = torch.empty((rows.size * n_frames, *image), dtype=torch.float32, device=self.device)
        group = self.config.trials_per_read
        for start in range(0, rows.size, group):
            block = read_frames(self.frames, rows[start : start + group], self.normalise)
            first = start * n_frames
            resident[first : first + block.shape[0] * n_frames] = self._to_device(block.reshape(-1, *image))
        position = np.full(_frames_shape(self.frames)[0], -1, dtype=np.int64)
        position[rows] = np.arange(rows.size)
        self._resident, self._resident_position = resident, position

    def _resident_batches(self, rows: np.ndarray, rng: np.random.Generator | None) -> Iterator[torch.Tensor]:
        """The batches :meth:`_batches` streams, drawn with the same random calls, cut on the device."""
        n_frames = _frames_shape(self.frames)[1]
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
        rng, noise = _generators(self.config.seed, _TRAIN_STREAM, epoch, self.device)
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
            n_frames = self.train_rows.size * _frames_shape(self.frames)[1]
            total = -(-n_frames // self.config.batch_size)  # the last batch may be short
            self.steps(f"VAE epoch {epoch}/{self.config.epochs} (steps)", done, total)

    def _validation_loss(self, model: BetaVAE, epoch: int, last_good: int) -> float | None:
        if not self.val_rows.size:
            return None
        # The same noise every epoch, so that epochs are compared on equal terms.
        _, noise = _generators(self.config.seed, _VALIDATION_STREAM, 0, self.device)
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
    def _state_metadata(self, history: list[dict], best: dict, stopped_early: bool) -> dict:
        return {
            "kind": "vae-training-state",
            "epoch": len(history),
            "history": history,
            "best_epoch": best["epoch"],
            "best_loss": best["loss"],
            "since_improvement": best["since"],
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
        best: dict,
        stopped_early: bool,
    ) -> None:
        optimizer_tensors, groups = _optimizer_tensors(optimizer)
        tensors = {f"model.{key}": value for key, value in model.state_dict().items()}
        tensors.update({f"best_model.{key}": value for key, value in best["state"].items()})
        tensors.update(optimizer_tensors)
        metadata = self._state_metadata(history, best, stopped_early)
        metadata["optimizer_param_groups"] = groups
        save_checkpoint(self.checkpoint_dir, "last", tensors, metadata)
        self._save_best(best)

    def _save_best(self, best: dict) -> None:
        save_checkpoint(
            self.checkpoint_dir,
            "best",
            {f"model.{key}": value for key, value in best["state"].items()},
            {
                "kind": "vae-weights",
                "epoch": best["epoch"],
                "loss": best["loss"],
                "monitor": self.monitor,
                "model_config": self.model_config.model_dump(mode="json"),
            },
        )

    def _restore(self, model: BetaVAE, optimizer: torch.optim.Optimizer) -> tuple[list[dict], dict, bool]:
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
            best = {
                "epoch": int(metadata["best_epoch"]),
                "loss": float(metadata["best_loss"]),
                "since": int(metadata["since_improvement"]),
            }
            stopped_early = bool(metadata["stopped_early"])
            groups = metadata["optimizer_param_groups"]
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(where, f"has incomplete training metadata ({err})") from err
        if len(history) != metadata.get("epoch"):
            raise InputError(where, "history length does not match its epoch")
        _load_module_state(model, _prefixed(tensors, "model."), where)
        best["state"] = _prefixed(tensors, "best_model.")
        _check_state(best["state"], model.state_dict(), where)
        _load_optimizer_state(optimizer, tensors, groups, where)
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
        model = self._prepared_model(_initialised_vae(self.model_config, self.config.seed).to(self.device))
        if self.config.frames_on_device:
            self._hold_frames_on_device()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.config.lr)
        if resume and checkpoint_exists(self.checkpoint_dir, "last"):
            history, best, stopped_early = self._restore(model, optimizer)
            # Rewrites a best checkpoint a kill may have left one epoch behind.
            self._save_best(best)
        else:
            history, stopped_early = [], False
            best = {"epoch": 0, "loss": math.inf, "since": 0, "state": None}

        epoch = len(history)
        while not stopped_early and epoch < self.config.epochs:
            epoch += 1
            started = time.perf_counter()
            record = {"epoch": epoch, **self._train_epoch(model, optimizer, epoch, len(history))}
            record["val_loss"] = self._validation_loss(model, epoch, len(history))
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            monitored = record[self.monitor]
            if monitored < best["loss"]:
                state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
                best = {"epoch": epoch, "loss": monitored, "since": 0, "state": state}
            else:
                best["since"] += 1
            stopped_early = best["since"] >= self.config.patience
            self._save(model, optimizer, history, best, stopped_early)
            if self.progress is not None:
                self.progress(dict(record))

        model.load_state_dict(best["state"])
        model.eval()
        return TrainResult(
            model=model,
            history=history,
            best_epoch=best["epoch"],
            best_loss=best["loss"],
            monitor=self.monitor,
            stopped_early=stopped_early,
            checkpoint_dir=self.checkpoint_dir,
        )


def train_vae(
    frames: Any,
    train_rows: Any,
    val_rows: Any,
    model_config: VAEConfig,
    train_config: TrainConfig,
    checkpoint_dir: str | os.PathLike,
    normalise: Normaliser | None = None,
    resume: bool = False,
    progress: Callable[[dict], None] | None = None,
    steps: Progress | None = None,
) -> TrainResult:
    """Train a β-VAE; see :class:`VAETrainer` for the parameters and :meth:`VAETrainer.fit` for resuming."""
    trainer = VAETrainer(
        frames, train_rows, val_rows, model_config, train_config, checkpoint_dir, normalise, progress, steps
    )
    return trainer.fit(resume=resume)


def load_vae(checkpoint_dir: str | os.PathLike, which: str = "best", device: str = "cpu") -> BetaVAE:
    """The β-VAE of checkpoint ``which`` (``"best"`` or ``"last"``), in eval mode.

    Reads safetensors and JSON only; a malformed or tampered checkpoint raises InputError.
    """
    if which not in ("best", "last"):
        raise InputError("which", f"{which!r} must be 'best' or 'last'")
    tensors, metadata = load_checkpoint(checkpoint_dir, which)
    where = Path(checkpoint_dir) / f"{which}.json"
    if "model_config" not in metadata:
        raise InputError(where, "lacks the model configuration")
    model = VAEConfig.model_validate(metadata["model_config"]).build()
    _load_module_state(model, _prefixed(tensors, "model."), where)
    return model.to(select_device(device)).eval()


def iter_encode_frames(
    model: BetaVAE,
    frames: Any,
    rows: Any,
    batch_size: int = 256,
    normalise: Normaliser | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Encode the frames of trials ``rows`` group by group, reading only those trials.

    Yields
    ------
    (rows, mu, logvar)
        The group's trial indices (k,) and float32 arrays (k, n_frames, n_latents), so a caller
        can write each group to the store as it comes. A group holds about ``batch_size``
        frames (at least one trial).
    """
    if not isinstance(model, BetaVAE):
        raise InputError("model", f"expected a BetaVAE, got {type(model).__name__}")
    check_positive_int("batch_size", batch_size)
    shape = _frames_shape(frames)
    if shape[2:] != model.input_shape:
        raise InputError("frames", f"images are {shape[2:]}; the model expects {model.input_shape}")
    rows = _check_rows(rows, shape[0], "rows")
    device = next(model.parameters()).device
    trials_per_group = max(1, batch_size // shape[1])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, rows.size, trials_per_group):
                keep_fair_share()
                group = rows[start : start + trials_per_group]
                block = read_frames(frames, group, normalise)
                mu, logvar = model.encode(torch.from_numpy(block.reshape(-1, *shape[2:])).to(device))
                yield (
                    group,
                    mu.float().cpu().numpy().reshape(group.size, shape[1], -1),
                    logvar.float().cpu().numpy().reshape(group.size, shape[1], -1),
                )
    finally:
        model.train(was_training)


def encode_frames(
    model: BetaVAE,
    frames: Any,
    rows: Any,
    batch_size: int = 256,
    normalise: Normaliser | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log-variances of every frame of trials ``rows``.

    Returns
    -------
    (mu, logvar) : float32 arrays (len(rows), n_frames, n_latents), in the order of ``rows``.
    """
    parts = list(iter_encode_frames(model, frames, rows, batch_size, normalise))
    return np.concatenate([mu for _, mu, _ in parts]), np.concatenate([logvar for _, _, logvar in parts])


# ------------------------------------------------------------------------ classifier
class ClassifierConfig(ConfigModel):
    """How the emotion LSTM is trained (Adam, cross-entropy, early stopping)."""

    hidden: PositiveInt = 128
    epochs: PositiveInt = 200
    batch_size: PositiveInt = 32
    lr: PositiveNumber = 1e-3
    patience: PositiveInt = 20
    seed: NonNegativeInt = 0
    device: DeviceName = "auto"


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
    train_x = np.asarray(train_sequences, dtype=np.float32)
    if train_x.ndim != 3:
        raise InputError("train_sequences", f"shape {train_x.shape}; expected (n_trials, steps, n_latents)")
    n_latents = train_x.shape[2]
    train_x, train_y = check_sequences(train_x, train_classes, n_latents, n_classes)
    has_validation = val_sequences is not None and len(val_sequences) > 0
    if has_validation:
        val_x, val_y = check_sequences(val_sequences, val_classes, n_latents, n_classes)
        if val_x.shape[1] != train_x.shape[1]:
            raise InputError(
                "val_sequences", f"have {val_x.shape[1]} steps; the training sequences {train_x.shape[1]}"
            )
    device = select_device(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([config.seed, _INIT_STREAM, 0]).generate_state(1)[0]))
        model = EmotionLSTM(n_latents, config.hidden, n_classes)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    tensors = {"train": (torch.from_numpy(train_x).to(device), torch.from_numpy(train_y).to(device))}
    if has_validation:
        tensors["val"] = (torch.from_numpy(val_x).to(device), torch.from_numpy(val_y).to(device))
    monitor = "val_loss" if has_validation else "train_loss"

    history: list[dict] = []
    best_loss, best_epoch, since, best_state = math.inf, 0, 0, None
    for epoch in range(1, config.epochs + 1):
        order = np.random.default_rng(
            np.random.SeedSequence([config.seed, _TRAIN_STREAM, epoch])
        ).permutation(len(train_y))
        train_loss, train_accuracy = _classifier_pass(
            model, *tensors["train"], config.batch_size, optimizer, order
        )
        val_loss, val_accuracy = (
            _classifier_pass(model, *tensors["val"], config.batch_size) if has_validation else (None, None)
        )
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
        }
        history.append(record)
        if progress is not None:
            progress(dict(record))
        if not math.isfinite(record[monitor]):
            raise TrainingDiverged(record[monitor], epoch, 0, "classifier")
        if record[monitor] < best_loss:
            best_loss, best_epoch, since = record[monitor], epoch, 0
            best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        else:
            since += 1
            if since >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return ClassifierResult(
        model=model, history=history, best_epoch=best_epoch, monitor=monitor, config=config
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
    _load_module_state(model, _prefixed(tensors, "model."), where)
    return model.to(select_device(device)).eval()

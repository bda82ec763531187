"""Model and optimiser state as flat named tensors: what a checkpoint (see
:mod:`pipeline.models.checkpoint`) stores, checked before anything is loaded into a model.

A checkpoint keeps each module's weights under a prefix (``model.``, ``best_model.``) and
Adam's state as ``optimizer.<parameter index>.<name>`` beside its JSON-native parameter groups.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.models.checkpoint import checkpoint_exists, load_checkpoint
from pipeline.models.configs import TrainConfig, _check_device_name
from pipeline.models.vae import BetaVAE, VAEConfig


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` gives CUDA when available, else CPU; an explicit CUDA device must exist."""
    _check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device", f"{name!r} was requested but CUDA is not available")
    return torch.device(name)


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, named without it."""
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def check_state(
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


def load_module_state(module: nn.Module, tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """Load ``tensors`` into ``module`` once :func:`check_state` accepts them."""
    check_state(tensors, module.state_dict(), where)
    module.load_state_dict(tensors)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Adam's state as flat tensors ``optimizer.<param index>.<name>`` plus JSON-native groups."""
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{name}": value
        for index, values in state["state"].items()
        for name, value in values.items()
    }
    return tensors, json.loads(json.dumps(state["param_groups"]))


def _optimizer_state(
    parameters: list[torch.Tensor], tensors: dict[str, torch.Tensor], where: str | Path
) -> dict[int, dict[str, torch.Tensor]]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in prefixed(tensors, "optimizer.").items():
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
    return state


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: Any, where: str | Path
) -> None:
    """Restore what :func:`optimizer_tensors` saved, refusing state that names other parameters."""
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    state = _optimizer_state(parameters, tensors, where)
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
    killed midway) that :meth:`pipeline.models.training.VAETrainer.fit` can continue with ``resume=True``."""
    if not checkpoint_exists(checkpoint_dir, "last"):
        return False
    try:
        _, metadata = load_checkpoint(checkpoint_dir, "last")
    except InputError:
        return False  # unreadable: trained afresh
    return metadata.get("kind") == "vae-training-state" and (
        training_state_mismatch(metadata, model_config, train_config, train_rows, val_rows) is None
    )


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
    load_module_state(model, prefixed(tensors, "model."), where)
    return model.to(select_device(device)).eval()

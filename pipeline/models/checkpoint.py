"""Checkpoints that load without executing code: safetensors for tensors, JSON for the rest.

A checkpoint called ``name`` in a directory is two files:

- ``<name>-<token>.safetensors``: the tensors (safetensors holds raw arrays and a JSON header,
  nothing callable);
- ``<name>.json``: the metadata plus the tensor file's name and SHA-256.

Every file is written to a temporary name and moved into place with ``os.replace``, and the
JSON (the pointer) is replaced only after its tensor file is complete. A kill at any moment
therefore leaves either the previous checkpoint or the new one, never a mix; tensor files no
pointer names any more are removed on the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from pipeline.errors import InputError
from pipeline.files import atomic_write_bytes

CHECKPOINT_FORMAT = "eegmi-checkpoint"
CHECKPOINT_VERSION = 1
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
# A JSON pointer is small; refusing huge files keeps a crafted one from exhausting memory.
_MAX_JSON_BYTES = 64 * 1024 * 1024


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory for this.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise InputError("checkpoint name", f"{name!r} must be letters, digits or underscores")


def _pointer_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.json"


def checkpoint_exists(directory: str | os.PathLike, name: str) -> bool:
    """Whether ``directory`` holds a checkpoint pointer called ``name`` (its contents are not checked)."""
    _check_name(name)
    return _pointer_path(Path(directory), name).is_file()


def save_checkpoint(
    directory: str | os.PathLike, name: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> Path:
    """Save tensors and JSON-native metadata as checkpoint ``name``, atomically.

    Parameters
    ----------
    directory : path
        Created if missing.
    name : str
        Letters, digits and underscores, e.g. ``"last"`` or ``"best"``.
    tensors : mapping of str to torch.Tensor
        Saved from CPU copies; any dtype safetensors supports.
    metadata : mapping
        JSON-native values (dicts, lists, str, int, float, bool, None).

    Returns
    -------
    Path
        The JSON pointer file.
    """
    _check_name(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError("checkpoint tensors", f"entry {key!r} is not a str -> torch.Tensor pair")
    try:
        metadata_text = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError("checkpoint metadata", f"is not JSON-serialisable (NaN included): {err}") from err

    cpu_tensors = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    payload = safetensors.torch.save(cpu_tensors)
    tensors_file = f"{name}-{uuid.uuid4().hex}.safetensors"
    atomic_write_bytes(directory / tensors_file, payload)
    pointer = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "tensors_file": tensors_file,
        "tensors_sha256": hashlib.sha256(payload).hexdigest(),
        "metadata": json.loads(metadata_text),
    }
    pointer_path = _pointer_path(directory, name)
    atomic_write_bytes(pointer_path, json.dumps(pointer, indent=1).encode())
    _remove_stale_files(directory, name, keep=tensors_file)
    return pointer_path


def _remove_stale_files(directory: Path, name: str, keep: str) -> None:
    """Delete tensor files of ``name`` other than ``keep``, and temporary files a kill left behind."""
    tensor_file = rf"{re.escape(name)}-[0-9a-f]{{32}}\.safetensors"
    # Temporary files are ".<target name>.<random>.tmp" (see atomic_write_bytes).
    stale = re.compile(rf"^(?:{tensor_file}|\.(?:{tensor_file}|{re.escape(name)}\.json)\..+\.tmp)$")
    for path in directory.iterdir():
        if path.name != keep and stale.match(path.name):
            path.unlink(missing_ok=True)


def load_checkpoint(
    directory: str | os.PathLike, name: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load checkpoint ``name``: its tensors (on CPU) and its metadata.

    Nothing in either file is executed: the pointer is parsed as JSON and the tensor file as
    safetensors, whose SHA-256 must match the one the pointer recorded.

    Raises
    ------
    InputError
        If the checkpoint is missing, malformed, or its tensor file does not match its pointer
        (e.g. a pickle or other file put in its place).
    """
    _check_name(name)
    directory = Path(directory)
    pointer_path = _pointer_path(directory, name)
    if not pointer_path.is_file():
        raise InputError(pointer_path, "no such checkpoint")
    if pointer_path.stat().st_size > _MAX_JSON_BYTES:
        raise InputError(pointer_path, "is too large to be a checkpoint pointer")
    try:
        pointer = json.loads(pointer_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # nested too deep
        raise InputError(pointer_path, f"is not a JSON checkpoint pointer ({err})") from err
    if not isinstance(pointer, dict) or pointer.get("format") != CHECKPOINT_FORMAT:
        raise InputError(pointer_path, f"is not an {CHECKPOINT_FORMAT} file")
    if pointer.get("version") != CHECKPOINT_VERSION:
        raise InputError(
            pointer_path, f"has version {pointer.get('version')!r}; expected {CHECKPOINT_VERSION}"
        )
    tensors_file = pointer.get("tensors_file")
    expected_digest = pointer.get("tensors_sha256")
    metadata = pointer.get("metadata")
    # A bare file name only: a pointer must not send the loader elsewhere on the file system.
    if not isinstance(tensors_file, str) or Path(tensors_file).name != tensors_file or not tensors_file:
        raise InputError(pointer_path, f"names an invalid tensor file {tensors_file!r}")
    if not isinstance(expected_digest, str) or not isinstance(metadata, dict):
        raise InputError(pointer_path, "lacks the tensor file digest or the metadata object")

    tensors_path = directory / tensors_file
    if not tensors_path.is_file():
        raise InputError(tensors_path, "tensor file named by the checkpoint is missing")
    payload = tensors_path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != expected_digest:
        raise InputError(tensors_path, "SHA-256 does not match its checkpoint pointer (changed or replaced)")
    try:
        tensors = safetensors.torch.load(payload)
    except safetensors.SafetensorError as err:
        raise InputError(tensors_path, f"is not a safetensors file ({err})") from err
    return tensors, metadata

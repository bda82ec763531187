"""The frame store: one zarr v3 group holding every trial's frames, labels and provenance.

Layout (a contract other stages and reports rely on)::

    frames          float32 (n_rows, *frame_shape), one chunk per trial, fill NaN
    labels          float32 (n_rows, label_width)
    subject, trial  int32 (n_rows,)
    split           int8 (n_rows,): an image's part of its reader's split (0 train, 1 validation,
                    2 test); -1 for EEG trials, which the learn stage splits. Stores written
                    before this array existed lack it (see :data:`SPLIT_ARRAY`).
    source          UTF-8 string (n_rows,): the file the trial came from
    source_sha256   UTF-8 string (n_rows,): hex SHA-256 of that file
    committed       bool (n_rows,): True once every array of the row is written
    latents/mu, latents/logvar  float32 (n_rows, frame_shape[0], H), fill NaN, once encoded
    latents/encoded bool (n_rows,): True once both latent arrays of the row are written
    latents_<protocol>/...   the same three arrays for a second model (``--protocol both``: the
                    subject protocol's β-VAE beside the trial protocol's in ``latents/``)

Group attrs hold the caller's metadata (preprocessing config, band edges, grid, montage,
normalisation statistics, data kind) plus the keys the store manages itself: ``config_hash``,
``package_version``, ``created``, ``updated`` and ``store_format``.

Crash safety rests on ordering: rows are reserved by resizing (data arrays first, the
``committed`` marker last), data is written by index, and the marker is set last. A killed run
leaves reserved rows uncommitted; they are invisible to every reader and the next run reuses
them, so re-running an ingest never duplicates a trial. Writers of one store take turns through
:func:`writer_lock` (threads of one process, and processes on one machine for local stores).
"""

from __future__ import annotations

import re

import numpy as np
import zarr

from pipeline.errors import InputError

STORE_FORMAT = "eegmi-frames/1"
MANAGED_ATTRS = ("config_hash", "package_version", "created", "updated", "store_format")
ROW_ARRAYS = ("frames", "labels", "subject", "trial", "source", "source_sha256")
# Per-row split part; optional, so that EEG stores written before it existed still open (their
# rows read -1, no stored split). Image stores cannot do without it: see pipeline.store.ingest_images.
SPLIT_ARRAY = "split"
NO_SPLIT = -1
COMMIT_ARRAY = "committed"
LATENTS_GROUP = "latents"
LATENT_MARKER = "encoded"
LATENT_GROUP_NAME = re.compile(rf"^{LATENTS_GROUP}(_[a-z][a-z0-9]*)?$")
# Small per-row arrays share chunks of this many rows; zarr writes each chunk atomically, so a
# kill mid-write leaves a chunk either old or new, never torn.
ROW_CHUNK = 4096
LATENT_CHUNK_BYTES = 1 << 20
# Byte-shuffled LZ4 compresses band images as well as zarr's default Zstandard (~0.65 of raw)
# at a quarter of the time, which matters when a full DEAP ingest writes 1 GB of frames.
FRAMES_COMPRESSOR = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def open_group(where: str, mode: str) -> zarr.Group:
    # Writers never trust consolidated metadata: a stale snapshot would hide rows and let them
    # be overwritten.
    use_consolidated = None if mode == "r" else False
    try:
        return zarr.open_group(where, mode=mode, zarr_format=3, use_consolidated=use_consolidated)
    except FileNotFoundError as err:
        raise InputError(where, "no frame store here") from err
    except (zarr.errors.ContainsArrayError, FileExistsError, NotADirectoryError) as err:
        raise InputError(where, f"is not a frame store: {err}") from err


def complete_layout(group: zarr.Group, frame_shape: tuple[int, ...], label_width: int) -> None:
    """Create the empty arrays the group lacks (all of them for a new store)."""
    specs = {
        "frames": dict(
            shape=(0, *frame_shape),
            chunks=(1, *frame_shape),
            dtype="float32",
            fill_value=np.nan,
            compressors=FRAMES_COMPRESSOR,
            # One file per trial side by side (c.<row>.0.0.0.0): the default "/" gives each trial
            # four nested folders, and creating them cost more than compressing the frames.
            chunk_key_encoding={"name": "default", "separator": "."},
        ),
        "labels": dict(
            shape=(0, label_width), chunks=(ROW_CHUNK, label_width), dtype="float32", fill_value=np.nan
        ),
        "subject": dict(shape=(0,), chunks=(ROW_CHUNK,), dtype="int32", fill_value=-1),
        "trial": dict(shape=(0,), chunks=(ROW_CHUNK,), dtype="int32", fill_value=-1),
        SPLIT_ARRAY: dict(shape=(0,), chunks=(ROW_CHUNK,), dtype="int8", fill_value=NO_SPLIT),
        "source": dict(shape=(0,), chunks=(ROW_CHUNK,), dtype=str),
        "source_sha256": dict(shape=(0,), chunks=(ROW_CHUNK,), dtype=str),
        COMMIT_ARRAY: dict(shape=(0,), chunks=(ROW_CHUNK,), dtype="bool", fill_value=False),
    }
    present = set(group.array_keys())
    # The marker comes last so that a store holding it holds every other array.
    for name, spec in specs.items():
        if name not in present:
            array = group.create_array(name, **spec)
            if COMMIT_ARRAY in present:  # a store written before the array existed: its rows read -1
                array.resize((group[COMMIT_ARRAY].shape[0], *array.shape[1:]))

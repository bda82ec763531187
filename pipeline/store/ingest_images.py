"""Image batches into the frame store, and the image store read back: split, frames, latents.

An image store is a frame store (:mod:`pipeline.store.frames`) whose rows are single images:
``frames`` (n, 1, C, H, W) in [0, 1], ``labels`` (n, 1) the class or -1, ``source`` the file an
image came from (one IDX file holds many images, a JPEG one) and ``trial`` the image's position
in it, so a row's key ``(source_sha256, trial)`` names one image and re-running an ingest never
stores an image twice. Images have no subjects (``subject`` is -1); the ``split`` column holds
the image's part of the reader's split (0 train, 1 validation, 2 test), fixed when the image is
stored, so a resumed or repeated run trains and evaluates on exactly the same images. Image
stores written before the ``split`` column existed (they kept the part in ``subject``) are
refused with a line that says to rerun.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Literal

import numpy as np
import zarr
from pydantic import Field

from pipeline import __version__
from pipeline.analysis.splits import Split
from pipeline.errors import InputError
from pipeline.models.presets import IMAGE_DATASETS, SplitCaps
from pipeline.sources.celeba import SkippedImage
from pipeline.sources.images import SPLIT_NAMES, ImageBatch
from pipeline.store.frames import FrameStore
from pipeline.store.ingest_eeg import StoreSpec
from pipeline.validators import ConfigModel, NonNegativeInt, PositiveInt

IMAGE_DATA_KINDS: tuple[str, ...] = ("idx", "images", "synthetic")
SPLIT_PROTOCOL = "image"
FRAME_UNITS = "pixel intensity in [0, 1]"
NO_SUBJECT = -1
_READ_BLOCK_ROWS = 2048


class ImageStoreConfig(ConfigModel):
    """What makes the stored pixels and their split: a store refuses images made any other way.

    Attributes
    ----------
    dataset : str
        ``"mnist"`` or ``"celeba"``.
    image_shape : (C, H, W)
        Shape of every stored image.
    preprocessing : str
        How the reader turned file contents into pixels in [0, 1].
    split_rule : str
        How the reader assigned each image to train, validation or test.
    split_seed : int
        Seed of that assignment.
    """

    dataset: Literal[IMAGE_DATASETS]
    image_shape: tuple[PositiveInt, PositiveInt, PositiveInt]
    preprocessing: Annotated[str, Field(min_length=1)]
    split_rule: Annotated[str, Field(min_length=1)]
    split_seed: NonNegativeInt = 0

    def config_hash(self) -> str:
        """Short stable hash (first 16 hex digits of SHA-256), the store's ``config_hash``."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _store_attrs(config: ImageStoreConfig, data_kind: str, data_source: str, extra: dict) -> dict:
    return {
        "dataset": config.dataset,
        "data_kind": data_kind,
        "data_source": data_source,
        "image_config": config.model_dump(mode="json"),
        "image_shape": list(config.image_shape),
        "label_names": ["class"],
        "frame_units": FRAME_UNITS,
        "package_version": __version__,
        **extra,
    }


def image_store_spec(
    config: ImageStoreConfig,
    data_kind: str,
    data_source: str,
    extra_attrs: dict | None = None,
) -> StoreSpec:
    """The store of images made as ``config`` says, for :func:`pipeline.store.ingest_eeg.open_store`.

    Parameters
    ----------
    config : ImageStoreConfig
        Pixel preprocessing and split; part of the store's configuration hash.
    data_kind : str
        ``"idx"`` (MNIST files), ``"images"`` (JPEG folders, scikit-learn's digits) or
        ``"synthetic"`` (procedural images); becomes the report's ``source.kind``.
    data_source : str
        The data folder, or the ``embedded://`` name of a generated set.
    extra_attrs : dict, optional
        JSON-native attributes to record as well (e.g. the procedural ground truth).

    The store opened with it holds frames (n, 1, C, H, W) and one label per image; it refuses,
    naming the store, images of another kind or source, and a store of the older layout.
    """
    if not isinstance(config, ImageStoreConfig):
        raise InputError("config", f"expected an ImageStoreConfig, got {type(config).__name__}")
    if data_kind not in IMAGE_DATA_KINDS:
        raise InputError("data_kind", f"{data_kind!r} is not one of {IMAGE_DATA_KINDS}")
    if not isinstance(data_source, str) or not data_source:
        raise InputError("data_source", f"{data_source!r} must name the data folder or embedded set")
    return StoreSpec(
        config_hash=config.config_hash(),
        attrs=_store_attrs(config, data_kind, data_source, dict(extra_attrs or {})),
        frame_shape=(1, *config.image_shape),
        label_width=1,
        refuse=partial(_refuse_other_images, data_kind=data_kind, data_source=data_source),
    )


def _refuse_other_images(path: str, data_kind: str, data_source: str) -> None:
    try:
        stored = FrameStore.open(path)
    except InputError:  # no store yet, or not a frame store: create_or_open creates it or says why
        return
    _check_split_column(stored)
    attrs = stored.attrs
    for key, value in (("data_kind", data_kind), ("data_source", data_source)):
        if key in attrs and attrs[key] != value:
            raise InputError(
                path,
                f"holds images of {key} {attrs[key]!r}; this run adds {value!r}; use a new --out folder",
            )


def _check_split_column(store: FrameStore) -> None:
    if not store.has_split:
        raise InputError(
            store.path,
            "is an image store of an older layout (each image's split part in the subject column, "
            "no split column); rerun into a new --out folder",
        )


@dataclass
class ImageIngestResult:
    """What an ingest read and stored; JSON-small, so it can travel as a Prefect result.

    ``taken`` counts the images of each part within the caps (stored now or before),
    ``n_written`` those newly stored, ``skipped`` the unreadable images the reader named.
    """

    n_read: int = 0
    n_written: int = 0
    n_sources: int = 0
    taken: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLIT_NAMES, 0))
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "n_read": self.n_read,
            "n_written": self.n_written,
            "n_sources": self.n_sources,
            "taken": dict(self.taken),
            "skipped": [dict(entry) for entry in self.skipped],
        }


def _within_caps(split: np.ndarray, caps: tuple[int | None, ...], taken: list[int]) -> np.ndarray:
    """Which images of a batch still fit their part's cap, in stream order; updates ``taken``."""
    keep = np.zeros(split.shape, dtype=bool)
    for part, cap in enumerate(caps):
        members = np.flatnonzero(split == part)
        room = members.size if cap is None else max(0, cap - taken[part])
        keep[members[:room]] = True
        taken[part] += min(room, members.size)
    return keep


def _caps_full(caps: tuple[int | None, ...], taken: list[int]) -> bool:
    return all(cap is not None and count >= cap for cap, count in zip(caps, taken, strict=True))


def _as_rows(rows: Iterable[int]) -> np.ndarray:
    return rows if isinstance(rows, np.ndarray) else np.fromiter(rows, dtype=np.int64)


def _check_image_store(store: FrameStore) -> tuple[int, int, int]:
    if not isinstance(store, FrameStore):
        raise InputError("store", f"expected a FrameStore, got {type(store).__name__}")
    if len(store.frame_shape) != 4 or store.frame_shape[0] != 1 or store.label_width != 1:
        raise InputError(
            store.path,
            f"holds frames {store.frame_shape} with {store.label_width} labels; an image store holds "
            "(1, C, H, W) frames with one label",
        )
    _check_split_column(store)
    return tuple(store.frame_shape[1:])


def ingest_image_batches(
    store: FrameStore,
    batches: Iterable[ImageBatch],
    caps: SplitCaps | None = None,
    progress: Callable[[dict], None] | None = None,
    skipped: Sequence[SkippedImage] | None = None,
) -> ImageIngestResult:
    """Store the images of a reader's batches that the store does not hold yet.

    Each image is stored under its source file and its position in it, so a repeated ingest
    writes nothing new and an interrupted one resumes where it stopped: the store commits the
    new images of a batch together, in one write, so a kill never leaves an image half-stored.

    Parameters
    ----------
    store : FrameStore
        A writable image store (:func:`pipeline.store.ingest_eeg.open_store` with :func:`image_store_spec`).
    batches : iterable of ImageBatch
        A reader's stream; every batch must carry a split and the store's image shape. Only
        one batch is held at a time.
    caps : SplitCaps, optional
        Take at most this many images of each part, the first ones of the stream; reading
        stops once every part is full. Images stored earlier count towards the caps, so a
        repeated run selects the same images.
    progress : callable, optional
        Called after each batch with the counts so far (``ImageIngestResult.to_dict()``).
    skipped : list of SkippedImage, optional
        The list the reader records unreadable images in (``iter_celeba(..., skipped=...)``);
        its entries end up in the result's ``skipped``.

    Returns
    -------
    ImageIngestResult

    Raises
    ------
    InputError
        Naming the batch's origin when a batch is not an ImageBatch, carries no split, or
        holds images of another shape.
    """
    image_shape = _check_image_store(store)
    if caps is not None and not isinstance(caps, SplitCaps):
        raise InputError("caps", f"expected SplitCaps, got {type(caps).__name__}")
    cap_values = (caps or SplitCaps()).as_tuple()
    stored = store.stored_keys()
    taken = [0, 0, 0]
    sources: set[str] = set()
    result = ImageIngestResult()
    for batch in batches:
        if not isinstance(batch, ImageBatch):
            raise InputError("batches", f"yielded a {type(batch).__name__}; expected ImageBatch")
        if batch.split is None:
            raise InputError(batch.origin, "batch carries no train/val/test split; the image store needs one")
        if batch.image_shape != image_shape:
            raise InputError(
                batch.origin, f"images are {batch.image_shape}; the store {store.path} holds {image_shape}"
            )
        result.n_read += len(batch)
        keep = np.flatnonzero(_within_caps(batch.split, cap_values, taken))
        sources.update(batch.source_sha256[p] for p in keep)
        new = []
        for position in keep:
            key = (batch.source_sha256[position], int(batch.index[position]))
            if key not in stored:  # also keeps the second of two identical files out of the batch
                stored.add(key)
                new.append(position)
        if new:
            # One store write per batch, whatever the number of source files in it: a JPEG
            # folder has one image per file, and a store write costs about as much for one
            # image as for a batch of them.
            result.n_written += store.add_trials(
                frames=batch.images[new][:, None],
                labels=batch.labels[new],
                subject=np.full(len(new), NO_SUBJECT, dtype=np.int32),
                trial=batch.index[new],
                source=[batch.names[p] for p in new],
                source_sha256=[batch.source_sha256[p] for p in new],
                split=batch.split[new],
            )
        result.taken = dict(zip(SPLIT_NAMES, taken, strict=True))
        result.n_sources = len(sources)
        if progress is not None:
            progress(result.to_dict())
        if _caps_full(cap_values, taken):
            break
    result.skipped = [{"name": entry.name, "reason": entry.reason} for entry in skipped or ()]
    return result


def image_split(store: FrameStore, caps: SplitCaps | None = None) -> Split:
    """The store's images by part, as store rows: the first ``caps`` of each part in row order.

    Returns
    -------
    Split
        ``train``, ``val`` and ``test`` rows (int64, ascending), protocol ``"image"`` and the
        seed of the reader's split.

    Raises
    ------
    InputError
        Naming the store when it holds no training image or a row's part is not 0, 1 or 2.
    """
    _check_image_store(store)
    rows = store.committed_rows()
    parts = store.split
    bad = ~np.isin(parts, (0, 1, 2))
    if bad.any():
        raise InputError(store.path, f"rows {rows[bad][:5].tolist()} have no split part (split 0, 1 or 2)")
    cap_values = (caps or SplitCaps()).as_tuple()
    selected = [rows[parts == part][:cap] for part, cap in enumerate(cap_values)]
    if selected[0].size == 0:
        raise InputError(store.path, "holds no training image")
    seed = int(store.attrs.get("image_config", {}).get("split_seed", 0))
    return Split(
        train=selected[0].astype(np.int64),
        val=selected[1].astype(np.int64),
        test=selected[2].astype(np.int64),
        protocol=SPLIT_PROTOCOL,
        seed=seed,
    )


class FramesInMemory:
    """Frames of chosen store rows, read once, indexed by store row like ``FrameStore.frames``.

    Training reads every image once per epoch; a zarr chunk per image costs about a
    millisecond to open, so data sets that fit in memory are read once instead. Only the
    chosen rows are held; asking for another row raises.

    Parameters
    ----------
    store : FrameStore
    rows : int array-like
        Committed rows to hold.
    """

    def __init__(self, store: FrameStore, rows: Iterable[int]):
        rows = np.unique(_as_rows(rows))
        self.shape = (store.n_rows, *store.frame_shape)
        self._position = np.full(store.n_rows, -1, dtype=np.int64)
        self._position[rows] = np.arange(rows.size)
        self._where = f"{store.path}/frames"
        blocks = [
            store.read_frames(rows[i : i + _READ_BLOCK_ROWS]) for i in range(0, rows.size, _READ_BLOCK_ROWS)
        ]
        self._frames = np.concatenate(blocks) if blocks else np.empty((0, *store.frame_shape), np.float32)

    @property
    def nbytes(self) -> int:
        return int(self._frames.nbytes)

    def __getitem__(self, row: int) -> np.ndarray:
        position = self._position[int(row)]
        if position < 0:
            raise InputError(self._where, f"row {int(row)} was not read into memory")
        return self._frames[position]


def frames_for(
    store: FrameStore, rows: Iterable[int], memory_budget_bytes: int
) -> FramesInMemory | zarr.Array:
    """The frames of ``rows`` in memory if they fit ``memory_budget_bytes``, else the store's zarr array."""
    rows = _as_rows(rows)
    frame_bytes = 4 * int(np.prod(store.frame_shape))
    if rows.size * frame_bytes <= memory_budget_bytes:
        return FramesInMemory(store, rows)
    return store.frames

"""The one type every image reader yields, seeded image splits and the image data manifests.

MNIST, CelebA and their embedded defaults all produce :class:`ImageBatch` objects, streamed
in batches so that a folder of 200,000 images never has to sit in memory at once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.analysis.splits import DEFAULT_FRACTIONS
from pipeline.errors import InputError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2
NO_LABEL = -1.0
MANIFEST_DIR = Path(__file__).resolve().parents[2] / "data_manifests"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, eq=False)
class ImageBatch:
    """A batch of images with their labels, split and provenance.

    Attributes
    ----------
    images : float32 array (n, C, H, W)
        Pixel values scaled to [0, 1].
    labels : float32 array (n, 1)
        Class of each image (the digit for MNIST), or ``NO_LABEL`` (-1) when there is none.
    names : tuple of str
        Name of the file each image came from (one IDX file holds many images, a JPEG one).
    index : int32 array (n,)
        Position of each image within its source file (0 for one-image files).
    source_sha256 : tuple of str
        Hex SHA-256 of each image's source file (of the generated data for embedded sets).
    split : int8 array (n,) or None
        ``SPLIT_TRAIN`` (0), ``SPLIT_VAL`` (1) or ``SPLIT_TEST`` (2) per image, None if unassigned.
    origin : str
        The folder, file or ``embedded://`` name the batch was read from; errors name it.

    Construction validates shapes, dtypes, value ranges and digests, and raises
    :class:`~pipeline.errors.InputError` naming ``origin`` when something is wrong.
    """

    images: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]
    index: np.ndarray
    source_sha256: tuple[str, ...]
    split: np.ndarray | None
    origin: str

    def __post_init__(self) -> None:
        where = self.origin
        images = np.asarray(self.images)
        if images.ndim != 4:
            raise InputError(where, f"images have shape {images.shape}; expected (n, C, H, W)")
        n_images = images.shape[0]
        if n_images == 0:
            raise InputError(where, "batch holds no images")
        if not np.issubdtype(images.dtype, np.floating):
            raise InputError(where, f"images have dtype {images.dtype}; expected floats scaled to [0, 1]")
        if not np.isfinite(images).all():
            raise InputError(where, "images contain NaN or Inf")
        if images.min() < 0.0 or images.max() > 1.0:
            raise InputError(
                where, f"image values span [{images.min():g}, {images.max():g}]; expected [0, 1]"
            )
        labels = np.asarray(self.labels)
        if labels.shape != (n_images, 1):
            raise InputError(where, f"labels have shape {labels.shape}; expected ({n_images}, 1)")
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any() or (labels < NO_LABEL).any():
            raise InputError(where, "labels must be whole class numbers >= 0, or -1 for no label")
        names = tuple(self.names)
        shas = tuple(self.source_sha256)
        for field_name, values in (("names", names), ("source_sha256", shas)):
            if len(values) != n_images:
                raise InputError(where, f"{field_name} has {len(values)} entries for {n_images} images")
        if not all(isinstance(name, str) and name for name in names):
            raise InputError(where, "every image needs a non-empty source name")
        bad_sha = next((sha for sha in shas if not _SHA256_HEX.fullmatch(str(sha))), None)
        if bad_sha is not None:
            raise InputError(where, f"source_sha256 entry {bad_sha!r} is not a hex SHA-256 digest")
        index = np.asarray(self.index)
        if index.shape != (n_images,) or not np.issubdtype(index.dtype, np.integer) or (index < 0).any():
            raise InputError(where, f"index must be {n_images} non-negative integers")
        split = self.split
        if split is not None:
            split = np.asarray(split)
            if split.shape != (n_images,) or not np.isin(split, (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST)).all():
                raise InputError(
                    where, f"split must be {n_images} values, each 0 (train), 1 (val) or 2 (test)"
                )
            split = split.astype(np.int8)
        object.__setattr__(self, "images", np.ascontiguousarray(images, dtype=np.float32))
        object.__setattr__(self, "labels", labels.astype(np.float32))
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "index", index.astype(np.int32))
        object.__setattr__(self, "source_sha256", shas)
        object.__setattr__(self, "split", split)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image in the batch."""
        return tuple(self.images.shape[1:])


def concatenate_batches(batches: Iterable[ImageBatch], origin: str | None = None) -> ImageBatch:
    """Join batches of one image shape into one batch, in order.

    Parameters
    ----------
    batches : iterable of ImageBatch
        Batches of equal ``image_shape``; either all or none carry a split.
    origin : str, optional
        The joined batch's origin; defaults to the first batch's.

    Returns
    -------
    ImageBatch
        Every image of ``batches``. Holds them all in memory: for small sets only.
    """
    batches = list(batches)
    if not batches:
        raise InputError(origin or "batches", "nothing to concatenate")
    where = origin or batches[0].origin
    shapes = {batch.image_shape for batch in batches}
    if len(shapes) != 1:
        raise InputError(where, f"batches have different image shapes {sorted(shapes)}")
    with_split = {batch.split is not None for batch in batches}
    if len(with_split) != 1:
        raise InputError(where, "some batches carry a split and some do not")
    return ImageBatch(
        images=np.concatenate([batch.images for batch in batches]),
        labels=np.concatenate([batch.labels for batch in batches]),
        names=tuple(name for batch in batches for name in batch.names),
        index=np.concatenate([batch.index for batch in batches]),
        source_sha256=tuple(sha for batch in batches for sha in batch.source_sha256),
        split=np.concatenate([batch.split for batch in batches]) if with_split == {True} else None,
        origin=where,
    )


def check_whole_number(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int, raising an InputError naming ``name`` unless it is a whole number >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(name, f"{value!r} is not a whole number >= {minimum}")
    return int(value)


def check_split_fractions(fractions: Sequence[float], where: str = "split_fractions") -> tuple[float, ...]:
    """Validate (train, val, test) fractions: three non-negative numbers summing to 1, train > 0."""
    values = tuple(float(value) for value in fractions)
    if len(values) != 3 or min(values) < 0 or values[0] <= 0 or not np.isclose(sum(values), 1.0):
        raise InputError(
            where, f"{fractions!r} are not (train, val, test) fractions >= 0 summing to 1 with train > 0"
        )
    return values


def seeded_split(n_items: int, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> np.ndarray:
    """Assign ``n_items`` items to train/val/test by a seeded permutation, with exact counts.

    Parameters
    ----------
    n_items : int
        Number of items (> 0).
    seed : int
        Seed of the permutation.
    fractions : (float, float, float)
        Train, validation and test fractions; the counts are ``round(n * train)``,
        ``round(n * val)`` and the rest.

    Returns
    -------
    int8 array (n_items,)
        ``SPLIT_TRAIN``, ``SPLIT_VAL`` or ``SPLIT_TEST`` for each item.
    """
    train, val, _ = check_split_fractions(fractions)
    n_items = check_whole_number(n_items, "n_items")
    seed = check_whole_number(seed, "seed", minimum=0)
    n_train = round(n_items * train)
    n_val = min(round(n_items * val), n_items - n_train)
    order = np.random.default_rng(seed).permutation(n_items)
    split = np.full(n_items, SPLIT_TEST, dtype=np.int8)
    split[order[:n_train]] = SPLIT_TRAIN
    split[order[n_train : n_train + n_val]] = SPLIT_VAL
    return split


def split_by_name_hash(
    names: Sequence[str], seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> np.ndarray:
    """Assign each name to train/val/test from a seeded hash of the name alone.

    A name's part depends on nothing but the name and the seed, so adding or removing files
    never moves the others. The parts' sizes follow ``fractions`` only on average.

    Returns
    -------
    int8 array (len(names),)
        ``SPLIT_TRAIN``, ``SPLIT_VAL`` or ``SPLIT_TEST`` for each name.
    """
    train, val, _ = check_split_fractions(fractions)
    uniform = np.array(
        [
            int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") / 2.0**64
            for name in names
        ],
        dtype=np.float64,
    )
    split = np.full(len(uniform), SPLIT_TEST, dtype=np.int8)
    split[uniform < train + val] = SPLIT_VAL
    split[uniform < train] = SPLIT_TRAIN
    return split


def array_sha256(*arrays: np.ndarray) -> str:
    """Hex SHA-256 of arrays' dtypes, shapes and bytes: the digest of generated (embedded) data."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def load_image_manifest(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Read an image data set's manifest: ``"mnist"``, ``"celeba"`` or a path to a YAML file.

    Returns
    -------
    dict
        The YAML document as plain Python values (``yaml.safe_load``: no code runs).
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = MANIFEST_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise InputError(path, "manifest file not found")
    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(path, f"is not valid YAML: {err}") from err
    if not isinstance(manifest, dict):
        raise InputError(path, "manifest is not a YAML mapping")
    return manifest


def manifest_entry(manifest: Mapping[str, Any], *keys: str) -> Any:
    """``manifest[keys[0]][keys[1]]...``, raising an InputError naming the missing key path."""
    value: Any = manifest
    for depth, key in enumerate(keys):
        if not isinstance(value, Mapping) or key not in value:
            where = f"manifest {manifest.get('dataset', '?')!s}"
            raise InputError(where, f"lacks the entry {'.'.join(keys[: depth + 1])}")
        value = value[key]
    return value

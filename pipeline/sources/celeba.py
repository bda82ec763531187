"""CelebA's aligned face images, streamed as 64x64 RGB batches.

The CelebA root holds ``img_align_celeba/`` (202,599 JPEGs of 178x218 pixels, ``000001.jpg``
onwards) and optionally ``list_eval_partition.txt`` (one ``"<file name> <0|1|2>"`` line per
image: 0 train, 1 validation, 2 test). Images are read in file-name order, one batch at a
time. Each 178x218 image is cropped to its centred 148x148 square (the common choice for
VAEs on CelebA: the face, little background); an image of any other size to its largest
centred square. The square is resized to ``size`` x ``size`` with Pillow's bilinear filter,
which averages over the source area when shrinking, and scaled to [0, 1].

An image that cannot be read or decoded as JPEG is named in the log, recorded in the caller's
``skipped`` list, and left out; the others are read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from pipeline.analysis.splits import DEFAULT_FRACTIONS
from pipeline.errors import InputError
from pipeline.sources.images import (
    NO_LABEL,
    ImageBatch,
    check_split_fractions,
    check_whole_number,
    load_image_manifest,
    manifest_entry,
    split_by_name_hash,
)

logger = logging.getLogger(__name__)

IMAGE_FOLDER = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
ALIGNED_SIZE = (178, 218)  # width, height of CelebA's aligned images
ALIGNED_CROP = 148
IMAGE_SUFFIXES = (".jpg", ".jpeg")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# A JPEG codes at least a few bits per 8x8 block, so a file cannot honestly hold more than a
# few hundred pixels per byte; a header claiming more is a decompression bomb, refused before
# its pixel buffer is allocated. (CelebA's faces hold about 4 pixels per byte.)
MAX_JPEG_PIXELS_PER_BYTE = 1024
MIN_JPEG_PIXEL_ALLOWANCE = 1 << 20


@dataclass(frozen=True)
class SkippedImage:
    """An image left out because it could not be read: its file name and the reason."""

    name: str
    reason: str


def _is_plain_file_name(name: str) -> bool:
    # Rejects absolute paths, drive letters, sub-folders and '..' in both path flavours.
    return (
        name not in ("", ".", "..")
        and PurePosixPath(name).name == name
        and PureWindowsPath(name).name == name
        and "\x00" not in name
    )


def read_partition_file(path: str | os.PathLike) -> dict[str, int]:
    """Read a CelebA ``list_eval_partition.txt``: file name -> 0 (train), 1 (val) or 2 (test).

    Raises
    ------
    InputError
        Naming the file and the line: not two fields, a part other than 0/1/2, a duplicate
        name, or a name that is not a plain file name (absolute paths, folders and '..' would
        point outside the image folder).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "partition file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot be read as UTF-8 text: {err}") from err
    partition: dict[str, int] = {}
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise InputError(path, f"line {line_number}: expected '<file name> <0|1|2>', got {line!r}")
        name = fields[0]
        if not _is_plain_file_name(name):
            raise InputError(
                path,
                f"line {line_number}: {name!r} is not a plain file name inside {IMAGE_FOLDER}/ "
                "(absolute paths, folders and '..' are rejected)",
            )
        if name in partition:
            raise InputError(path, f"line {line_number}: {name} is listed twice")
        partition[name] = int(fields[1])
    if not partition:
        raise InputError(path, "lists no images")
    return partition


def _image_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    image_dir = folder / IMAGE_FOLDER
    if not image_dir.is_dir():
        raise InputError(
            folder,
            f"has no {IMAGE_FOLDER}/ folder; expected the CelebA root holding {IMAGE_FOLDER}/ "
            f"(and optionally {PARTITION_FILE})",
        )
    return image_dir


def list_celeba_images(folder: str | os.PathLike) -> list[str]:
    """File names of the JPEG images in ``<folder>/img_align_celeba``, sorted.

    Raises
    ------
    InputError
        Naming the folder when it has no ``img_align_celeba/`` or no JPEG in it.
    """
    image_dir = _image_folder(folder)
    with os.scandir(image_dir) as entries:
        names = sorted(
            entry.name
            for entry in entries
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
        )
    if not names:
        raise InputError(image_dir, "holds no .jpg images")
    return names


def _resolve_partition_file(folder: Path, partition_file: str | os.PathLike | None) -> Path | None:
    if partition_file is not None:
        return Path(partition_file)
    beside = folder / PARTITION_FILE
    return beside if beside.is_file() else None


def _splits_from_partition(names: Sequence[str], partition: Mapping[str, int], where: Path) -> np.ndarray:
    unlisted = [name for name in names if name not in partition]
    if unlisted:
        raise InputError(
            where, f"has no entry for {unlisted[0]} ({len(unlisted)} image(s) of {IMAGE_FOLDER}/ unlisted)"
        )
    return np.array([partition[name] for name in names], dtype=np.int8)


def check_celeba_folder(
    folder: str | os.PathLike,
    manifest: Mapping[str, Any] | str | os.PathLike | None = None,
    expect_complete: bool = True,
    partition_file: str | os.PathLike | None = None,
) -> list[Path]:
    """Check a CelebA root folder against the manifest before any work.

    Parameters
    ----------
    folder : str or path-like
        The CelebA root, holding ``img_align_celeba/`` and optionally ``list_eval_partition.txt``.
    manifest : mapping, str or path-like, optional
        The manifest, or its name or path; ``data_manifests/celeba.yaml`` by default.
    expect_complete : bool
        Require every image the manifest lists (``000001.jpg`` ... ``202599.jpg``); pass False
        for a subset of CelebA.
    partition_file : str or path-like, optional
        The partition file to check; by default the one beside ``img_align_celeba/`` if any.

    Returns
    -------
    list of Path
        The image files, sorted by name. Their contents are not opened here: the reader names
        and skips an undecodable one.

    Raises
    ------
    InputError
        Naming the folder and what is missing (the image folder, images of a complete set),
        or the partition file and its fault (see :func:`read_partition_file`, or an image
        without an entry).
    """
    if manifest is None or not isinstance(manifest, Mapping):
        manifest = load_image_manifest(manifest or "celeba")
    folder = Path(folder)
    names = list_celeba_images(folder)
    if expect_complete:
        name_format = str(manifest_entry(manifest, "layout", "image_name_format"))
        first = int(manifest_entry(manifest, "layout", "first_index"))
        n_images = int(manifest_entry(manifest, "layout", "n_images"))
        present = set(names)
        missing = [
            name
            for name in (name_format.format(i) for i in range(first, first + n_images))
            if name not in present
        ]
        if missing:
            raise InputError(
                folder / IMAGE_FOLDER,
                f"{len(missing)} of the {n_images} CelebA images are missing, first "
                f"{', '.join(missing[:3])}; pass expect_complete=False for a subset",
            )
    partition_path = _resolve_partition_file(folder, partition_file)
    if partition_path is not None:
        _splits_from_partition(names, read_partition_file(partition_path), partition_path)
    return [folder / IMAGE_FOLDER / name for name in names]


def _crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    side = ALIGNED_CROP if (width, height) == ALIGNED_SIZE else min(width, height)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return left, top, left + side, top + side


def decode_face(data: bytes, size: int = 64) -> np.ndarray:
    """Decode one JPEG's bytes to a float32 (3, size, size) array in [0, 1] (see module doc)."""
    with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
        claimed = image.width * image.height
        if claimed > max(MIN_JPEG_PIXEL_ALLOWANCE, MAX_JPEG_PIXELS_PER_BYTE * len(data)):
            raise ValueError(
                f"claims {image.width}x{image.height} pixels, more than a {len(data)}-byte JPEG can hold"
            )
        rgb = image.convert("RGB")
    square = rgb.resize((size, size), Image.Resampling.BILINEAR, box=_crop_box(*rgb.size))
    return np.asarray(square, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)


def iter_celeba(
    folder: str | os.PathLike,
    batch_size: int = 256,
    size: int = 64,
    partition_file: str | os.PathLike | None = None,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    skipped: list[SkippedImage] | None = None,
) -> Iterator[ImageBatch]:
    """Stream CelebA's aligned images in file-name order as batches of (3, size, size) RGB.

    Parameters
    ----------
    folder : str or path-like
        The CelebA root holding ``img_align_celeba/``; check it first with
        :func:`check_celeba_folder`.
    batch_size : int
        Images per batch. Batches are full except the last, whatever was skipped.
    size : int
        Side of the square output images.
    partition_file : str or path-like, optional
        CelebA's ``list_eval_partition.txt``. By default the one beside ``img_align_celeba/``
        when present; without one, each image's part comes from a seeded hash of its name
        (:func:`~pipeline.sources.images.split_by_name_hash`).
    seed, split_fractions
        Seed and (train, val, test) fractions of that hash split.
    skipped : list, optional
        Receives a :class:`SkippedImage` for each image that could not be read or decoded.

    Returns
    -------
    iterator of ImageBatch
        Images (n, 3, size, size) in [0, 1], labels -1, the file names, each file's SHA-256
        and the split. Only one batch of pixels is held at a time.

    Raises
    ------
    InputError
        At the call, for bad arguments, a folder without images, a bad partition file or an
        image without a partition entry; while iterating, when no image at all could be read.
    """
    batch_size = check_whole_number(batch_size, "batch_size")
    size = check_whole_number(size, "size")
    seed = check_whole_number(seed, "seed", minimum=0)
    split_fractions = check_split_fractions(split_fractions)
    folder = Path(folder)
    names = list_celeba_images(folder)
    image_dir = folder / IMAGE_FOLDER
    partition_path = _resolve_partition_file(folder, partition_file)
    if partition_path is None:
        splits = split_by_name_hash(names, seed, split_fractions)
    else:
        splits = _splits_from_partition(names, read_partition_file(partition_path), partition_path)

    return _stream_images(image_dir, names, splits, batch_size, size, skipped)


def _stream_images(
    image_dir: Path,
    names: Sequence[str],
    splits: np.ndarray,
    batch_size: int,
    size: int,
    skipped: list[SkippedImage] | None,
) -> Iterator[ImageBatch]:
    pending: list[tuple[str, str, np.ndarray, int]] = []
    n_read = 0
    for name, split in zip(names, splits, strict=True):
        try:
            data = (image_dir / name).read_bytes()
            pixels = decode_face(data, size)
        except _DECODE_ERRORS as err:
            reason = f"{type(err).__name__}: {err}"
            logger.warning("skipping unreadable image %s: %s", image_dir / name, reason)
            if skipped is not None:
                skipped.append(SkippedImage(name=name, reason=reason))
            continue
        pending.append((name, hashlib.sha256(data).hexdigest(), pixels, int(split)))
        if len(pending) == batch_size:
            yield _batch(pending, image_dir)
            n_read += len(pending)
            pending = []
    if pending:
        yield _batch(pending, image_dir)
        n_read += len(pending)
    if n_read == 0:
        raise InputError(image_dir, f"none of its {len(names)} images could be read")


def _batch(pending: Sequence[tuple[str, str, np.ndarray, int]], image_dir: Path) -> ImageBatch:
    names, shas, pixels, splits = zip(*pending, strict=True)
    return ImageBatch(
        images=np.stack(pixels),
        labels=np.full((len(names), 1), NO_LABEL, dtype=np.float32),
        names=names,
        index=np.zeros(len(names), dtype=np.int32),
        source_sha256=shas,
        split=np.array(splits, dtype=np.int8),
        origin=str(image_dir),
    )

"""MNIST's IDX files, and an embedded MNIST-like default built from scikit-learn's digits.

An IDX file is a big-endian header followed by the raw values: the magic number
``0x0000TTDD`` (TT the data type, 0x08 for unsigned bytes; DD the number of dimensions), one
4-byte size per dimension, then the values in row-major order. MNIST's image files carry magic
2051 (unsigned bytes, 3 dimensions: n x 28 x 28), its label files 2049 (unsigned bytes, 1
dimension). Files may be gzip-compressed; the reader tells by the content, not by the name.

The embedded default, :func:`digits_as_mnist`, needs no download: it takes the 1797 real
handwritten digits bundled with scikit-learn (8x8, values 0-16) and lays each out like an MNIST
digit, in a 20x20 box centred in a 28x28 field.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import math
import os
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.ndimage
from sklearn.datasets import load_digits

from pipeline.analysis.splits import DEFAULT_FRACTIONS
from pipeline.errors import InputError
from pipeline.sources.images import (
    SPLIT_TEST,
    ImageBatch,
    array_sha256,
    check_whole_number,
    concatenate_batches,
    load_image_manifest,
    manifest_entry,
    seeded_split,
)
from pipeline.sources.trials import file_sha256

IDX_UBYTE = 0x08
MNIST_IMAGES_MAGIC = 0x0803  # 2051
MNIST_LABELS_MAGIC = 0x0801  # 2049
# Key -> the file name MNIST (and Fashion-MNIST) distribute it under, without ".gz".
MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_IMAGE_SIZE = 28
DIGIT_BOX_SIZE = 20  # MNIST size-normalises each digit into a 20x20 box inside the 28x28 field
EMBEDDED_DIGITS = "embedded://sklearn-digits"
_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 24
_WHOLE_FILE = 2**31 - 1  # a batch size that takes a whole IDX file at once
_GZIP_ERRORS = (OSError, EOFError, gzip.BadGzipFile, zlib.error)
_DEFLATE_MAX_RATIO = 1032


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _open_idx(path: Path) -> BinaryIO:
    if not path.is_file():
        raise InputError(path, "file not found")
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def _read_up_to(stream: BinaryIO, n_bytes: int) -> bytes:
    """Up to ``n_bytes`` from ``stream``, read in chunks so a lying header cannot force a huge buffer."""
    chunks, remaining = [], n_bytes
    while remaining > 0:
        chunk = stream.read(min(remaining, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_header(stream: BinaryIO, where: Path) -> tuple[int, tuple[int, ...]]:
    prefix = _read_up_to(stream, 4)
    if len(prefix) < 4:
        raise InputError(where, f"is truncated: {len(prefix)} byte(s), too short for an IDX header")
    magic = int.from_bytes(prefix, "big")
    data_type, n_dims = prefix[2], prefix[3]
    if prefix[:2] != b"\x00\x00" or n_dims == 0:
        raise InputError(
            where,
            f"bad magic number {magic} (0x{magic:08X}): not an IDX file "
            f"(MNIST images carry {MNIST_IMAGES_MAGIC}, labels {MNIST_LABELS_MAGIC})",
        )
    if data_type != IDX_UBYTE:
        raise InputError(
            where,
            f"magic number {magic} declares IDX data type 0x{data_type:02X}; only unsigned bytes "
            f"(0x{IDX_UBYTE:02X}) are supported",
        )
    dims = _read_up_to(stream, 4 * n_dims)
    if len(dims) < 4 * n_dims:
        raise InputError(where, f"is truncated inside its header ({n_dims} dimension sizes declared)")
    return magic, struct.unpack(f">{n_dims}I", dims)


def _check_claimed_size(path: Path, expected: int, shape: tuple[int, ...]) -> None:
    """Refuse a gzip file whose header declares more bytes than it can hold, before inflating it.

    Deflate expands at most 1032-fold, so a gzip file declaring more is a decompression bomb
    (or corrupt). A raw file needs no check: reading stops at its end.
    """
    if not _is_gzip(path):
        return
    size = path.stat().st_size
    if expected > size * _DEFLATE_MAX_RATIO:
        raise InputError(
            path,
            f"its header declares {expected} data bytes (shape {shape}); a {size}-byte gzip file "
            f"cannot hold more than {size * _DEFLATE_MAX_RATIO}",
        )


def read_idx_header(path: str | os.PathLike) -> tuple[int, tuple[int, ...]]:
    """Magic number and shape of an IDX file (raw or gzip), reading only the header.

    Raises
    ------
    InputError
        Naming the file: missing, not gzip though it says so, bad magic number, truncated header.
    """
    path = Path(path)
    try:
        with _open_idx(path) as stream:
            return _read_header(stream, path)
    except _GZIP_ERRORS as err:
        raise InputError(path, f"cannot be read as IDX (raw or gzip): {err}") from err


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an unsigned-byte IDX file, raw or gzip-compressed.

    Parameters
    ----------
    path : str or path-like
        The file. Compression is detected from the content.

    Returns
    -------
    uint8 array
        Shaped as the header declares, e.g. (60000, 28, 28) for MNIST's training images.

    Raises
    ------
    InputError
        Naming the file: bad magic number, unsupported data type, a corrupt gzip stream, fewer
        data bytes than the header declares (truncated) or bytes left over after them.
    """
    path = Path(path)
    try:
        with _open_idx(path) as stream:
            magic, shape = _read_header(stream, path)
            expected = math.prod(shape)
            _check_claimed_size(path, expected, shape)
            data = _read_up_to(stream, expected + 1)
    except _GZIP_ERRORS as err:
        raise InputError(path, f"gzip stream is corrupt or truncated: {err}") from err
    if len(data) < expected:
        raise InputError(
            path,
            f"is truncated: {len(data)} data bytes, but its header (magic {magic}, shape {shape}) "
            f"declares {expected}",
        )
    if len(data) > expected:
        raise InputError(
            path, f"has bytes left over after the {expected} its header (shape {shape}) declares"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    Returns
    -------
    Path
        The file written. The gzip header carries no time stamp or name, so equal arrays give equal files.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise InputError(path, f"IDX arrays are written as unsigned bytes; got dtype {array.dtype}")
    if not 1 <= array.ndim <= 255 or max(array.shape) >= 2**32:
        raise InputError(path, f"shape {array.shape} cannot be written as IDX (1-255 dims, each < 2**32)")
    header = bytes((0, 0, IDX_UBYTE, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as stream:
            stream.write(payload)
    else:
        path.write_bytes(payload)
    return path


def _read_mnist_idx(path: Path, what: str, magic: int, layout: str) -> np.ndarray:
    """An IDX file whose magic number must be MNIST's ``magic`` for ``what`` (images or labels)."""
    array = read_idx(path)
    if 0x800 + array.ndim != magic:
        raise InputError(
            path,
            f"magic number {0x800 + array.ndim} ({array.ndim}-D); MNIST {what} carry {magic} ({layout})",
        )
    return array


def read_mnist_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST image file and its label file, checking they belong together.

    Returns
    -------
    images : uint8 array (n, H, W)
    labels : uint8 array (n,)

    Raises
    ------
    InputError
        Naming the file at fault: an image file without magic 2051, a label file without magic
        2049, no images, or a label count that differs from the image count.
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    images = _read_mnist_idx(images_path, "images", MNIST_IMAGES_MAGIC, "3-D: n x height x width")
    if images.shape[0] == 0:
        raise InputError(images_path, "holds no images")
    labels = _read_mnist_idx(labels_path, "labels", MNIST_LABELS_MAGIC, "1-D")
    if labels.shape[0] != images.shape[0]:
        raise InputError(
            labels_path,
            f"holds {labels.shape[0]} labels, but {images_path.name} holds {images.shape[0]} images",
        )
    return images, labels


def _candidate_names(name: str) -> tuple[str, ...]:
    # Some mirrors spell "train-images.idx3-ubyte"; either spelling may be gzip-compressed.
    dotted = name.replace("-idx", ".idx")
    return (name, f"{name}.gz", dotted, f"{dotted}.gz")


def find_mnist_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Locate MNIST's four IDX files in ``folder``, raw or ``.gz``.

    Returns
    -------
    dict
        ``{"train_images": Path, "train_labels": ..., "test_images": ..., "test_labels": ...}``.

    Raises
    ------
    InputError
        Naming the folder and every file that is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    found, missing = {}, []
    for key, name in MNIST_FILES.items():
        path = next((folder / c for c in _candidate_names(name) if (folder / c).is_file()), None)
        if path is None:
            missing.append(f"{name} (or {name}.gz)")
        else:
            found[key] = path
    if missing:
        raise InputError(folder, f"missing MNIST file(s): {', '.join(missing)}")
    return found


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def check_mnist_folder(
    folder: str | os.PathLike,
    manifest: Mapping[str, Any] | str | os.PathLike | None = None,
    verify_checksums: bool = False,
) -> list[Path]:
    """Check a folder of MNIST IDX files against the manifest before any work.

    Reads only the headers (and, with ``verify_checksums``, the .gz files' bytes), so it is fast.

    Parameters
    ----------
    folder : str or path-like
        The folder holding the four IDX files.
    manifest : mapping, str or path-like, optional
        The manifest, or its name or path; ``data_manifests/mnist.yaml`` by default.
    verify_checksums : bool
        Also compare each ``.gz`` file's MD5 with the manifest's ``gz_md5`` (the original MNIST
        archives; re-compressed copies and Fashion-MNIST fail this).

    Returns
    -------
    list of Path
        The train images, train labels, test images and test labels files, in that order.

    Raises
    ------
    InputError
        Naming the folder and the missing files, or the file whose magic number, shape, size or
        checksum differs from the manifest.
    """
    if manifest is None or not isinstance(manifest, Mapping):
        manifest = load_image_manifest(manifest or "mnist")
    found = find_mnist_files(folder)
    for key, path in found.items():
        expected_magic = int(manifest_entry(manifest, "files", key, "magic"))
        expected_shape = tuple(int(size) for size in manifest_entry(manifest, "files", key, "shape"))
        magic, shape = read_idx_header(path)
        if (magic, shape) != (expected_magic, expected_shape):
            raise InputError(
                path,
                f"header declares magic {magic}, shape {shape}; the manifest expects magic "
                f"{expected_magic}, shape {expected_shape}",
            )
        if _is_gzip(path):
            published = manifest_entry(manifest, "files", key).get("gz_md5")
            if verify_checksums and published and _md5(path) != published:
                raise InputError(
                    path,
                    f"MD5 differs from the published {published}: a corrupt download or another data set",
                )
        else:
            expected_size = int(manifest_entry(manifest, "files", key, "size_bytes"))
            if path.stat().st_size != expected_size:
                raise InputError(
                    path, f"has {path.stat().st_size} bytes; the manifest expects {expected_size}"
                )
    return [found[key] for key in MNIST_FILES]


def _check_val_fraction(val_fraction: float) -> float:
    if not 0.0 <= val_fraction < 1.0:
        raise InputError("val_fraction", f"{val_fraction!r} is outside [0, 1)")
    return float(val_fraction)


def _iter_idx_part(
    images_path: Path, labels_path: Path, batch_size: int, val_fraction: float | None, seed: int
) -> Iterator[ImageBatch]:
    """Batches of one image/label file pair; ``val_fraction`` None marks the test file."""
    images, labels = read_mnist_pair(images_path, labels_path)
    sha = file_sha256(images_path)
    n_images = images.shape[0]
    if val_fraction is None:
        split = np.full(n_images, SPLIT_TEST, dtype=np.int8)
    else:
        split = seeded_split(n_images, seed, (1.0 - val_fraction, val_fraction, 0.0))
    for start in range(0, n_images, batch_size):
        stop = min(start + batch_size, n_images)
        yield ImageBatch(
            images=images[start:stop, None].astype(np.float32) / np.float32(255.0),
            labels=labels[start:stop, None].astype(np.float32),
            names=(images_path.name,) * (stop - start),
            index=np.arange(start, stop, dtype=np.int32),
            source_sha256=(sha,) * (stop - start),
            split=split[start:stop],
            origin=str(images_path),
        )


def iter_mnist_folder(
    folder: str | os.PathLike, batch_size: int = 1024, val_fraction: float = 0.1, seed: int = 0
) -> Iterator[ImageBatch]:
    """Stream a folder of MNIST IDX files as batches: the training file, then the test file.

    Parameters
    ----------
    folder : str or path-like
        Holds the four IDX files (see :func:`find_mnist_files`); check it first with
        :func:`check_mnist_folder`.
    batch_size : int
        Images per batch; the last batch of each file may be smaller.
    val_fraction : float
        Fraction of the training file held out as validation by a seeded permutation.
    seed : int
        Seed of that permutation.

    Returns
    -------
    iterator of ImageBatch
        Arguments and file names are checked at the call, file contents while iterating.
        Images (n, 1, 28, 28) in [0, 1], the digit as label, the file name and the image's
        position in it, the images file's SHA-256, and the split (train/val for the training
        file, test for the test file). One file's uint8 pixels are held at a time (47 MB for
        MNIST's training file).
    """
    batch_size = check_whole_number(batch_size, "batch_size")
    val_fraction = _check_val_fraction(val_fraction)
    files = find_mnist_files(folder)
    return itertools.chain(
        _iter_idx_part(files["train_images"], files["train_labels"], batch_size, val_fraction, seed),
        _iter_idx_part(files["test_images"], files["test_labels"], batch_size, None, seed),
    )


def load_mnist_folder(
    folder: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0
) -> tuple[ImageBatch, ImageBatch]:
    """Read a folder of MNIST IDX files whole: (training file, test file).

    Same content as :func:`iter_mnist_folder`, as one batch per file; the training batch's
    ``split`` marks the seeded validation part. Holds everything in memory as float32
    (about 220 MB for MNIST).
    """
    val_fraction = _check_val_fraction(val_fraction)
    files = find_mnist_files(folder)
    train = concatenate_batches(
        _iter_idx_part(files["train_images"], files["train_labels"], _WHOLE_FILE, val_fraction, seed)
    )
    test = concatenate_batches(
        _iter_idx_part(files["test_images"], files["test_labels"], _WHOLE_FILE, None, seed)
    )
    return train, test


def digits_as_mnist(seed: int = 0, split_fractions: Sequence[float] = DEFAULT_FRACTIONS) -> ImageBatch:
    """scikit-learn's bundled handwritten digits, laid out like MNIST: the embedded default.

    Each 8x8 digit (values 0-16, ink high as in MNIST) is scaled to [0, 1], zoomed to 20x20 by
    bilinear interpolation over pixel areas (``scipy.ndimage.zoom``, order 1, ``grid_mode=True``,
    edge pixels repeated) and centred in a 28x28 field with a 4-pixel empty border, like MNIST's
    20x20 digit box. MNIST centres by the centre of mass; these digits already fill their box,
    so the box itself is centred.

    Parameters
    ----------
    seed : int
        Seed of the train/val/test permutation.
    split_fractions : (float, float, float)
        Train, validation and test fractions.

    Returns
    -------
    ImageBatch
        1797 images (1797, 1, 28, 28) in [0, 1], the digit (0-9) as label, a seeded split with
        exact counts, origin ``embedded://sklearn-digits``. Deterministic for a given seed.
    """
    digits = load_digits()
    pixels = digits.images / 16.0
    zoom = DIGIT_BOX_SIZE / pixels.shape[1]
    boxes = scipy.ndimage.zoom(pixels, (1.0, zoom, zoom), order=1, grid_mode=True, mode="nearest")
    border = (MNIST_IMAGE_SIZE - DIGIT_BOX_SIZE) // 2
    field = np.pad(np.clip(boxes, 0.0, 1.0), ((0, 0), (border, border), (border, border)))
    n_images = field.shape[0]
    sha = array_sha256(digits.images, digits.target)
    return ImageBatch(
        images=field[:, None].astype(np.float32),
        labels=digits.target[:, None].astype(np.float32),
        names=(EMBEDDED_DIGITS,) * n_images,
        index=np.arange(n_images, dtype=np.int32),
        source_sha256=(sha,) * n_images,
        split=seeded_split(n_images, seed, split_fractions),
        origin=EMBEDDED_DIGITS,
    )

import gzip
import math

import numpy as np
import pytest
import scipy.ndimage
from sklearn.datasets import load_digits

from pipeline.errors import InputError
from pipeline.sources.images import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, ImageBatch, load_image_manifest
from pipeline.sources.mnist import (
    MNIST_FILES,
    check_mnist_folder,
    digits_as_mnist,
    find_mnist_files,
    iter_mnist_folder,
    load_mnist_folder,
    read_idx,
    read_idx_header,
    read_mnist_pair,
    write_idx,
)
from pipeline.sources.trials import file_sha256


def _images(n, seed=0, size=28):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size), dtype=np.uint8)


def _labels(n, seed=1):
    return np.random.default_rng(seed).integers(0, 10, size=n, dtype=np.uint8)


def _mnist_folder(folder, n_train=20, n_test=7, gz_train=True):
    """A small MNIST-format folder: training files gzip-compressed, test files raw."""
    suffix = ".gz" if gz_train else ""
    arrays = {
        "train_images": _images(n_train, seed=2),
        "train_labels": _labels(n_train, seed=3),
        "test_images": _images(n_test, seed=4),
        "test_labels": _labels(n_test, seed=5),
    }
    for key, array in arrays.items():
        write_idx(folder / (MNIST_FILES[key] + (suffix if key.startswith("train") else "")), array)
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_raw_and_gzip(tmp_path, suffix):
    array = _images(7, size=5)[:, :, :4]
    path = write_idx(tmp_path / f"data-idx3-ubyte{suffix}", array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (7, 5, 4)
    np.testing.assert_array_equal(back, array)
    assert read_idx_header(path) == (2051, (7, 5, 4))
    raw = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and len(raw) == 4 + 3 * 4 + 7 * 5 * 4


def test_gzip_output_is_reproducible(tmp_path):
    labels = _labels(50)
    first = write_idx(tmp_path / "a-idx1-ubyte.gz", labels).read_bytes()
    second = write_idx(tmp_path / "b-idx1-ubyte.gz", labels).read_bytes()
    assert first == second
    assert read_idx_header(tmp_path / "a-idx1-ubyte.gz") == (2049, (50,))


def test_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 40)
    with pytest.raises(InputError, match="bad magic number") as err:
        read_idx(path)
    assert err.value.where == str(path)


def test_non_byte_data_type_is_refused(tmp_path):
    path = tmp_path / "floats-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01" + (2).to_bytes(4, "big") + b"\x00" * 8)
    with pytest.raises(InputError, match="data type 0x0D"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_file_names_the_file(tmp_path, suffix):
    path = write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", _images(3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(InputError, match="truncated") as err:
        read_idx(path)
    assert err.value.where == str(path)


def test_raw_truncation_reports_the_byte_counts(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", _images(3))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputError, match=f"{3 * 28 * 28 - 10} data bytes.*declares {3 * 28 * 28}"):
        read_idx(path)


def test_trailing_bytes_are_refused(tmp_path):
    path = write_idx(tmp_path / "x-idx1-ubyte", _labels(4))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(InputError, match="left over"):
        read_idx(path)


def test_write_idx_refuses_non_bytes(tmp_path):
    with pytest.raises(InputError, match="dtype float64"):
        write_idx(tmp_path / "x-idx1-ubyte", np.zeros(3))


def test_label_count_mismatch_names_both_files(tmp_path):
    images = write_idx(tmp_path / "train-images-idx3-ubyte", _images(6))
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte", _labels(5))
    with pytest.raises(InputError, match="holds 5 labels, but train-images-idx3-ubyte holds 6 images") as err:
        read_mnist_pair(images, labels)
    assert err.value.where == str(labels)


def test_swapped_files_are_told_by_their_magic(tmp_path):
    images = write_idx(tmp_path / "train-images-idx3-ubyte", _images(6))
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte", _labels(6))
    with pytest.raises(InputError, match=r"magic number 2049 .*carry 2051") as err:
        read_mnist_pair(labels, images)
    assert err.value.where == str(labels)


def test_folder_streams_train_then_test_batches(tmp_path):
    arrays = _mnist_folder(tmp_path)
    batches = list(iter_mnist_folder(tmp_path, batch_size=8, val_fraction=0.1, seed=3))
    assert [len(b) for b in batches] == [8, 8, 4, 7]
    train, test = batches[:3], batches[3]
    images = np.concatenate([b.images for b in train])
    assert images.shape == (20, 1, 28, 28) and images.dtype == np.float32
    np.testing.assert_allclose(images[:, 0] * 255.0, arrays["train_images"], atol=1e-4)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in train])[:, 0], arrays["train_labels"])
    split = np.concatenate([b.split for b in train])
    assert (split == SPLIT_TRAIN).sum() == 18 and (split == SPLIT_VAL).sum() == 2
    assert (test.split == SPLIT_TEST).all()
    np.testing.assert_array_equal(test.index, np.arange(7))
    assert test.names == ("t10k-images-idx3-ubyte",) * 7
    assert train[0].names[0] == "train-images-idx3-ubyte.gz"
    assert train[0].source_sha256[0] == file_sha256(tmp_path / "train-images-idx3-ubyte.gz")
    # The same seed gives the same validation images whatever the batch size.
    whole_train, whole_test = load_mnist_folder(tmp_path, val_fraction=0.1, seed=3)
    np.testing.assert_array_equal(whole_train.split, split)
    np.testing.assert_array_equal(whole_test.images, test.images)


def test_folder_accepts_dotted_names_and_names_missing_files(tmp_path):
    write_idx(tmp_path / "train-images.idx3-ubyte", _images(2))
    write_idx(tmp_path / "train-labels.idx1-ubyte.gz", _labels(2))
    with pytest.raises(InputError, match=r"t10k-images-idx3-ubyte \(or t10k-images-idx3-ubyte.gz\)") as err:
        find_mnist_files(tmp_path)
    assert err.value.where == str(tmp_path) and "train-" not in err.value.problem
    write_idx(tmp_path / "t10k-images-idx3-ubyte", _images(1))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", _labels(1))
    assert find_mnist_files(tmp_path)["train_labels"].name == "train-labels.idx1-ubyte.gz"


def test_manifest_numbers_agree_with_the_idx_format():
    manifest = load_image_manifest("mnist")
    assert {key: entry["name"] for key, entry in manifest["files"].items()} == MNIST_FILES
    for entry in manifest["files"].values():
        shape = entry["shape"]
        assert entry["magic"] == 0x800 + len(shape)
        assert entry["size_bytes"] == 4 + 4 * len(shape) + math.prod(shape)
    assert manifest["image"]["shape"] == [1, 28, 28]


def _full_size_raw_files(folder, manifest):
    """Files with MNIST's real headers and sizes; their (sparse) payload is never read by the check."""
    for entry in manifest["files"].values():
        shape = entry["shape"]
        header = bytes((0, 0, 8, len(shape))) + b"".join(n.to_bytes(4, "big") for n in shape)
        with open(folder / entry["name"], "wb") as handle:
            handle.write(header)
            handle.truncate(entry["size_bytes"])


def test_check_against_the_default_manifest(tmp_path):
    manifest = load_image_manifest("mnist")
    _full_size_raw_files(tmp_path, manifest)
    files = check_mnist_folder(tmp_path)
    assert [f.name for f in files] == list(MNIST_FILES.values())

    short = tmp_path / "t10k-labels-idx1-ubyte"
    with open(short, "r+b") as handle:
        handle.truncate(10007)
    with pytest.raises(InputError, match="has 10007 bytes; the manifest expects 10008") as err:
        check_mnist_folder(tmp_path)
    assert err.value.where == str(short)

    short.unlink()
    with pytest.raises(InputError, match="t10k-labels-idx1-ubyte") as err:
        check_mnist_folder(tmp_path)
    assert err.value.where == str(tmp_path)


def _small_manifest(n_train=20, n_test=7):
    manifest = load_image_manifest("mnist")
    for key, n in (("train", n_train), ("test", n_test)):
        manifest["files"][f"{key}_images"]["shape"] = [n, 28, 28]
        manifest["files"][f"{key}_images"]["size_bytes"] = 16 + n * 784
        manifest["files"][f"{key}_labels"]["shape"] = [n]
        manifest["files"][f"{key}_labels"]["size_bytes"] = 8 + n
    return manifest


def test_check_reports_shape_and_checksum_mismatches(tmp_path):
    _mnist_folder(tmp_path)
    manifest = _small_manifest()
    assert len(check_mnist_folder(tmp_path, manifest)) == 4
    # The small .gz files cannot carry MNIST's published MD5s.
    with pytest.raises(InputError, match="MD5 differs from the published f68b3c2d") as err:
        check_mnist_folder(tmp_path, manifest, verify_checksums=True)
    assert err.value.where.endswith("train-images-idx3-ubyte.gz")
    with pytest.raises(InputError, match=r"shape \(20, 28, 28\); the manifest expects .*\(60000, 28, 28\)"):
        check_mnist_folder(tmp_path)


def test_digits_as_mnist_is_an_mnist_like_labelled_set():
    batch = digits_as_mnist(seed=0)
    digits = load_digits()
    assert isinstance(batch, ImageBatch)
    assert batch.images.shape == (1797, 1, 28, 28) and batch.images.dtype == np.float32
    assert batch.images.min() == 0.0 and batch.images.max() == pytest.approx(1.0)
    # A 4-pixel empty border around the 20x20 digit box, as in MNIST.
    border = np.ones((28, 28), bool)
    border[4:24, 4:24] = False
    assert batch.images[:, 0][:, border].max() == 0.0
    np.testing.assert_array_equal(batch.labels[:, 0], digits.target)
    assert np.bincount(batch.split).tolist() == [1438, 180, 179]
    # Shrinking each box back to 8x8 recovers the original digit: same layout, not transposed.
    back = scipy.ndimage.zoom(
        batch.images[:, 0, 4:24, 4:24], (1, 0.4, 0.4), order=1, grid_mode=True, mode="nearest"
    )
    original = digits.images / 16.0
    assert np.abs(back - original).mean() < 0.05
    assert np.abs(back - original.transpose(0, 2, 1)).mean() > 0.1


def test_digits_as_mnist_is_deterministic_per_seed():
    first, again, other = digits_as_mnist(seed=4), digits_as_mnist(seed=4), digits_as_mnist(seed=5)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.split, again.split)
    assert (first.split != other.split).any()
    assert first.source_sha256[0] == other.source_sha256[0]


def test_image_batch_rejects_values_outside_unit_range():
    with pytest.raises(InputError, match=r"span \[0, 2\]; expected \[0, 1\]"):
        ImageBatch(
            images=np.full((2, 1, 4, 4), 2.0, dtype=np.float32) * np.array([0, 1]).reshape(2, 1, 1, 1),
            labels=np.zeros((2, 1)),
            names=("a", "a"),
            index=np.arange(2),
            source_sha256=("0" * 64,) * 2,
            split=None,
            origin="test-batch",
        )

import hashlib

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import InputError
from pipeline.sources.celeba import (
    IMAGE_FOLDER,
    PARTITION_FILE,
    check_celeba_folder,
    iter_celeba,
    read_partition_file,
)
from pipeline.sources.images import load_image_manifest, split_by_name_hash

N_IMAGES = 12
CORRUPT = "000005.jpg"


def _colour(i):
    return np.array([20 * i, 240 - 15 * i, 60 + 10 * i], dtype=np.uint8)


def _write_face(path, i):
    """A 178x218 aligned-size image: a plain colour in the centred 148x148 square, white around it."""
    pixels = np.full((218, 178, 3), 255, dtype=np.uint8)
    pixels[35:183, 15:163] = _colour(i)
    Image.fromarray(pixels).save(path, quality=95)


@pytest.fixture
def celeba_root(tmp_path):
    """12 images 000001.jpg ... 000012.jpg, of which 000005.jpg is a truncated JPEG."""
    image_dir = tmp_path / IMAGE_FOLDER
    image_dir.mkdir()
    for i in range(1, N_IMAGES + 1):
        _write_face(image_dir / f"{i:06d}.jpg", i)
    corrupt = image_dir / CORRUPT
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    return tmp_path


def _names(skip=CORRUPT):
    return [f"{i:06d}.jpg" for i in range(1, N_IMAGES + 1) if f"{i:06d}.jpg" != skip]


def test_corrupt_image_is_named_and_skipped_and_batches_stream(celeba_root, caplog):
    skipped = []
    batches = list(iter_celeba(celeba_root, batch_size=5, skipped=skipped))
    assert [len(b) for b in batches] == [5, 5, 1]
    assert [s.name for s in skipped] == [CORRUPT] and "truncated" in skipped[0].reason.lower()
    assert CORRUPT in caplog.text
    names = [name for b in batches for name in b.names]
    assert names == _names()
    images = np.concatenate([b.images for b in batches])
    assert images.shape == (11, 3, 64, 64) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    for image, name in zip(images, names, strict=True):
        expected = _colour(int(name[:6])).reshape(3, 1, 1) / 255.0
        # The 148x148 face crop leaves the white surround out; only the outermost ring blends.
        assert np.abs(image[:, 1:-1, 1:-1] - expected).max() < 0.03
        assert np.abs(image - expected).mean() < 0.02
    labels = np.concatenate([b.labels for b in batches])
    assert (labels == -1).all()
    first = celeba_root / IMAGE_FOLDER / "000001.jpg"
    assert batches[0].source_sha256[0] == hashlib.sha256(first.read_bytes()).hexdigest()


def test_without_partition_file_the_split_is_a_seeded_name_hash(celeba_root):
    batches = list(iter_celeba(celeba_root, batch_size=4, seed=7))
    split = np.concatenate([b.split for b in batches])
    np.testing.assert_array_equal(split, split_by_name_hash(_names(), seed=7))
    # A name's part does not depend on the other names present.
    alone = split_by_name_hash(["000012.jpg"], seed=7)
    assert alone[0] == split[-1]


def test_name_hash_split_follows_the_fractions_on_average():
    names = [f"{i:06d}.jpg" for i in range(1, 20001)]
    counts = np.bincount(split_by_name_hash(names, seed=0), minlength=3) / len(names)
    np.testing.assert_allclose(counts, [0.8, 0.1, 0.1], atol=0.01)


def test_partition_file_gives_the_split(celeba_root):
    parts = {name: i % 3 for i, name in enumerate(_names(skip=None))}
    (celeba_root / PARTITION_FILE).write_text("".join(f"{n} {p}\r\n" for n, p in parts.items()))
    batches = list(iter_celeba(celeba_root, batch_size=20))
    batch = batches[0]
    assert len(batches) == 1 and len(batch) == 11
    assert batch.split.tolist() == [parts[name] for name in batch.names]


def test_explicit_partition_file_and_missing_entries(celeba_root, tmp_path_factory):
    listing = tmp_path_factory.mktemp("lists") / "my_partition.txt"
    listing.write_text("".join(f"{name} 2\n" for name in _names(skip=None)[:-1]))
    with pytest.raises(InputError, match=r"no entry for 000012.jpg") as err:
        list(iter_celeba(celeba_root, partition_file=listing))
    assert err.value.where == str(listing)


@pytest.mark.parametrize("bad_name", ["../000001.jpg", "/etc/passwd", "sub/../../x.jpg", "C:\\x.jpg", ".."])
def test_partition_names_escaping_the_folder_are_rejected(celeba_root, bad_name):
    partition = celeba_root / PARTITION_FILE
    partition.write_text(f"000001.jpg 0\n{bad_name} 1\n")
    with pytest.raises(InputError, match=r"line 2: .*not a plain file name") as err:
        read_partition_file(partition)
    assert err.value.where == str(partition)
    with pytest.raises(InputError, match="not a plain file name"):
        next(iter_celeba(celeba_root))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("000001.jpg 3\n", "line 1: expected"),
        ("000001.jpg 0\n000001.jpg 1\n", "listed twice"),
        ("\n", "no images"),
    ],
)
def test_malformed_partition_files(tmp_path, content, message):
    path = tmp_path / PARTITION_FILE
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_partition_file(path)


def test_other_sizes_take_the_largest_centred_square(tmp_path):
    image_dir = tmp_path / IMAGE_FOLDER
    image_dir.mkdir()
    pixels = np.zeros((60, 100, 3), dtype=np.uint8)
    pixels[:, :, 2] = 255  # blue side strips
    pixels[:, 20:80] = (255, 0, 0)  # the central 60x60 square is red
    Image.fromarray(pixels).save(image_dir / "wide.jpg", quality=95)
    Image.fromarray(np.full((50, 50), 128, dtype=np.uint8)).save(image_dir / "grey.jpg")
    batch = next(iter_celeba(tmp_path, size=16))
    grey, wide = batch.images  # sorted by name: grey.jpg, wide.jpg
    assert batch.images.shape == (2, 3, 16, 16)
    assert np.abs(grey - 128 / 255).max() < 0.02
    inner = wide[:, 1:-1, 1:-1]
    assert inner[0].min() > 0.85 and inner[2].max() < 0.15


def test_folder_without_readable_images(tmp_path):
    with pytest.raises(InputError, match=f"has no {IMAGE_FOLDER}/ folder") as err:
        next(iter_celeba(tmp_path))
    assert err.value.where == str(tmp_path)
    (tmp_path / IMAGE_FOLDER).mkdir()
    (tmp_path / IMAGE_FOLDER / "000001.jpg").write_bytes(b"not a jpeg")
    skipped = []
    with pytest.raises(InputError, match="none of its 1 images could be read"):
        list(iter_celeba(tmp_path, skipped=skipped))
    assert [s.name for s in skipped] == ["000001.jpg"]


def test_check_folder_against_the_manifest(celeba_root):
    manifest = load_image_manifest("celeba")
    assert manifest["layout"]["image_folder"] == IMAGE_FOLDER
    assert manifest["layout"]["partition_file"] == PARTITION_FILE
    assert manifest["layout"]["n_images"] == sum(manifest["splits"]["partition_counts"].values()) == 202599
    with pytest.raises(InputError, match=r"202587 of the 202599 CelebA images are missing, first 000013.jpg"):
        check_celeba_folder(celeba_root)
    small = {**manifest, "layout": {**manifest["layout"], "n_images": N_IMAGES}}
    files = check_celeba_folder(celeba_root, small)
    assert [f.name for f in files] == _names(skip=None)
    (celeba_root / IMAGE_FOLDER / "000003.jpg").unlink()
    with pytest.raises(InputError, match=r"1 of the 12 CelebA images are missing, first 000003.jpg") as err:
        check_celeba_folder(celeba_root, small)
    assert err.value.where == str(celeba_root / IMAGE_FOLDER)
    assert len(check_celeba_folder(celeba_root, small, expect_complete=False)) == 11
    (celeba_root / PARTITION_FILE).write_text("000001.jpg 0\n")
    with pytest.raises(InputError, match=r"no entry for 000002.jpg"):
        check_celeba_folder(celeba_root, small, expect_complete=False)

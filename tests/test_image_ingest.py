"""Image batches into the frame store: keys, splits, caps, skipped JPEGs, frames in memory, latents."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import InputError
from pipeline.models.encoding import encode_store
from pipeline.models.presets import SplitCaps
from pipeline.models.vae import VAEConfig
from pipeline.sources.celeba import IMAGE_FOLDER, iter_celeba
from pipeline.sources.images import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, ImageBatch, seeded_split
from pipeline.sources.mnist import MNIST_FILES, iter_mnist_folder, write_idx
from pipeline.sources.trials import file_sha256
from pipeline.store.frames import FrameStore
from pipeline.store.ingest_eeg import open_store
from pipeline.store.ingest_images import (
    FramesInMemory,
    ImageStoreConfig,
    frames_for,
    image_split,
    image_store_spec,
    ingest_image_batches,
)

N_TRAIN, N_TEST = 40, 12


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(seed=0, shape=(1, 28, 28), dataset="mnist"):
    return ImageStoreConfig(
        dataset=dataset,
        image_shape=shape,
        preprocessing="bytes / 255",
        split_rule="test rule",
        split_seed=seed,
    )


@pytest.fixture
def mnist_folder(tmp_path):
    rng = np.random.default_rng(7)
    folder = tmp_path / "idx"
    folder.mkdir()
    arrays = {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }
    for key, array in arrays.items():
        write_idx(folder / (MNIST_FILES[key] + (".gz" if key == "train_images" else "")), array)
    return folder, arrays


def _stored_by_key(store):
    """(source name, index) -> (image (28, 28), label, split part) of every committed row."""
    rows = store.committed_rows()
    frames = store.read_frames(rows)
    return {
        (str(source), int(index)): (frames[i, 0, 0], float(store.labels[i, 0]), int(store.split[i]))
        for i, (source, index) in enumerate(zip(store.source, store.trial, strict=True))
    }


def test_idx_files_round_trip_through_the_store_and_a_rerun_writes_nothing(tmp_path, mnist_folder):
    folder, arrays = mnist_folder
    store = open_store(tmp_path / "run", image_store_spec(_config(seed=3), "idx", str(folder)))
    result = ingest_image_batches(store, iter_mnist_folder(folder, batch_size=16, seed=3))
    assert (result.n_read, result.n_written, result.n_sources) == (N_TRAIN + N_TEST, N_TRAIN + N_TEST, 2)
    stored = _stored_by_key(store)
    train_name, test_name = MNIST_FILES["train_images"] + ".gz", MNIST_FILES["test_images"]
    expected_split = seeded_split(N_TRAIN, 3, (0.9, 0.1, 0.0))
    for index in range(N_TRAIN):
        image, label, part = stored[(train_name, index)]
        np.testing.assert_array_equal(np.round(image * 255).astype(np.uint8), arrays["train_images"][index])
        assert label == arrays["train_labels"][index] and part == expected_split[index]
    for index in range(N_TEST):
        image, label, part = stored[(test_name, index)]
        np.testing.assert_array_equal(np.round(image * 255).astype(np.uint8), arrays["test_images"][index])
        assert label == arrays["test_labels"][index] and part == SPLIT_TEST
    shas = set(store.source_sha256)
    assert shas == {file_sha256(folder / train_name), file_sha256(folder / test_name)}
    assert (store.subject == -1).all()  # images have no subjects; the split has its own column

    again = open_store(tmp_path / "run", image_store_spec(_config(seed=3), "idx", str(folder)))
    rerun = ingest_image_batches(again, iter_mnist_folder(folder, batch_size=7, seed=3))
    assert rerun.n_read == N_TRAIN + N_TEST and rerun.n_written == 0
    assert len(again.committed_rows()) == N_TRAIN + N_TEST


def test_caps_take_the_first_images_of_each_part_and_grow_without_duplicates(tmp_path, mnist_folder):
    folder, _ = mnist_folder
    store = open_store(tmp_path / "run", image_store_spec(_config(), "idx", str(folder)))
    small = ingest_image_batches(store, iter_mnist_folder(folder, batch_size=8), SplitCaps(5, 2, 3))
    assert small.taken == {"train": 5, "val": 2, "test": 3}
    assert small.n_written == 10
    # Reading stopped in the first batch of the test file, once every part was full.
    assert small.n_read == N_TRAIN + 8
    split = image_split(store)
    assert (split.train.size, split.val.size, split.test.size) == (5, 2, 3)
    expected = seeded_split(N_TRAIN, 0, (0.9, 0.1, 0.0))
    first_train = np.flatnonzero(expected == SPLIT_TRAIN)[:5]
    train_rows = np.isin(store.committed_rows(), split.train)
    assert sorted(store.trial[train_rows].tolist()) == first_train.tolist()

    bigger = ingest_image_batches(store, iter_mnist_folder(folder, batch_size=8), SplitCaps(10, 2, 6))
    assert bigger.taken == {"train": 10, "val": 2, "test": 6} and bigger.n_written == 8
    assert len(store.committed_rows()) == 18
    capped = image_split(store, SplitCaps(4, 0, 6))
    assert (capped.train.size, capped.val.size, capped.test.size) == (4, 0, 6)
    assert np.array_equal(capped.train, image_split(store).train[:4])


def test_an_interrupted_ingest_resumes_without_duplicates(tmp_path, mnist_folder):
    folder, _ = mnist_folder

    def killed_after_two_batches():
        for number, batch in enumerate(iter_mnist_folder(folder, batch_size=9)):
            if number == 2:
                raise KeyboardInterrupt
            yield batch

    store = open_store(tmp_path / "run", image_store_spec(_config(), "idx", str(folder)))
    with pytest.raises(KeyboardInterrupt):
        ingest_image_batches(store, killed_after_two_batches())
    assert len(store.committed_rows()) == 18
    resumed = open_store(tmp_path / "run", image_store_spec(_config(), "idx", str(folder)))
    result = ingest_image_batches(resumed, iter_mnist_folder(folder, batch_size=9))
    assert result.n_written == N_TRAIN + N_TEST - 18
    assert len(resumed.stored_keys()) == len(resumed.committed_rows()) == N_TRAIN + N_TEST


def _write_jpeg(path, value):
    pixels = np.full((218, 178, 3), value, dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def test_celeba_folder_with_a_corrupt_jpeg_stores_the_others_one_source_each(tmp_path):
    image_dir = tmp_path / "celeba" / IMAGE_FOLDER
    image_dir.mkdir(parents=True)
    for i in range(1, 9):
        _write_jpeg(image_dir / f"{i:06d}.jpg", 25 * i)
    corrupt = image_dir / "000003.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    skipped = []
    store = open_store(
        tmp_path / "run", image_store_spec(_config(shape=(3, 64, 64), dataset="celeba"), "images", "x")
    )
    batches = iter_celeba(tmp_path / "celeba", batch_size=3, skipped=skipped)
    result = ingest_image_batches(store, batches, skipped=skipped)
    assert [entry["name"] for entry in result.skipped] == ["000003.jpg"]
    assert "truncated" in result.skipped[0]["reason"].lower()
    assert result.n_written == 7 and result.n_sources == 7
    assert sorted(store.source.tolist()) == [f"{i:06d}.jpg" for i in (1, 2, 4, 5, 6, 7, 8)]
    assert set(store.trial.tolist()) == {0}
    means = {
        str(name): float(store.read_frames([row]).mean())
        for name, row in zip(store.source, store.committed_rows(), strict=True)
    }
    assert means["000006.jpg"] == pytest.approx(150 / 255, abs=2 / 255)


def test_a_jpeg_folder_is_written_one_store_call_per_batch_and_resumes_after_a_kill(tmp_path, monkeypatch):
    image_dir = tmp_path / "celeba" / IMAGE_FOLDER
    image_dir.mkdir(parents=True)
    for i in range(1, 12):
        _write_jpeg(image_dir / f"{i:06d}.jpg", 20 * i)
    (image_dir / "000005.jpg").write_bytes(b"not a jpeg")
    # The same bytes under two names: one image, stored once.
    (image_dir / "000011.jpg").write_bytes((image_dir / "000010.jpg").read_bytes())
    config = _config(shape=(3, 64, 64), dataset="celeba")
    writes = []
    original = FrameStore.add_trials

    def counted(self, **arrays):
        writes.append(list(arrays["source"]))
        return original(self, **arrays)

    monkeypatch.setattr(FrameStore, "add_trials", counted)

    def killed_after_one_batch():
        for number, batch in enumerate(iter_celeba(tmp_path / "celeba", batch_size=4)):
            if number == 1:
                raise KeyboardInterrupt
            yield batch

    store = open_store(tmp_path / "run", image_store_spec(config, "images", "x"))
    with pytest.raises(KeyboardInterrupt):
        ingest_image_batches(store, killed_after_one_batch())
    assert writes == [["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]]
    assert len(store.committed_rows()) == 4

    skipped = []
    resumed = open_store(tmp_path / "run", image_store_spec(config, "images", "x"))
    result = ingest_image_batches(
        resumed, iter_celeba(tmp_path / "celeba", batch_size=4, skipped=skipped), skipped=skipped
    )
    # 10 readable files in batches of 4, 4, 2: the first batch was stored before the kill.
    assert writes[1:] == [["000006.jpg", "000007.jpg", "000008.jpg", "000009.jpg"], ["000010.jpg"]]
    assert result.n_written == 5 and result.n_sources == 9 and len(resumed.committed_rows()) == 9
    assert [entry["name"] for entry in result.skipped] == ["000005.jpg"]
    rows_by_name = dict(zip(resumed.source.tolist(), resumed.committed_rows().tolist(), strict=True))
    sha_by_name = dict(zip(resumed.source.tolist(), resumed.source_sha256.tolist(), strict=True))
    assert sha_by_name["000009.jpg"] == file_sha256(image_dir / "000009.jpg")
    assert float(resumed.read_frames([rows_by_name["000009.jpg"]]).mean()) == pytest.approx(
        180 / 255, abs=2 / 255
    )


def test_a_store_refuses_another_source_seed_or_shape(tmp_path):
    store_dir = tmp_path / "run"
    open_store(store_dir, image_store_spec(_config(seed=0), "idx", "/data/mnist"))
    with pytest.raises(InputError, match=r"data_source '/data/mnist'.*use a new --out folder"):
        open_store(store_dir, image_store_spec(_config(seed=0), "idx", "/data/fashion"))
    with pytest.raises(InputError, match="data_kind 'idx'"):
        open_store(store_dir, image_store_spec(_config(seed=0), "images", "/data/mnist"))
    with pytest.raises(InputError, match="config"):
        open_store(store_dir, image_store_spec(_config(seed=1), "idx", "/data/mnist"))
    with pytest.raises(InputError, match="data_kind"):
        open_store(tmp_path / "other", image_store_spec(_config(), "jpeg", "/data/mnist"))


def _batch(n=4, split=True, shape=(1, 28, 28), origin="batch-origin"):
    return ImageBatch(
        images=np.zeros((n, *shape), np.float32),
        labels=np.zeros((n, 1), np.float32),
        names=("a.idx",) * n,
        index=np.arange(n),
        source_sha256=("ab" * 32,) * n,
        split=np.zeros(n, np.int8) if split else None,
        origin=origin,
    )


def test_bad_batches_are_refused_naming_their_origin(tmp_path):
    store = open_store(tmp_path / "run", image_store_spec(_config(), "idx", "x"))
    with pytest.raises(InputError, match="batch-origin: batch carries no train/val/test split"):
        ingest_image_batches(store, [_batch(split=False)])
    with pytest.raises(InputError, match=r"batch-origin: images are \(3, 64, 64\)"):
        ingest_image_batches(store, [_batch(shape=(3, 64, 64))])
    with pytest.raises(InputError, match="expected ImageBatch"):
        ingest_image_batches(store, [np.zeros((4, 1, 28, 28))])
    assert len(store.committed_rows()) == 0


def test_frames_in_memory_match_the_store_and_encoding_writes_each_row_once(tmp_path, mnist_folder):
    folder, _ = mnist_folder
    store = open_store(tmp_path / "run", image_store_spec(_config(), "idx", str(folder)))
    ingest_image_batches(store, iter_mnist_folder(folder, batch_size=32))
    split = image_split(store)
    held = FramesInMemory(store, split.test)
    assert held.shape == (store.n_rows, 1, 1, 28, 28) and held.nbytes == split.test.size * 28 * 28 * 4
    np.testing.assert_array_equal(held[split.test[2]], store.read_frames([split.test[2]])[0])
    with pytest.raises(InputError, match=f"row {split.train[0]} was not read into memory"):
        held[split.train[0]]
    assert frames_for(store, split.test, memory_budget_bytes=10) is store.frames
    assert isinstance(frames_for(store, split.test, memory_budget_bytes=1 << 20), FramesInMemory)

    torch.manual_seed(0)
    model = VAEConfig((1, 28, 28), n_latents=3).build().eval()
    assert encode_store(store, model, "model-a", split.test, frames=held, batch_size=5) == split.test.size
    assert encode_store(store, model, "model-a", split.test, frames=held) == 0
    mu, logvar = store.read_latents(split.test)
    with torch.no_grad():
        expected_mu, expected_logvar = model.encode(torch.from_numpy(store.read_frames(split.test)[:, 0]))
    np.testing.assert_allclose(mu[:, 0], expected_mu.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logvar[:, 0], expected_logvar.numpy(), rtol=1e-5, atol=1e-6)
    # Another model's latents replace the first model's instead of mixing with them.
    assert encode_store(store, model, "model-b", split.val) == split.val.size
    assert np.array_equal(store.latent_rows(), split.val) and store.latent_model_id == "model-b"


def test_image_split_refuses_a_store_without_training_images(tmp_path):
    store = open_store(tmp_path / "run", image_store_spec(_config(), "idx", "x"))
    batch = _batch()
    store.add_trials(
        frames=batch.images[:, None], labels=batch.labels, subject=np.full(4, -1),
        trial=batch.index, source="a.idx", source_sha256="ab" * 32, split=np.full(4, SPLIT_VAL),
    )  # fmt: skip
    with pytest.raises(InputError, match="holds no training image"):
        image_split(store)


# An image store written before stores had a split column (by the previous release's
# open_image_store and ingest_image_batches): six 4x4 images, their split parts 0 0 0 1 2 2 kept
# in the subject column.
OLD_LAYOUT_STORE = Path(__file__).parent / "data" / "old-image-store"


def test_an_image_store_of_the_older_layout_is_refused_with_a_line_that_says_to_rerun(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(OLD_LAYOUT_STORE, run / "frames.zarr")
    old = FrameStore.open(run / "frames.zarr")
    assert old.subject.tolist() == [0, 0, 0, 1, 2, 2] and not old.has_split
    config = ImageStoreConfig(
        dataset="mnist",
        image_shape=(1, 4, 4),
        preprocessing="IDX unsigned bytes / 255",
        split_rule="fixed: 3 train, 1 validation, 2 test",
    )
    refusal = r"frames.zarr: is an image store of an older layout .*; rerun into a new --out folder$"
    with pytest.raises(InputError, match=refusal) as raised:
        open_store(run, image_store_spec(config, "idx", "/data/mnist"))
    assert "\n" not in str(raised.value)
    with pytest.raises(InputError, match=refusal):
        image_split(old)
    # Refused before anything was written: the store keeps its old layout.
    assert not (run / "frames.zarr" / "split").exists()
    assert not FrameStore.open(run / "frames.zarr").has_split

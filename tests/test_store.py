"""Frame store: layout round trip, idempotent incremental writes, crash safety, attrs, latents."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.errors import InputError
from pipeline.store import layout as store_layout
from pipeline.store import rows as store_rows
from pipeline.store.frames import FrameStore

WRITER_SCRIPT = Path(__file__).with_name("store_writer_script.py")
SMALL_SHAPE = (4, 3, 8, 8)


def _load_writer():
    spec = importlib.util.spec_from_file_location("store_writer_script", WRITER_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


writer = _load_writer()


def _source(seed: int, n_trials: int, frame_shape=SMALL_SHAPE, first_trial: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    frames = rng.standard_normal((n_trials, *frame_shape)).astype(np.float32)
    return {
        "frames": frames,
        "labels": rng.uniform(1, 9, (n_trials, 4)).astype(np.float32),
        "subject": np.full(n_trials, seed, dtype=np.int32),
        "trial": np.arange(first_trial, first_trial + n_trials, dtype=np.int32),
        "source": f"subject{seed:02d}.dat",
        "source_sha256": hashlib.sha256(f"file-{seed}".encode()).hexdigest(),
    }


def _new_store(path, frame_shape=SMALL_SHAPE, config_hash="cfg-a", attrs=None) -> FrameStore:
    return FrameStore.create_or_open(
        path, config_hash=config_hash, attrs=attrs or {"kind": "synthetic"}, frame_shape=frame_shape
    )


def _store_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _contents_by_key(store: FrameStore) -> dict[tuple[str, int], tuple]:
    rows = store.committed_rows()
    frames = store.read_frames(rows)
    return {
        (sha, int(trial)): (frames[i], store.labels[i], int(store.subject[i]), str(store.source[i]))
        for i, (sha, trial) in enumerate(zip(store.source_sha256, store.trial, strict=True))
    }


def test_round_trip_of_arrays_and_attrs(tmp_path):
    attrs = {
        "kind": "synthetic",
        "config": {"band_edges_hz": [[8.0, 13.0], [13.0, 30.0], [30.0, 45.0]], "grid_size": 32},
        "montage_positions": {"Cz": [0.0, 0.0, 1.0]},
        "normalisation": {"mean": [0.5, -1.25, 2.0], "split": "trial-seed-0"},
    }
    store = _new_store(tmp_path / "f.zarr", frame_shape=(63, 3, 32, 32), attrs=attrs)
    data = _source(3, 2, frame_shape=(63, 3, 32, 32))
    assert store.add_trials(**data) == 2

    reader = FrameStore.open(tmp_path / "f.zarr")
    assert reader.frame_shape == (63, 3, 32, 32)
    assert reader.frames.chunks == (1, 63, 3, 32, 32)
    np.testing.assert_array_equal(reader.committed_rows(), [0, 1])
    np.testing.assert_array_equal(reader.read_frames([0, 1]), data["frames"])
    np.testing.assert_array_equal(reader.frames[1], data["frames"][1])
    np.testing.assert_array_equal(reader.labels, data["labels"])
    assert reader.labels.dtype == np.float32 and reader.subject.dtype == np.int32
    np.testing.assert_array_equal(reader.subject, [3, 3])
    np.testing.assert_array_equal(reader.trial, [0, 1])
    assert reader.source.tolist() == ["subject03.dat"] * 2
    assert reader.source_sha256.tolist() == [data["source_sha256"]] * 2
    assert reader.stored_keys() == {(data["source_sha256"], 0), (data["source_sha256"], 1)}
    stored_attrs = reader.attrs
    for key, value in attrs.items():
        assert stored_attrs[key] == value
    assert stored_attrs["config_hash"] == "cfg-a"
    assert stored_attrs["package_version"] == pipeline.__version__
    assert stored_attrs["created"] <= stored_attrs["updated"]


def test_readd_writes_nothing_and_second_source_appends(tmp_path):
    store = _new_store(tmp_path / "f.zarr")
    first = _source(1, 3)
    assert store.add_trials(**first) == 3
    before = _store_bytes(tmp_path / "f.zarr" / "frames")
    assert store.add_trials(**first) == 0
    assert _store_bytes(tmp_path / "f.zarr" / "frames") == before

    reopened = _new_store(tmp_path / "f.zarr")
    overlapping = _source(1, 3, first_trial=2)  # trials 2, 3, 4 of the same file: only 3 and 4 are new
    assert reopened.add_trials(**overlapping) == 2
    second = _source(2, 2)
    assert reopened.add_trials(**second) == 2

    reader = FrameStore.open(tmp_path / "f.zarr")
    assert reader.n_rows == 7
    assert sorted(reader.stored_keys()) == sorted(
        [(first["source_sha256"], t) for t in range(5)] + [(second["source_sha256"], t) for t in range(2)]
    )
    contents = _contents_by_key(reader)
    np.testing.assert_array_equal(contents[(first["source_sha256"], 4)][0], overlapping["frames"][2])
    np.testing.assert_array_equal(contents[(second["source_sha256"], 1)][0], second["frames"][1])
    assert contents[(second["source_sha256"], 0)][2:] == (2, "subject02.dat")


def test_other_config_hash_is_refused_and_store_untouched(tmp_path):
    path = tmp_path / "f.zarr"
    _new_store(path).add_trials(**_source(1, 2))
    before = _store_bytes(path)
    with pytest.raises(InputError, match="built with preprocessing config cfg-a, this run uses cfg-b") as err:
        _new_store(path, config_hash="cfg-b")
    assert err.value.where == str(path)
    with pytest.raises(InputError, match="holds frames"):
        _new_store(path, frame_shape=(4, 3, 8, 9))
    assert _store_bytes(path) == before


def test_add_trials_validates_input(tmp_path):
    store = _new_store(tmp_path / "f.zarr")
    good = _source(1, 2)
    nan_frames = good["frames"].copy()
    nan_frames[1, 0, 0, 0, 0] = np.nan
    cases = [
        ({"frames": good["frames"][:, :3]}, "frames has shape"),
        ({"frames": nan_frames}, "frames holds 1 non-finite"),
        ({"labels": good["labels"][:, :3]}, "labels has shape"),
        ({"subject": good["subject"].astype(float)}, "subject has dtype"),
        ({"trial": np.array([1, 1])}, "repeated"),
        ({"trial": np.array([0, -1])}, "negative"),
        ({"source_sha256": "ABC"}, "64 lowercase hex"),
    ]
    for change, message in cases:
        with pytest.raises(InputError, match=message):
            store.add_trials(**{**good, **change})
    assert store.n_rows == 0 and store.stored_keys() == set()


class CrashBeforeCommit(FrameStore):
    """A writer that dies after writing a trial's data, before its commit marker."""

    def _commit(self, rows):
        raise KeyboardInterrupt("killed")


def _add_uncommitted(path, data) -> None:
    crashing = CrashBeforeCommit.create_or_open(path, config_hash="cfg-a", attrs={}, frame_shape=SMALL_SHAPE)
    with pytest.raises(KeyboardInterrupt):
        crashing.add_trials(**data)


def test_reserved_but_uncommitted_row_is_invisible_and_reused(tmp_path):
    path = tmp_path / "f.zarr"
    _new_store(path).add_trials(**_source(1, 2))
    second = _source(2, 2)
    _add_uncommitted(path, second)

    reader = FrameStore.open(path)
    assert reader.n_rows == 4
    np.testing.assert_array_equal(reader.committed_rows(), [0, 1])
    assert not np.isnan(reader.frames[3]).any(), "the data of the reserved row was written"
    assert len(reader.labels) == 2 and set(reader.source.tolist()) == {"subject01.dat"}
    assert second["source_sha256"] not in {sha for sha, _ in reader.stored_keys()}
    with pytest.raises(InputError, match=r"rows \[2\] hold no committed trial"):
        reader.read_frames([2])

    resumed = _new_store(path)
    assert resumed.add_trials(**second) == 2
    assert resumed.n_rows == 4, "the reserved rows were reused, not appended to"
    np.testing.assert_array_equal(resumed.committed_rows(), [0, 1, 2, 3])
    np.testing.assert_array_equal(resumed.read_frames([2, 3]), second["frames"])


def test_half_done_resize_is_recovered(tmp_path):
    path = tmp_path / "f.zarr"
    _new_store(path).add_trials(**_source(1, 2))
    # A run killed between resizes leaves data arrays longer than the commit marker.
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    group["frames"].resize((5, *SMALL_SHAPE))
    group["labels"].resize((5, 4))

    reader = FrameStore.open(path)
    assert reader.n_rows == 2 and len(reader.labels) == 2
    store = _new_store(path)
    assert store.add_trials(**_source(2, 1)) == 1
    reopened = FrameStore.open(path)
    assert reopened.n_rows == 3
    group = zarr.open_group(str(path), mode="r")
    assert [group[name].shape[0] for name in ("frames", "labels", "source", "committed")] == [3, 3, 3, 3]
    np.testing.assert_array_equal(reopened.subject, [1, 1, 2])


def _read_until(process: subprocess.Popen, wanted: str) -> list[str]:
    lines = []
    while True:
        line = process.stdout.readline()
        assert line, f"writer ended before printing {wanted!r}; it printed {lines}"
        lines.append(line.strip())
        if line.startswith(wanted):
            return lines


def _start_writer(path: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WRITER_SCRIPT), str(path), *options],
        stdout=subprocess.PIPE,
        text=True,
    )


def _kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    process.stdout.close()


def test_ingest_killed_mid_write_resumes_to_the_uninterrupted_result(tmp_path):
    path = tmp_path / "killed.zarr"
    n_total = writer.N_SOURCES * writer.TRIALS_PER_SOURCE

    # Kill 1: after trial 5's data is written, before its commit marker.
    process = _start_writer(path, "--hang-at", "5")
    lines = _read_until(process, "hanging")
    _kill(process)
    assert lines.count("hanging") == 1 and len(lines) == 5
    after_kill = FrameStore.open(path)
    assert len(after_kill.stored_keys()) == 4
    assert after_kill.n_rows == 5
    assert not np.isnan(after_kill.frames[4]).any(), "the kill landed after the data writes"
    assert 4 not in after_kill.committed_rows()

    # Kill 2: wherever the running writer happens to be after 4 more trials; the hang at its
    # 10th commit only guarantees that it cannot finish before the kill.
    process = _start_writer(path, "--sleep", "0.01", "--hang-at", "10")
    for _ in range(4):
        _read_until(process, "committed")
    _kill(process)

    process = _start_writer(path)
    lines = _read_until(process, "done")
    assert process.wait(timeout=30) == 0
    process.stdout.close()
    assert n_total - 4 - 9 <= len(lines) - 1 <= n_total - 4 - 4

    resumed = FrameStore.open(path)
    assert resumed.n_rows == n_total, "rows left by killed runs were reused"
    assert len(resumed.committed_rows()) == n_total
    writer.ingest(str(tmp_path / "fresh.zarr"))
    fresh = FrameStore.open(tmp_path / "fresh.zarr")
    resumed_contents = _contents_by_key(resumed)
    fresh_contents = _contents_by_key(fresh)
    assert resumed_contents.keys() == fresh_contents.keys() and len(fresh_contents) == n_total
    for key, (frames, labels, subject, source) in fresh_contents.items():
        got_frames, got_labels, got_subject, got_source = resumed_contents[key]
        assert got_frames.tobytes() == frames.tobytes()
        assert got_labels.tobytes() == labels.tobytes()
        assert (got_subject, got_source) == (subject, source)


def test_non_json_attrs_are_rejected(tmp_path):
    bad_values = [
        ({"mean": np.zeros(3)}, r"attrs\['mean'\] is of type ndarray.*tolist"),
        ({"scale": np.float32(2.0)}, r"attrs\['scale'\] is of type float32"),
        ({"count": np.int64(3)}, r"attrs\['count'\] is of type int64"),
        ({"nested": {"limit": float("nan")}}, r"attrs\['nested'\]\['limit'\] is nan, which JSON cannot hold"),
        ({"channels": {"Cz", "Pz"}}, r"attrs\['channels'\] is of type set"),
        ({"by_index": {1: "a"}}, r"attrs\['by_index'\] has key 1 of type int; keys must be str"),
    ]
    for bad, message in bad_values:
        with pytest.raises(InputError, match=message):
            _new_store(tmp_path / "new.zarr", attrs=bad)
    assert not (tmp_path / "new.zarr").exists()
    store = _new_store(tmp_path / "f.zarr")
    before = store.attrs
    for bad, message in bad_values:
        with pytest.raises(InputError, match=message):
            store.update_attrs(bad)
    with pytest.raises(InputError, match=r"\['config_hash'\], which the store manages itself"):
        store.update_attrs({"config_hash": "other"})
    with pytest.raises(InputError, match=r"\['created'\], which the store manages itself"):
        store.update_attrs({"created": "yesterday"})
    assert FrameStore.open(tmp_path / "f.zarr").attrs == before

    store.update_attrs({"package_version": pipeline.__version__, "config_hash": "cfg-a"})
    store.update_attrs({"normalisation": {"mean": [1.5, 2.5], "split": "train"}, "scale": np.float64(0.5)})
    reopened = FrameStore.open(tmp_path / "f.zarr")
    assert reopened.attrs["normalisation"] == {"mean": [1.5, 2.5], "split": "train"}
    assert reopened.attrs["scale"] == 0.5


def test_latents_round_trip_and_only_committed_rows(tmp_path):
    path = tmp_path / "f.zarr"
    _new_store(path).add_trials(**_source(1, 3))
    _add_uncommitted(path, _source(9, 1))
    store = _new_store(path)
    rng = np.random.default_rng(7)
    mu = rng.standard_normal((2, SMALL_SHAPE[0], 5)).astype(np.float32)
    logvar = rng.standard_normal((2, SMALL_SHAPE[0], 5)).astype(np.float32)
    store.write_latents([2, 0], mu, logvar, model_id="vae-1")

    reader = FrameStore.open(path)
    np.testing.assert_array_equal(reader.latent_rows(), [0, 2])
    assert reader.latent_model_id == "vae-1"
    got_mu, got_logvar = reader.read_latents([0, 2])
    np.testing.assert_array_equal(got_mu, mu[[1, 0]])
    np.testing.assert_array_equal(got_logvar, logvar[[1, 0]])
    with pytest.raises(InputError, match=r"rows \[1\] have no latents"):
        reader.read_latents([1])
    with pytest.raises(InputError, match="read-only"):
        reader.write_latents([1], mu[:1], logvar[:1], model_id="vae-1")

    with pytest.raises(InputError, match="hold no committed trial"):
        store.write_latents([3], mu[:1], logvar[:1], model_id="vae-1")
    with pytest.raises(InputError, match="5 dimensions, these have 4"):
        store.write_latents([1], mu[:1, :, :4], logvar[:1, :, :4], model_id="vae-1")
    with pytest.raises(InputError, match="model vae-1, these from vae-2"):
        store.write_latents([1], mu[:1], logvar[:1], model_id="vae-2")
    with pytest.raises(InputError, match="non-finite"):
        store.write_latents([1], mu[:1], np.full_like(logvar[:1], np.inf), model_id="vae-1")

    with pytest.raises(InputError, match=r"outside 0\.\.3"):
        store.write_latents([4], mu[:1], logvar[:1], model_id="vae-1")

    # Trials added after encoding get latents once written; the arrays grow with the store.
    store.add_trials(**_source(2, 2))
    store.write_latents([4], mu[:1], logvar[:1], model_id="vae-1")
    np.testing.assert_array_equal(store.latent_rows(), [0, 2, 4])
    assert store.read_latents([4])[0].tobytes() == mu[:1].tobytes()

    store.clear_latents()
    assert store.latent_rows().size == 0 and store.latent_model_id is None
    store.write_latents([1], mu[:1, :, :4], logvar[:1, :, :4], model_id="vae-2")
    writable = FrameStore.open(path, writable=True)
    np.testing.assert_array_equal(writable.read_latents([1])[0], mu[:1, :, :4])
    with pytest.raises(InputError, match="create_or_open"):
        writable.add_trials(**_source(3, 1))


def test_consolidated_readers_see_live_rows_over_a_url(tmp_path):
    url = f"memory://{tmp_path.name}/frames.zarr"
    store = _new_store(url)
    store.add_trials(**_source(1, 2))
    store.consolidate()
    assert FrameStore.open(url).n_rows == 2

    # A new writer drops the consolidated snapshot, so readers never see stale metadata.
    writing = _new_store(url)
    writing.add_trials(**_source(2, 3))
    reader = FrameStore.open(url)
    assert reader.n_rows == 5
    np.testing.assert_array_equal(reader.subject, [1, 1, 2, 2, 2])
    writing.consolidate()
    assert FrameStore.open(url).stored_keys() == writing.stored_keys()


def test_open_refuses_what_is_not_a_frame_store(tmp_path):
    with pytest.raises(InputError, match="no frame store here"):
        FrameStore.open(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["purpose"] = "something else"
    with pytest.raises(InputError, match="not a frame store"):
        FrameStore.open(tmp_path / "other.zarr")
    with pytest.raises(InputError, match="not a frame store"):
        _new_store(tmp_path / "other.zarr")
    with pytest.raises(InputError, match="frame_shape"):
        _new_store(tmp_path / "f.zarr", frame_shape=(0, 3))


def test_handles_opened_together_never_overwrite_each_other(tmp_path):
    """Parallel tasks each open their own handle before any of them writes."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "parallel.zarr"
    handles = [_new_store(path) for _ in range(4)]
    sources = [_source(seed, 3) for seed in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        pairs = zip(handles, sources, strict=True)
        written = list(pool.map(lambda pair: pair[0].add_trials(**pair[1]), pairs))
    assert written == [3, 3, 3, 3]
    store = FrameStore.open(path)
    assert store.n_rows == 12 and len(store.committed_rows()) == 12
    contents = _contents_by_key(store)
    for source in sources:
        for i, trial in enumerate(source["trial"]):
            frames, *_ = contents[(source["source_sha256"], int(trial))]
            assert frames.tobytes() == source["frames"][i].tobytes()


def test_two_processes_ingesting_at_once_store_each_trial_once(tmp_path):
    path = tmp_path / "two.zarr"
    first = _start_writer(path, "--sleep", "0.01")
    second = _start_writer(path, "--sleep", "0.01")
    for process in (first, second):
        assert process.wait(timeout=120) == 0
        process.stdout.close()
    store = FrameStore.open(path)
    n_total = writer.N_SOURCES * writer.TRIALS_PER_SOURCE
    assert store.n_rows == n_total and len(store.stored_keys()) == n_total
    writer.ingest(str(tmp_path / "fresh.zarr"))
    fresh = _contents_by_key(FrameStore.open(tmp_path / "fresh.zarr"))
    for key, (frames, labels, _, _) in _contents_by_key(store).items():
        assert frames.tobytes() == fresh[key][0].tobytes() and labels.tobytes() == fresh[key][1].tobytes()


def test_row_runs_read_and_write_in_the_order_given(tmp_path):
    from pipeline.store.rows import read_rows, write_rows

    array = zarr.create_array(
        tmp_path / "a.zarr", shape=(12, 3), chunks=(1, 3), dtype="float32", fill_value=np.nan
    )
    rows = np.array([7, 2, 3, 4, 9, 10, 0])  # runs 7 | 2-4 | 9-10 | 0, in no sorted order
    values = np.arange(rows.size * 3, dtype=np.float32).reshape(rows.size, 3)
    write_rows(array, rows, values)

    expected = np.full((12, 3), np.nan, dtype=np.float32)
    expected[rows] = values
    np.testing.assert_array_equal(array[:], expected)
    np.testing.assert_array_equal(read_rows(array, rows), values)
    np.testing.assert_array_equal(read_rows(array, rows[::-1]), values[::-1])
    assert read_rows(array, np.array([], dtype=np.int64)).shape == (0, 3)


def test_rows_of_several_arrays_written_together_land_where_one_by_one_would(tmp_path):
    from pipeline.store.rows import write_rows, write_rows_together

    def arrays(name):
        group = zarr.open_group(tmp_path / name, mode="w")
        numbers = group.create_array("n", shape=(12, 2), chunks=(4, 2), dtype="int32", fill_value=-1)
        names = group.create_array("s", shape=(12,), chunks=(4,), dtype=str)
        return numbers, names

    rows = np.array([7, 2, 3, 4, 9, 10, 0])  # runs across chunk borders, in no sorted order
    numbers = np.arange(rows.size * 2, dtype=np.int32).reshape(rows.size, 2)
    names = np.array([f"file-{row}" for row in rows])
    together, one_by_one = arrays("together.zarr"), arrays("one_by_one.zarr")
    write_rows_together(list(zip(together, (numbers, names), strict=True)), rows)
    for array, values in zip(one_by_one, (numbers, names), strict=True):
        write_rows(array, rows, values)

    np.testing.assert_array_equal(together[0][:], one_by_one[0][:])
    np.testing.assert_array_equal(together[1][:].tolist(), one_by_one[1][:].tolist())
    np.testing.assert_array_equal(together[0][rows], numbers)
    assert together[1][:].tolist()[1] == "" and together[1][rows].tolist() == names.tolist()


def test_a_store_s_attrs_are_read_without_its_rows_and_only_from_a_store(tmp_path):
    store = _new_store(tmp_path / "f.zarr")
    store.add_trials(**_source(1, 2))
    assert FrameStore.read_attrs(tmp_path / "f.zarr") == FrameStore.open(tmp_path / "f.zarr").attrs
    assert FrameStore.read_attrs(tmp_path / "f.zarr")["kind"] == "synthetic"
    zarr.open_group(tmp_path / "plain.zarr", mode="w").attrs["kind"] = "synthetic"
    with pytest.raises(InputError, match=r"plain\.zarr: is not a frame store"):
        FrameStore.read_attrs(tmp_path / "plain.zarr")
    with pytest.raises(InputError, match="no frame store here"):
        FrameStore.read_attrs(tmp_path / "absent.zarr")


def test_frames_compressed_before_the_lock_are_the_bytes_zarr_itself_writes(tmp_path):
    store = _new_store(tmp_path / "f.zarr")
    data = _source(5, 3)
    assert len(store_rows.encoded_frame_chunks(store.frames, data["frames"])) == 3
    assert store.add_trials(**data) == 3
    # The same frames written through zarr's own encoder, into an array of the same layout.
    twin = zarr.open_group(tmp_path / "twin.zarr", mode="w").create_array(
        "frames", shape=(3, *SMALL_SHAPE), chunks=(1, *SMALL_SHAPE), dtype="float32",
        fill_value=np.nan, compressors=store_layout.FRAMES_COMPRESSOR,
    )  # fmt: skip
    twin[:] = data["frames"]
    for row in range(3):
        ours = tmp_path / "f.zarr" / "frames" / store.frames.metadata.encode_chunk_key((row, 0, 0, 0, 0))
        theirs = tmp_path / "twin.zarr" / "frames" / twin.metadata.encode_chunk_key((row, 0, 0, 0, 0))
        assert ours.read_bytes() == theirs.read_bytes()
    np.testing.assert_array_equal(FrameStore.open(tmp_path / "f.zarr").read_frames([0, 1, 2]), data["frames"])


def test_each_trials_frames_are_one_file_and_a_store_with_nested_chunk_folders_still_appends(tmp_path):
    data = _source(5, 3)
    store = _new_store(tmp_path / "new.zarr")
    assert store.add_trials(**data) == 3
    assert sorted(p.name for p in (tmp_path / "new.zarr" / "frames").iterdir() if p.is_file()) == [
        "c.0.0.0.0.0", "c.1.0.0.0.0", "c.2.0.0.0.0", "zarr.json",
    ]  # fmt: skip
    # A store written before the flat chunk files: its frames array keeps "c/<row>/0/0/0/0".
    _new_store(tmp_path / "old.zarr")
    group = zarr.open_group(tmp_path / "old.zarr", mode="a", use_consolidated=False)
    frames = group["frames"]
    spec = {"shape": frames.shape, "chunks": frames.chunks, "dtype": frames.dtype, "fill_value": np.nan}
    del group["frames"]
    group.create_array("frames", **spec, compressors=store_layout.FRAMES_COMPRESSOR)
    old = FrameStore.create_or_open(
        tmp_path / "old.zarr", config_hash="cfg-a", attrs={"kind": "synthetic"}, frame_shape=SMALL_SHAPE
    )
    assert old.add_trials(**data) == 3
    assert (tmp_path / "old.zarr" / "frames" / "c" / "2" / "0" / "0" / "0" / "0").is_file()
    np.testing.assert_array_equal(
        FrameStore.open(tmp_path / "old.zarr").read_frames([0, 1, 2]), data["frames"]
    )
    assert store.read_frames([0, 1, 2]).tobytes() == old.read_frames([0, 1, 2]).tobytes()


def test_frames_of_another_layout_are_left_to_zarr_to_encode(tmp_path):
    group = zarr.open_group(tmp_path / "other.zarr", mode="w")
    zstd = group.create_array("frames", shape=(2, 4), chunks=(1, 4), dtype="float32")
    assert store_rows.encoded_frame_chunks(zstd, np.ones((2, 4), np.float32)) is None
    blosc = group.create_array(
        "two_rows", shape=(2, 4), chunks=(2, 4), dtype="float32", compressors=store_layout.FRAMES_COMPRESSOR
    )
    assert store_rows.encoded_frame_chunks(blosc, np.ones((2, 4), np.float32)) is None


def test_the_split_column_holds_each_row_s_part_and_minus_one_where_none_was_given(tmp_path):
    store = _new_store(tmp_path / "s.zarr")
    assert store.has_split
    store.add_trials(**_source(1, 3))
    store.add_trials(**_source(2, 4), split=np.array([0, 2, 1, 0]))
    by_source: dict[str, list[int]] = {}
    for sha, part in zip(store.source_sha256, store.split, strict=True):
        by_source.setdefault(str(sha), []).append(int(part))
    assert store.split.dtype == np.int8
    assert by_source == {
        _source(1, 1)["source_sha256"]: [-1, -1, -1],
        _source(2, 1)["source_sha256"]: [0, 2, 1, 0],
    }
    reopened = FrameStore.open(tmp_path / "s.zarr")
    assert reopened.split.tolist() == store.split.tolist()
    with pytest.raises(InputError, match="split holds parts other than"):
        store.add_trials(**_source(3, 2), split=np.array([0, 3]))
    with pytest.raises(InputError, match=r"split has shape \(1,\)"):
        store.add_trials(**_source(3, 2), split=np.array([0]))


def test_a_store_written_before_the_split_column_opens_and_gains_it_when_appended_to(tmp_path):
    path = tmp_path / "s.zarr"
    store = _new_store(path)
    store.add_trials(**_source(1, 3))
    # The layout of a store written before the split column existed: the same arrays without it.
    del zarr.open_group(path, mode="r+", use_consolidated=False)["split"]
    old = FrameStore.open(path)
    assert not old.has_split and old.split.tolist() == [-1, -1, -1]
    appended = _new_store(path)
    appended.add_trials(**_source(2, 2), split=np.array([1, 1]))
    assert appended.has_split and sorted(appended.split.tolist()) == [-1, -1, -1, 1, 1]
    assert len(appended.committed_rows()) == 5

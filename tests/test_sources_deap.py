"""DEAP readers: Python 2 and 3 pickles through the restricted unpickler, MAT files, bad input."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pipeline.errors import InputError
from pipeline.sources.deap import (
    read_deap_dat,
    read_deap_mat,
    read_source_file,
    write_deap_dat,
    write_deap_mat,
)
from pipeline.sources.trials import DEAP_CHANNELS, N_SAMPLES, file_sha256

N_TRIALS = 2


@pytest.fixture
def deap_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Two trials in DEAP's layout: 40 channels (EEG then peripheral) and 4 labels in [1, 9]."""
    rng = np.random.default_rng(7)
    data = rng.normal(0.0, 20.0, size=(N_TRIALS, 40, N_SAMPLES))
    labels = np.round(rng.uniform(1.0, 9.0, size=(N_TRIALS, 4)), 2)
    return data, labels


def _python2_string(value: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it: SHORT_BINSTRING or BINSTRING."""
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value
    return b"T" + struct.pack("<i", len(value)) + value


def _python2_array(array: np.ndarray) -> bytes:
    """Opcodes Python 2's cPickle emits for a float64 C-ordered ndarray (numpy 1.x, protocol 2)."""
    array = np.ascontiguousarray(array, dtype="<f8")
    shape = b"(" + b"".join(b"J" + struct.pack("<i", size) for size in array.shape) + b"t"
    dtype = (
        b"cnumpy\ndtype\n" + _python2_string(b"f8") + b"K\x00K\x01\x87R"  # dtype('f8', 0, 1)
        + b"(K\x03" + _python2_string(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )  # fmt: skip
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _python2_string(b"b")
        + b"\x87R(K\x01" + shape + dtype + b"\x89" + _python2_string(array.tobytes()) + b"tb"
    )  # fmt: skip


def _python2_deap_pickle(data: np.ndarray, labels: np.ndarray) -> bytes:
    """A dict pickled as DEAP's own files were: Python 2 cPickle, protocol 2, byte-string keys."""
    items = (
        _python2_string(b"data") + _python2_array(data) + _python2_string(b"labels") + _python2_array(labels)
    )
    return b"\x80\x02}(" + items + b"u."


def test_python2_cpickle_file_loads(tmp_path, deap_arrays):
    data, labels = deap_arrays
    path = tmp_path / "s05.dat"
    path.write_bytes(_python2_deap_pickle(data, labels))
    trials = read_deap_dat(path)
    np.testing.assert_array_equal(trials.signals, data[:, :32].astype(np.float32))
    np.testing.assert_array_equal(trials.labels, labels.astype(np.float32))
    assert trials.signals.shape == (N_TRIALS, len(DEAP_CHANNELS), N_SAMPLES)
    assert trials.subject.tolist() == [5, 5]
    assert trials.trial.tolist() == [0, 1]
    assert trials.kind == "deap-python"
    assert trials.source == str(path)
    assert trials.source_sha256 == file_sha256(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_pickles_load_at_every_protocol(tmp_path, deap_arrays, protocol):
    data, labels = deap_arrays
    path = write_deap_dat(tmp_path / "s12.dat", data, labels, protocol=protocol)
    trials = read_deap_dat(path)
    np.testing.assert_array_equal(trials.signals, data[:, :32].astype(np.float32))
    np.testing.assert_array_equal(trials.labels, labels.astype(np.float32))
    assert trials.subject.tolist() == [12, 12]


def test_bytes_keys_and_float32_arrays_load(tmp_path, deap_arrays):
    data, labels = deap_arrays
    path = tmp_path / "s01.dat"
    path.write_bytes(pickle.dumps({b"data": data.astype(np.float32), b"labels": labels}, protocol=4))
    np.testing.assert_array_equal(read_deap_dat(path).signals, data[:, :32].astype(np.float32))


def test_trials_read_earlier_stay_intact_when_the_next_file_reuses_the_read_buffer(tmp_path, deap_arrays):
    data, labels = deap_arrays
    # One float32 trial: its EEG channels are contiguous in the file's bytes, so only an explicit
    # copy keeps them apart from the buffer the next read overwrites.
    first = tmp_path / "s01.dat"
    first.write_bytes(pickle.dumps({"data": data[:1].astype(np.float32), "labels": labels[:1]}, protocol=4))
    second = write_deap_dat(tmp_path / "s02.dat", -data, 10.0 - labels)
    read_deap_dat(second)  # the buffer grows to the larger file, then serves both
    read_first = read_deap_dat(first)
    read_second = read_deap_dat(second)
    np.testing.assert_array_equal(read_first.signals, data[:1, :32].astype(np.float32))
    np.testing.assert_array_equal(read_first.labels, labels[:1].astype(np.float32))
    np.testing.assert_array_equal(read_second.signals, (-data[:, :32]).astype(np.float32))
    assert read_first.source_sha256 == file_sha256(first)
    assert read_second.source_sha256 == file_sha256(second)


class _RunsShellCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickle_calling_os_system_is_refused_without_running(tmp_path, deap_arrays):
    data, labels = deap_arrays
    marker = tmp_path / "pwned"
    path = tmp_path / "s01.dat"
    payload = {"data": data, "labels": labels, "x": _RunsShellCommand(f"touch {marker}")}
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(InputError) as caught:
        read_deap_dat(path)
    assert not marker.exists()
    message = str(caught.value)
    assert message.startswith(str(path))
    assert f"{os.system.__module__}.system" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(V1+1\ntR.",  # GLOBAL + REDUCE, protocol 0
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x04exec\x93\x8c\x011\x85R.",
        b"\x80\x02cnumpy\nload\nq\x00.",  # a numpy global that is not an array builder
    ],
    ids=["eval-protocol0", "exec-stack-global", "numpy-load"],
)
def test_globals_outside_the_allow_list_are_refused(tmp_path, payload):
    path = tmp_path / "s02.dat"
    path.write_bytes(payload)
    with pytest.raises(InputError, match="refused to load global") as caught:
        read_deap_dat(path)
    assert caught.value.where == str(path)


def test_truncated_and_garbage_files_are_reported(tmp_path, deap_arrays):
    data, labels = deap_arrays
    whole = write_deap_dat(tmp_path / "s01.dat", data, labels).read_bytes()
    truncated = tmp_path / "s02.dat"
    truncated.write_bytes(whole[: len(whole) // 2])
    garbage = tmp_path / "s03.dat"
    garbage.write_bytes(b"\x00\x01 this is not a pickle at all")
    empty = tmp_path / "s04.dat"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(InputError, match="truncated or corrupt") as caught:
            read_deap_dat(path)
        assert caught.value.where == str(path)


@pytest.mark.parametrize(
    ("contents", "problem"),
    [
        ([1, 2, 3], "holds a list"),
        ({"data": np.zeros((2, 40, N_SAMPLES))}, r"missing key\(s\) \['labels'\]"),
        ({"data": np.zeros((2, 32, N_SAMPLES)), "labels": np.full((2, 4), 5.0)}, "'data' has shape"),
        ({"data": np.zeros((2, 40, 8000)), "labels": np.full((2, 4), 5.0)}, "'data' has shape"),
        ({"data": np.zeros((2, 40, N_SAMPLES)), "labels": np.full((3, 4), 5.0)}, "'labels' has shape"),
        (
            {"data": np.zeros((2, 40, N_SAMPLES)), "labels": np.full((2, 4), 5.0, dtype=object)},
            "dtype object",
        ),
        ({"data": "signals", "labels": np.full((2, 4), 5.0)}, "'data' is a str"),
    ],
    ids=["not-dict", "no-labels", "32-channels", "short-trials", "label-rows", "object-labels", "str-data"],
)
def test_wrong_contents_are_reported(tmp_path, contents, problem):
    path = tmp_path / "s01.dat"
    path.write_bytes(pickle.dumps(contents, protocol=2))
    with pytest.raises(InputError, match=problem) as caught:
        read_deap_dat(path)
    assert caught.value.where == str(path)


def test_nan_samples_and_out_of_range_labels_name_the_file(tmp_path, deap_arrays):
    data, labels = deap_arrays
    with_nan = data.copy()
    with_nan[1, 3, 100] = np.nan
    nan_file = tmp_path / "s01.dat"
    nan_file.write_bytes(pickle.dumps({"data": with_nan, "labels": labels}, protocol=2))
    with pytest.raises(InputError, match=r"NaN or Inf in trial\(s\) \[1\]") as caught:
        read_deap_dat(nan_file)
    assert caught.value.where == str(nan_file)

    bad_labels = labels.copy()
    bad_labels[0, 1] = 9.5
    label_file = tmp_path / "s02.dat"
    label_file.write_bytes(pickle.dumps({"data": data, "labels": bad_labels}, protocol=2))
    with pytest.raises(InputError, match=r"arousal = 9\.5") as caught:
        read_deap_dat(label_file)
    assert caught.value.where == str(label_file)


def test_subject_comes_from_the_file_name_or_the_caller(tmp_path, deap_arrays):
    data, labels = deap_arrays
    unnamed = write_deap_dat(tmp_path / "recording.dat", data, labels)
    with pytest.raises(InputError, match="cannot tell the subject"):
        read_deap_dat(unnamed)
    assert read_deap_dat(unnamed, subject=23).subject.tolist() == [23, 23]
    with pytest.raises(InputError, match="positive integer"):
        read_deap_dat(unnamed, subject=0)


def test_matlab_file_round_trip(tmp_path, deap_arrays):
    data, labels = deap_arrays
    path = write_deap_mat(tmp_path / "s31.mat", data, labels)
    trials = read_deap_mat(path)
    np.testing.assert_array_equal(trials.signals, data[:, :32].astype(np.float32))
    np.testing.assert_array_equal(trials.labels, labels.astype(np.float32))
    assert trials.kind == "deap-matlab"
    assert trials.subject.tolist() == [31, 31]
    assert trials.source_sha256 == file_sha256(path)


def test_matlab_file_without_labels_or_not_a_mat_file(tmp_path, deap_arrays):
    data, _ = deap_arrays
    no_labels = tmp_path / "s01.mat"
    scipy.io.savemat(no_labels, {"data": data})
    with pytest.raises(InputError, match=r"missing key\(s\) \['labels'\]"):
        read_deap_mat(no_labels)
    not_mat = tmp_path / "s02.mat"
    not_mat.write_bytes(b"MATLAB? no, just text" * 10)
    with pytest.raises(InputError, match="cannot read as a MAT file") as caught:
        read_deap_mat(not_mat)
    assert caught.value.where == str(not_mat)


def test_read_source_file_dispatches_on_suffix(tmp_path, deap_arrays):
    data, labels = deap_arrays
    dat = write_deap_dat(tmp_path / "s03.DAT", data, labels)
    mat = write_deap_mat(tmp_path / "s03.mat", data, labels)
    assert read_source_file(dat).kind == "deap-python"
    assert read_source_file(mat).kind == "deap-matlab"
    edf = tmp_path / "s03.edf"
    edf.write_bytes(b"0")
    with pytest.raises(InputError, match=r"unknown file type '\.edf'"):
        read_source_file(edf)
    with pytest.raises(InputError, match="does not exist"):
        read_source_file(tmp_path / "s04.dat")
    folder_named_like_a_file = tmp_path / "s05.dat"
    folder_named_like_a_file.mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        read_source_file(folder_named_like_a_file)


def test_writers_validate_before_writing_anything(tmp_path, deap_arrays):
    data, labels = deap_arrays
    with pytest.raises(InputError, match="data has shape"):
        write_deap_dat(tmp_path / "s01.dat", data[:, :32], labels)
    with pytest.raises(InputError, match="labels have shape"):
        write_deap_mat(tmp_path / "s01.mat", data, labels[:1])
    with pytest.raises(InputError, match="protocol"):
        write_deap_dat(tmp_path / "s01.dat", data, labels, protocol=1)
    with_inf = data.copy()
    with_inf[0, 0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or Inf"):
        write_deap_dat(tmp_path / "s01.dat", with_inf, labels)
    assert list(Path(tmp_path).iterdir()) == []

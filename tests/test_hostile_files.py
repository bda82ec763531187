"""Crafted input files: each is refused with one named line, fast, in bounded memory, never a crash.

The crafted files are those that took the whole process down (or hung it, or made it allocate
gigabytes) with an unpickler: each is read in a child process, so a crash or hang shows as a
failed test rather than a dead test run. The fuzz test then mutates valid pickles a few
hundred times in process: every outcome is a valid read or a named refusal. Gzip IDX files
and JPEGs whose headers claim far more than the file can hold are refused before inflating; a
MAT file that inflates beyond the read's memory bound fails alone.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from test_failure_safety import _child_env
from test_sources_deap import _python2_deap_pickle

from pipeline.errors import InputError
from pipeline.sources.array_pickle import load_array_dict
from pipeline.sources.celeba import decode_face
from pipeline.sources.deap import read_deap_dat, read_deap_mat, read_source_file, write_deap_dat
from pipeline.sources.mnist import read_idx, write_idx
from pipeline.sources.pickle_machine import MAX_DEPTH, PickleRefused
from pipeline.sources.trials import N_SAMPLES
from pipeline.store.frames import FrameStore
from pipeline.store.run_folder import store_path

EEGMI = Path(sys.executable).with_name("eegmi")


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _f8_dtype(byteorder: str = "<") -> bytes:
    return (
        b"cnumpy\ndtype\n" + _text("f8") + b"K\x00K\x01\x87R(K\x03" + _text(byteorder)
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )  # fmt: skip


def _labels_array(n_trials: int) -> bytes:
    """A valid float64 ``labels`` array (all 5.0) built as Python 2 cPickle does."""
    raw = np.full((n_trials, 4), 5.0).tobytes()
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R(K\x01"
        + b"(" + b"".join(b"J" + struct.pack("<i", n) for n in (n_trials, 4)) + b"t"
        + _f8_dtype() + b"\x89T" + struct.pack("<i", len(raw)) + raw + b"tb"
    )  # fmt: skip


def _dict_of(data: bytes, n_trials: int = 200) -> bytes:
    return b"\x80\x02}(" + _text("data") + data + _text("labels") + _labels_array(n_trials) + b"u."


def nested_tuples() -> bytes:
    """150,000 nested 1-tuples as a dict key: an unpickler's recursion overflows the C stack."""
    return b"\x80\x02}" + b")" + b"\x85" * 150_000 + b"K\x01s."


def tuple_dag() -> bytes:
    """A tuple of a tuple of ... 100 levels, each level the same object twice: hashing it never ends."""
    return b"\x80\x02}" + b")" + b"2\x86" * 100 + b"K\x01s."


def hex_chain() -> bytes:
    """``_codecs.encode(..., 'hex')`` 26 times over: each level doubles the bytes."""
    inner = b"C\x08abcdefgh"
    for _ in range(26):
        inner = b"h\x00" + inner + _text("hex") + b"\x86R"
    return _dict_of(b"c_codecs\nencode\nq\x000" + inner)


def unknown_codec() -> bytes:
    return _dict_of(b"c_codecs\nencode\n" + _text("x") + _text("no-such-codec") + b"\x86R")


def odd_dtype_state() -> bytes:
    """A structured dtype whose BUILD state names fields ('a', 'b') that its field dict lacks."""
    dtype = (
        b"cnumpy\ndtype\n" + _text("V16") + b"K\x00K\x01\x87R(K\x03" + _text("|") + b"N"
        + _text("a") + _text("b") + b"\x86}" + _text("a") + b"(" + _f8_dtype() + b"K\x00ts"
        + b"K\x10K\x01K\x10tb"
    )  # fmt: skip
    return _dict_of(
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R(K\x01K\x02\x85"
        + dtype + b"\x89C\x20" + b"\x00" * 32 + b"tb"
    )  # fmt: skip


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def dtype_names_fields_disagree() -> bytes:
    """A structured dtype whose BUILD state names a field ('b') its field dict lacks and whose
    flags say it holds Python objects: numpy walks the names to release the array's objects,
    finds no field 'b' and dereferences nothing (SIGSEGV), even after the reader refused the
    array. Only allowed globals: ``numpy.dtype``, ``_reconstruct``, ``ndarray``."""
    dtype = (
        b"cnumpy\ndtype\n" + _text("V16") + b"K\x00K\x01\x87R(K\x03" + _text("|") + b"N"
        + b"(" + _text("a") + _text("b") + b"t}(" + _text("a") + b"(" + _f8_dtype() + _int(0) + b"tu"
        + _int(16) + b"K\x01" + _int(1) + b"tb"
    )  # fmt: skip
    return _dict_of(
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R(K\x01(" + _int(2)
        + b"t" + dtype + b"\x89C\x20" + b"\x00" * 32 + b"tb",
        n_trials=2,
    )  # fmt: skip


def stride_zero_array() -> bytes:
    """``ndarray(shape, 'f8', <8 bytes>, 0, strides=(0, ...))`` for both arrays: one sample and one
    label repeated over 200 trials. An unpickler accepted it; preprocessing then copied it into
    gigabytes."""

    def repeated(shape: tuple[int, ...], value: float) -> bytes:
        dims = b"(" + b"".join(b"M" + struct.pack("<H", d) for d in shape) + b"t"
        return (
            b"("
            + dims
            + _text("f8")
            + b"C\x08"
            + struct.pack("<d", value)
            + b"K\x00("
            + b"K\x00" * len(shape)
            + b"ttR"
        )

    return (
        b"\x80\x02}(" + _text("data") + b"cnumpy\nndarray\nq\x00" + repeated((200, 40, N_SAMPLES), 1.0)
        + _text("labels") + b"h\x00" + repeated((200, 4), 5.0) + b"u."
    )  # fmt: skip


def claimed_array() -> bytes:
    """``_reconstruct(ndarray, (200, 40, 8064), 'd')`` never given its bytes: 516 MB of nothing."""
    return _dict_of(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n(K\xc8K(M\x80\x1ftC\x01d\x87R")


def broadcast_array() -> bytes:
    """8 bytes that ``_frombuffer`` would have to stretch over 200 trials (a stride-0 view)."""
    return _dict_of(
        b"cnumpy._core.numeric\n_frombuffer\n(\x96" + struct.pack("<Q", 8) + b"\x00" * 8
        + _f8_dtype() + b"(K\xc8K(M\x80\x1ft" + _text("C") + b"tR"
    )  # fmt: skip


CRAFTED = {
    "nested_tuples": (nested_tuples, f"containers nested more than {MAX_DEPTH} deep"),
    "tuple_dag": (tuple_dag, f"containers nested more than {MAX_DEPTH} deep"),
    "hex_chain": (hex_chain, r"_codecs\.encode other than encode\(str, 'latin1'\)"),
    "unknown_codec": (unknown_codec, r"_codecs\.encode other than encode\(str, 'latin1'\)"),
    "odd_dtype_state": (odd_dtype_state, "an array has dtype 'V16', expected a real numeric array"),
    "dtype_names_fields_disagree": (
        dtype_names_fields_disagree,
        "an array has dtype 'V16', expected a real numeric array",
    ),
    "stride_zero_array": (stride_zero_array, "refused to call numpy.ndarray"),
    "claimed_array": (claimed_array, "'data' is an array the file never gives the bytes of"),
    "broadcast_array": (broadcast_array, "needs 516096000 bytes, its data holds 8"),
}

_CHILD = """
import json, re, sys, time
from pipeline.errors import InputError
from pipeline.sources.deap import read_deap_dat
start = time.perf_counter()
try:
    read_deap_dat(sys.argv[1])
    outcome = "loaded"
except InputError as err:
    outcome = str(err)
seconds = time.perf_counter() - start
# VmHWM is this process's own peak (ru_maxrss would count the parent's memory before exec).
with open("/proc/self/status") as status:
    peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1))
print(json.dumps({"outcome": outcome, "seconds": seconds, "max_rss_mb": peak_kb / 1024}))
"""


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_pickle_is_refused_in_one_named_line_quickly_and_in_little_memory(tmp_path, name):
    craft, problem = CRAFTED[name]
    path = tmp_path / "s01.dat"
    path.write_bytes(craft())
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, f"reader died with {child.returncode}: {child.stderr[-500:]}"
    result = json.loads(child.stdout)
    assert result["outcome"].startswith(f"{path}: ")
    assert "\n" not in result["outcome"]
    assert re.search(problem, result["outcome"]), result["outcome"]
    assert result["seconds"] < 1.0
    # numpy and scipy alone take ~60 MB; an unpickler took 435 MB to 1 GB on these files.
    assert result["max_rss_mb"] < 200


def test_every_crafted_file_fails_alone_in_one_line_through_the_command(prefect_harness, tmp_path):
    """``eegmi preprocess`` over a folder of every crafted file beside a good ``s02.dat``, in its
    own process (a crash would end it, not the test run): each crafted file gets its one named
    line, no traceback, and s02's trials are stored."""
    data = tmp_path / "data"
    data.mkdir()
    free_names = (f"s{number:02d}.dat" for number in range(1, 33) if number != 2)
    problems = {}
    for craft, problem in CRAFTED.values():
        name = next(free_names)
        (data / name).write_bytes(craft())
        problems[name] = problem
    write_deap_dat(
        data / "s02.dat", np.random.default_rng(7).normal(0.0, 20.0, (2, 40, N_SAMPLES)), np.full((2, 4), 5.0)
    )
    out = tmp_path / "run"
    child = subprocess.run(
        [str(EEGMI), "preprocess", "--data-dir", str(data), "--out", str(out)],
        env=_child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 1, child.stderr[-3000:]
    assert "Traceback" not in child.stderr, child.stderr[-3000:]
    errors = [line for line in child.stderr.splitlines() if line.startswith("eegmi: error: ")]
    assert len(errors) == len(problems), errors
    for name, problem in problems.items():
        [line] = [line for line in errors if line.startswith(f"eegmi: error: {name}: ")]
        assert re.search(problem, line), line
    assert f"eegmi: {len(problems)} file(s) failed; 1 stored" in child.stderr
    store = FrameStore.open(store_path(str(out)))
    assert [Path(source).name for source in store.source[:]] == ["s02.dat", "s02.dat"]
    assert len(store.committed_rows()) == 2


def test_crafted_pickles_are_input_errors_so_the_flow_does_not_retry_them(tmp_path):
    for name, (craft, problem) in CRAFTED.items():
        if name in ("nested_tuples", "tuple_dag"):  # an unpickler would crash or hang here
            continue
        path = tmp_path / "s01.dat"
        path.write_bytes(craft())
        with pytest.raises(InputError, match=problem):
            read_deap_dat(path)


# -- fuzzing --------------------------------------------------------------------------------


def _valid_pickles() -> list[bytes]:
    """Small DEAP-like pickles in every layout the parser admits (arrays kept small so that
    most mutations land on opcodes rather than on sample bytes)."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 3, 5))
    labels = rng.uniform(1, 9, size=(2, 4))
    pickles = [pickle.dumps({"data": data, "labels": labels}, protocol=p) for p in (2, 3, 4, 5)]
    pickles.append(pickle.dumps({b"data": np.asfortranarray(data.astype(">f4")), b"labels": labels}, 4))
    pickles.append(_python2_deap_pickle(data, labels))
    return pickles


def _mutate(valid: bytes, rng: np.random.Generator, spared: tuple[int, int] = (0, 0)) -> bytes:
    """One mutation of ``valid``, anywhere but inside the ``spared`` byte range (bulk sample data)."""
    raw = bytearray(valid)
    kind = rng.integers(6)
    position = int(rng.integers(len(raw) - (spared[1] - spared[0])))
    position += (spared[1] - spared[0]) if position >= spared[0] else 0
    if kind == 0:  # flip a byte
        raw[position] = int(rng.integers(256))
    elif kind == 1:  # truncate
        del raw[position:]
    elif kind == 2:  # insert an opcode with a few argument bytes
        raw[position:position] = bytes(rng.integers(256, size=int(rng.integers(1, 10))).tolist())
    elif kind == 3:  # insert deep nesting: a chain of tuples, lists or marks
        unit = [b"\x85", b"2\x86", b"(", b"](", b"}(", b"\x94h\x00\x86"][int(rng.integers(6))]
        raw[position:position] = b")" + unit * int(rng.integers(10, 20_000))
    elif kind == 4:  # copy a slice of the pickle somewhere else (memo indices, repeated builders)
        start = int(rng.integers(len(raw)))
        raw[position:position] = raw[start : start + int(rng.integers(1, 64))]
    else:  # claim a huge length in a 4- or 8-byte length field
        raw[position : position + 8] = struct.pack("<Q", int(rng.integers(1, 2**63)))
    return bytes(raw)


def test_fuzzed_pickles_give_a_valid_read_or_a_named_refusal(tmp_path):
    rng = np.random.default_rng(20261130)
    valid = _valid_pickles()
    tracemalloc.start()  # numpy reports its array allocations to tracemalloc too
    outcomes = {"read": 0, "refused": 0}
    slowest = 0.0
    for case in range(3000):
        mutated = _mutate(valid[case % len(valid)], rng)
        start = time.perf_counter()
        try:
            arrays = load_array_dict(mutated)
        except PickleRefused as err:
            assert "\n" not in str(err) and str(err)
            outcomes["refused"] += 1
        else:
            assert all(isinstance(a, np.ndarray) and a.dtype.kind in "fiu" for a in arrays.values())
            assert sum(a.nbytes for a in arrays.values()) <= len(mutated)
            outcomes["read"] += 1
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 1.0
    assert outcomes["refused"] > 1500 and outcomes["read"] > 50, outcomes
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20  # bytes: no case allocated more than a few MB


def test_a_full_size_file_mutated_in_its_opcodes_is_read_or_refused(tmp_path):
    """The same at DEAP's size, mutating only the bytes outside the sample data."""
    rng = np.random.default_rng(3)
    data = rng.normal(size=(2, 40, N_SAMPLES))
    labels = rng.uniform(1, 9, size=(2, 4))
    whole = pickle.dumps({"data": data, "labels": labels}, protocol=4)
    sample_start = whole.index(data.tobytes()[:64])
    for _ in range(40):
        raw = bytearray(whole)
        position = int(rng.integers(sample_start))
        raw[position] = int(rng.integers(256))
        path = tmp_path / "s01.dat"
        path.write_bytes(bytes(raw))
        try:
            trials = read_deap_dat(path)
        except InputError as err:
            assert str(err).startswith(f"{path}: ")
        else:
            assert trials.signals.shape == (2, 32, N_SAMPLES)


def _deap_mat(compressed: bool) -> tuple[bytes, tuple[int, int]]:
    """A one-trial DEAP .mat file and the byte range of its (uncompressed) sample data."""
    data = np.random.default_rng(4).normal(0.0, 20.0, (1, 40, N_SAMPLES)).astype(np.float32)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"data": data, "labels": np.full((1, 4), 5.0)}, do_compression=compressed)
    raw = buffer.getvalue()
    if compressed:
        return raw, (0, 0)
    start = raw.index(data.transpose(2, 1, 0).tobytes()[:64])  # MATLAB order: first index fastest
    return raw, (start, start + data.nbytes)


def _small_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()


def test_fuzzed_mat_idx_and_jpeg_files_give_a_valid_read_or_a_named_refusal(tmp_path):
    """Each reader on 150 mutations of a valid file, in process: a valid read or its named
    refusal (an InputError; for a CelebA JPEG, one of the errors that skip the image), quickly
    and without allocating more than the file could hold."""
    from pipeline.sources.celeba import _DECODE_ERRORS

    rng = np.random.default_rng(20261201)
    idx = tmp_path / "valid-idx3-ubyte"
    write_idx(idx, rng.integers(0, 256, (3, 28, 28), dtype=np.uint8))

    def reads(reader, path: Path):
        return lambda raw: reader(_written(path, raw))

    read_mat = reads(read_deap_mat, tmp_path / "s01.mat")
    cases = {
        "mat": (_deap_mat(compressed=False), read_mat, InputError),
        "compressed mat": (_deap_mat(compressed=True), read_mat, InputError),
        "idx": ((idx.read_bytes(), (0, 0)), reads(read_idx, tmp_path / "t-idx3-ubyte"), InputError),
        "gzip idx": (
            (gzip.compress(idx.read_bytes()), (0, 0)),
            reads(read_idx, tmp_path / "t-idx3-ubyte.gz"),
            InputError,
        ),
        "jpeg": ((_small_jpeg(), (0, 0)), decode_face, _DECODE_ERRORS),
    }
    tracemalloc.start()
    for name, ((valid, spared), read, refusal) in cases.items():
        outcomes = {"read": 0, "refused": 0}
        slowest = 0.0
        for _ in range(150):
            mutated = _mutate(valid, rng, spared)
            start = time.perf_counter()
            try:
                read(mutated)
                outcomes["read"] += 1
            except refusal as err:
                assert "\n" not in str(err) and str(err), (name, err)
                outcomes["refused"] += 1
            slowest = max(slowest, time.perf_counter() - start)
        assert slowest < 5.0, (name, slowest)  # a hang would last for ever; reads take ~0.1 s
        assert outcomes["refused"] >= 30, (name, outcomes)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 * 2**20  # bytes: a few copies of a 1.3 MB file; a claimed 4 GB tag was allocated


def _written(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


# -- decompression bombs in the other readers ---------------------------------------------------


def test_a_gzip_idx_file_claiming_far_more_than_it_holds_is_refused_before_inflating(tmp_path):
    # Header: unsigned bytes, 3 dims, (100000, 1000, 1000): 100 GB declared; 1 MB of zeros follows.
    payload = b"\x00\x00\x08\x03" + struct.pack(">3I", 100_000, 1000, 1000) + b"\x00" * 2**20
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(payload, mtime=0))
    tracemalloc.start()
    with pytest.raises(InputError, match=r"declares 100000000000 data bytes .* gzip file cannot hold"):
        read_idx(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20  # the 1 MB of zeros was never inflated


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 60, 30)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_jpeg_claiming_far_more_pixels_than_it_holds_is_refused_before_decoding():
    bomb = _jpeg_claiming(20_000, 8_000)  # 160 M pixels (480 MB of RGB), under PIL's own bomb limit
    with pytest.raises(ValueError, match=rf"claims 20000x8000 pixels, more than a {len(bomb)}-byte JPEG"):
        decode_face(bomb)
    assert decode_face(_jpeg_claiming(16, 16)).shape == (3, 64, 64)


def _mat_bomb(n_rows: int, n_cols: int) -> bytes:
    """A MAT v5 file whose one compressed variable, ``data``, inflates to n_rows x n_cols zeros."""
    small = io.BytesIO()
    scipy.io.savemat(small, {"data": np.zeros((1, 1))}, do_compression=False)
    header, element = small.getvalue()[:128], bytearray(small.getvalue()[128:])
    dims = element.index(struct.pack("<IIii", 5, 8, 1, 1))
    element[dims + 8 : dims + 16] = struct.pack("<ii", n_rows, n_cols)
    real_part = element.index(struct.pack("<II", 9, 8))
    n_bytes = n_rows * n_cols * 8
    body = bytes(element[8:real_part]) + struct.pack("<II", 9, n_bytes)
    compress = zlib.compressobj(1)
    chunks = [compress.compress(struct.pack("<II", 14, len(body) + n_bytes) + body)]
    zeros = bytes(1 << 24)
    chunks += [compress.compress(zeros) for _ in range(n_bytes // len(zeros))]
    stream = b"".join(chunks) + compress.flush()
    return header + struct.pack("<II", 15, len(stream)) + stream


def test_a_mat_element_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    raw = bytearray(_deap_mat(compressed=False)[0])
    (first_size,) = struct.unpack_from("<I", raw, 132)
    second = 128 + 8 + first_size + (-first_size % 8)  # the 'labels' variable
    raw[second + 4 : second + 8] = struct.pack("<I", 0xFFFFFFF0)  # scipy allocated this before reading
    path = tmp_path / "s01.mat"
    path.write_bytes(bytes(raw))
    tracemalloc.start()
    with pytest.raises(InputError, match=rf"the MAT element at byte {second} claims 4294967280 bytes; its"):
        read_deap_mat(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20


def test_a_mat_file_that_inflates_beyond_the_memory_bound_fails_alone(tmp_path, monkeypatch):
    bomb = tmp_path / "s01.mat"
    bomb.write_bytes(_mat_bomb(1024, 32 * 1024))  # 1.5 MB inflating to 268 MB
    monkeypatch.setenv("EEGMI_READ_MEMORY_LIMIT_MB", "150")
    with pytest.raises(
        InputError, match=r"reading needed more than 150 MB of memory and was stopped"
    ) as caught:
        read_source_file(bomb, isolate=True)
    assert caught.value.where == str(bomb)

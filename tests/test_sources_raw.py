"""Reading users' own recordings (BDF, EDF, FIF, BrainVision + labels sidecar) into DEAP-shaped Trials.

The recordings are written here with MNE and carry known signals: a spatially smooth field
(linear in the electrode direction, so spherical splines can recover a dropped channel), a 10-Hz
sine only in Oz, a 40-Hz sine only in C4 and a 17-Hz burst in Fp2 starting exactly 3 s after
each trial onset. Channel order is shuffled and names are mangled, so a reader that went by
position or by exact spelling would put these signals in the wrong rows.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import mne
import numpy as np
import pytest
import scipy.io
import yaml

from pipeline.errors import InputError
from pipeline.sources.labels import MISSING_LABEL_FILL, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, read_labels_csv
from pipeline.sources.raw import (
    CHANNEL_ALIASES,
    MAX_INTERPOLATED_CHANNELS,
    MIN_SFREQ,
    MONTAGE,
    PASSBAND_HZ,
    RECORDING_READERS,
    TRANSITION_HZ,
    default_labels_path,
    match_deap_channels,
    read_recording,
    read_recording_with_info,
    recording_suffix,
)
from pipeline.sources.trials import (
    BASELINE_SECONDS,
    DEAP_CHANNELS,
    LABEL_NAMES,
    LABEL_RANGE,
    N_SAMPLES,
    SFREQ,
    file_sha256,
)

RECORDING_SECONDS = 129.0
TRIAL_ONSETS_S = (1.0, 64.5)
LABELS = np.array([[7.0, 2.5, 6.0, 8.0], [3.0, 8.5, 4.0, 1.5]])
FIELD_VOLTS = 4e-6
FIELD_RHYTHMS = ((6.0, 0.3), (11.0, 1.1), (23.0, 2.0))  # (Hz, phase), one per direction x, y, z
OZ_HZ, OZ_VOLTS = 10.0, 20e-6
C4_HZ, C4_VOLTS = 40.0, 15e-6
BURST_CHANNEL, BURST_HZ, BURST_VOLTS = "Fp2", 17.0, 200e-6
# Outside the 4-45 Hz pass band: mains in O1 and a slow drift in P4, both to be filtered out.
STOPBAND_SINES = {"O1": (50.0, 30e-6), "P4": (1.0, 30e-6)}
NOISE_VOLTS = 0.2e-6
ROW = {name: index for index, name in enumerate(DEAP_CHANNELS)}
BURST_START = 3 * int(SFREQ)  # the trial proper begins after the 3-s baseline
EDF_NAMES = {
    "T7": "T3", "T8": "EEG T4-REF", "P7": "T5.", "P8": "t6", "Fp1": "EEG Fp1", "Cz": "Cz-Ref", "Oz": "OZ.",
}  # fmt: skip
EDF_DROPPED = ("FC5", "P3")


def _clean_signals(sfreq: float) -> np.ndarray:
    """The planted signals of the 32 DEAP channels, in volts, ``DEAP_CHANNELS`` order."""
    times = np.arange(int(RECORDING_SECONDS * sfreq)) / sfreq
    positions = mne.channels.make_standard_montage("biosemi32").get_positions()["ch_pos"]
    directions = np.array([positions[name] / np.linalg.norm(positions[name]) for name in DEAP_CHANNELS])
    rhythms = np.stack([np.sin(2 * np.pi * hz * times + phase) for hz, phase in FIELD_RHYTHMS])
    signals = FIELD_VOLTS * directions @ rhythms
    signals[ROW["Oz"]] += OZ_VOLTS * np.sin(2 * np.pi * OZ_HZ * times)
    signals[ROW["C4"]] += C4_VOLTS * np.sin(2 * np.pi * C4_HZ * times)
    for name, (hz, volts) in STOPBAND_SINES.items():
        signals[ROW[name]] += volts * np.sin(2 * np.pi * hz * times)
    for onset in TRIAL_ONSETS_S:
        burst_start = onset + 3.0
        in_burst = (times >= burst_start) & (times < burst_start + 1.0)
        signals[ROW[BURST_CHANNEL], in_burst] += BURST_VOLTS * np.sin(
            2 * np.pi * BURST_HZ * (times[in_burst] - burst_start)
        )
    return signals


def _recording(sfreq: float, names: dict[str, str], drop: tuple[str, ...], seed: int) -> mne.io.RawArray:
    """DEAP channels (renamed, some dropped) plus extra channels, in a shuffled order."""
    rng = np.random.default_rng(seed)
    clean = _clean_signals(sfreq)
    n_times = clean.shape[1]
    channels = [
        (names.get(name, name), "eeg", clean[row] + rng.normal(0, NOISE_VOLTS, n_times))
        for row, name in enumerate(DEAP_CHANNELS)
        if name not in drop
    ]
    status = np.zeros(n_times)
    status[[int(onset * sfreq) for onset in TRIAL_ONSETS_S]] = 1.0
    channels += [
        ("EXG1", "eeg", rng.normal(0, 50e-6, n_times)),
        ("ECG", "ecg", 1e-3 * np.sin(2 * np.pi * 1.2 * np.arange(n_times) / sfreq) ** 21),
        ("Status", "stim", status),
    ]
    order = rng.permutation(len(channels))
    info = mne.create_info([channels[i][0] for i in order], sfreq, [channels[i][1] for i in order])
    return mne.io.RawArray(np.array([channels[i][2] for i in order]), info, verbose=False)


def _write_labels(path: Path, columns: tuple[str, ...], rows: list[list[object]]) -> Path:
    path.write_text(
        "\n".join([",".join(columns)] + [",".join(str(value) for value in row) for row in rows]) + "\n"
    )
    return path


def _full_label_rows() -> list[list[object]]:
    # Columns in a different order from LABEL_NAMES: the reader must go by header name.
    return [[a, onset, liking, v, d] for onset, (v, a, d, liking) in zip(TRIAL_ONSETS_S, LABELS, strict=True)]


FULL_COLUMNS = ("arousal", "onset", "liking", "valence", "dominance")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recordings")
    rng = np.random.default_rng(7)
    mixed_case = {name: (name.upper() if rng.random() < 0.5 else name.lower()) for name in DEAP_CHANNELS}
    bdf_raw = _recording(512.0, mixed_case, drop=(), seed=1)
    paths = {
        "bdf": folder / "s03_film.bdf",
        "fif": folder / "sub-07_task-film_eeg.fif",
        "edf": folder / "recording.edf",
    }
    mne.export.export_raw(paths["bdf"], bdf_raw, fmt="bdf", verbose=False)
    bdf_raw.save(paths["fif"], verbose=False)
    for key in ("bdf", "fif"):
        _write_labels(default_labels_path(paths[key]), FULL_COLUMNS, _full_label_rows())
    edf_raw = _recording(256.0, EDF_NAMES, drop=EDF_DROPPED, seed=2)
    mne.export.export_raw(paths["edf"], edf_raw, fmt="edf", verbose=False)
    _write_labels(
        default_labels_path(paths["edf"]),
        REQUIRED_COLUMNS,
        [[onset, v, a] for onset, (v, a, _, _) in zip(TRIAL_ONSETS_S, LABELS, strict=True)],
    )
    return paths


@pytest.fixture(scope="module")
def bdf_read(recordings):
    return read_recording_with_info(recordings["bdf"])


@pytest.fixture(scope="module")
def edf_interpolated(recordings):
    with pytest.warns(UserWarning, match="interpolated missing DEAP channel"):
        return read_recording_with_info(recordings["edf"], interpolate_missing=True)


def _amplitude_at(signals: np.ndarray, hz: float) -> np.ndarray:
    """Sine amplitude at ``hz`` in each row of (..., channels, samples); the trial holds whole cycles."""
    spectrum = np.fft.rfft(signals, axis=-1)
    return 2 * np.abs(spectrum[..., round(hz * signals.shape[-1] / SFREQ)]) / signals.shape[-1]


def test_bdf_at_512_hz_gives_deap_shaped_trials_with_the_sidecar_labels(recordings, bdf_read):
    trials, info = bdf_read
    assert trials.signals.shape == (2, 32, N_SAMPLES)
    assert trials.signals.dtype == np.float32
    np.testing.assert_array_equal(trials.labels, LABELS.astype(np.float32))
    np.testing.assert_array_equal(trials.subject, [3, 3])
    np.testing.assert_array_equal(trials.trial, [0, 1])
    assert trials.kind == "raw"
    assert trials.source == str(recordings["bdf"])
    assert trials.source_sha256 == file_sha256(recordings["bdf"])
    assert info["original_sfreq"] == 512.0
    assert sorted(info["ignored_channels"]) == ["ECG", "EXG1", "Status"]
    assert info["interpolated_channels"] == [] and info["filled_labels"] == {}
    assert info["channel_map"]["Fp1"] in ("FP1", "fp1")


def test_planted_sines_land_in_their_deap_rows_in_microvolts(bdf_read):
    trials, _ = bdf_read
    oz_amplitude = _amplitude_at(trials.signals, OZ_HZ)
    c4_amplitude = _amplitude_at(trials.signals, C4_HZ)
    assert (oz_amplitude.argmax(axis=1) == ROW["Oz"]).all()
    assert (c4_amplitude.argmax(axis=1) == ROW["C4"]).all()
    # After the common average the sine keeps 31/32 of itself in its own row: µV, unit pass-band gain.
    np.testing.assert_allclose(oz_amplitude[:, ROW["Oz"]], OZ_VOLTS * 1e6 * 31 / 32, rtol=0.02)
    np.testing.assert_allclose(c4_amplitude[:, ROW["C4"]], C4_VOLTS * 1e6 * 31 / 32, rtol=0.02)
    np.testing.assert_allclose(trials.signals.mean(axis=1), 0.0, atol=1e-3)


def test_band_pass_removes_mains_and_drift(bdf_read):
    trials, _ = bdf_read
    for name, (hz, volts) in STOPBAND_SINES.items():
        assert _amplitude_at(trials.signals, hz)[:, ROW[name]].max() < 0.01 * volts * 1e6


def test_each_trial_is_cut_at_its_sidecar_onset(bdf_read):
    trials, _ = bdf_read
    half_burst_uv = BURST_VOLTS * 1e6 / 2
    burst_at_128_hz = np.abs(np.sin(2 * np.pi * BURST_HZ * np.arange(int(SFREQ)) / SFREQ))
    burst_samples_to_half = int(np.argmax(burst_at_128_hz > 0.5))
    for trial in trials.signals:
        burst_row = np.abs(trial[ROW[BURST_CHANNEL]])
        first_crossing = int(np.argmax(burst_row > half_burst_uv))
        assert first_crossing == BURST_START + burst_samples_to_half
        assert burst_row[: BURST_START - 10].max() < 0.25 * half_burst_uv  # the smooth field alone


def test_fif_from_raw_save_reads_like_the_bdf(recordings, bdf_read):
    trials = read_recording(recordings["fif"])
    np.testing.assert_array_equal(trials.subject, [7, 7])
    np.testing.assert_allclose(trials.signals, bdf_read[0].signals, atol=0.02)


def test_edf_aliases_and_prefixes_are_matched_and_missing_channels_listed(recordings):
    with pytest.raises(InputError) as caught:
        read_recording(recordings["edf"])
    message = str(caught.value)
    assert message.startswith(str(recordings["edf"]))
    assert "['FC5', 'P3']" in message

    raw = mne.io.read_raw_edf(recordings["edf"], verbose=False)
    matched, missing = match_deap_channels(raw.ch_names)
    assert missing == ["FC5", "P3"]
    assert {deap: matched[deap] for deap in EDF_NAMES} == EDF_NAMES


def test_interpolate_missing_fills_the_dropped_channels_from_their_neighbours(edf_interpolated, bdf_read):
    trials, info = edf_interpolated
    reference = bdf_read[0].signals
    assert trials.signals.shape == (2, 32, N_SAMPLES)
    assert info["interpolated_channels"] == ["FC5", "P3"]
    assert info["original_sfreq"] == 256.0
    assert info["filled_labels"] == {"dominance": MISSING_LABEL_FILL, "liking": MISSING_LABEL_FILL}
    np.testing.assert_array_equal(trials.labels[:, 2:], MISSING_LABEL_FILL)
    np.testing.assert_array_equal(trials.labels[:, :2], LABELS[:, :2])
    np.testing.assert_array_equal(trials.subject, [0, 0])
    for name in EDF_DROPPED:
        row = ROW[name]
        assert np.corrcoef(trials.signals[0, row], reference[0, row])[0, 1] > 0.9
    # Every channel of the 256-Hz EDF, aliased or not, resembles its own row of the 512-Hz BDF most.
    correlation = np.corrcoef(trials.signals[1], reference[1])[:32, 32:]
    np.testing.assert_array_equal(correlation.argmax(axis=1), np.arange(32))


def _write_brainvision(header: Path, raw: mne.io.RawArray) -> None:
    """A minimal BrainVision triplet (.vhdr/.vmrk/.eeg, float32 multiplexed in µV)."""
    data_file, marker_file = header.with_suffix(".eeg"), header.with_suffix(".vmrk")
    (raw.get_data().T * 1e6).astype("<f4").tofile(data_file)
    channel_lines = "\n".join(f"Ch{i + 1}={name},,1,µV" for i, name in enumerate(raw.ch_names))
    header.write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={data_file.name}\nMarkerFile={marker_file.name}\nDataFormat=BINARY\n"
        f"DataOrientation=MULTIPLEXED\nNumberOfChannels={len(raw.ch_names)}\n"
        f"SamplingInterval={1e6 / raw.info['sfreq']}\n\n[Binary Infos]\nBinaryFormat=IEEE_FLOAT_32\n\n"
        f"[Channel Infos]\n{channel_lines}\n",
        encoding="utf-8",
    )
    marker_file.write_text(
        "Brain Vision Data Exchange Marker File, Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={data_file.name}\n\n[Marker Infos]\nMk1=New Segment,,1,1,0\n",
        encoding="utf-8",
    )


def test_brainvision_hashes_header_and_data_file(tmp_path):
    header = tmp_path / "sub-11_task-film_eeg.vhdr"
    raw = _recording(256.0, {}, drop=(), seed=3)
    _write_brainvision(header, raw.copy().pick(["eeg", "ecg"]))
    _write_labels(default_labels_path(header), FULL_COLUMNS, _full_label_rows())
    trials, info = read_recording_with_info(header)
    expected = hashlib.sha256(header.read_bytes() + header.with_suffix(".eeg").read_bytes()).hexdigest()
    assert trials.source_sha256 == expected
    assert info["hashed_files"] == [str(header), str(header.with_suffix(".eeg"))]
    np.testing.assert_array_equal(trials.subject, [11, 11])
    assert (_amplitude_at(trials.signals, OZ_HZ).argmax(axis=1) == ROW["Oz"]).all()


@pytest.mark.parametrize("field", ["DataFile", "MarkerFile"])
def test_a_header_pointing_outside_the_recordings_folder_is_refused(tmp_path, field):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "inbox" / "sub-12"
    folder.mkdir(parents=True)
    header = folder / "sub-12_eeg.vhdr"
    raw = _recording(256.0, {}, drop=(), seed=4)
    _write_brainvision(header, raw.copy().pick(["eeg", "ecg"]))
    _write_labels(default_labels_path(header), FULL_COLUMNS, _full_label_rows())
    # The referenced file is moved away, two folders up, and the header follows it there.
    original = header.with_suffix(".eeg" if field == "DataFile" else ".vmrk")
    moved = elsewhere / original.name
    original.rename(moved)
    pointer = f"../../../elsewhere/{moved.name}"
    header.write_text(header.read_text().replace(f"{field}={original.name}", f"{field}={pointer}"))
    with pytest.raises(InputError, match=rf"its header refers to {re.escape(pointer)}, outside") as caught:
        read_recording(header)
    assert caught.value.where == str(header)


def _write_eeglab(set_path: Path, raw: mne.io.BaseRaw, data_file: str) -> Path:
    """A minimal EEGLAB recording: a MAT-file header naming its float32 data file (µV, channels
    fastest) as ``data_file``, a path relative to the header's folder. Returns that data file."""
    data_path = set_path.parent / data_file
    data_path.parent.mkdir(parents=True, exist_ok=True)
    (raw.get_data() * 1e6).T.astype("<f4").tofile(data_path)
    chanlocs = np.array([(name,) for name in raw.ch_names], dtype=[("labels", "O")])
    header = {
        "nbchan": len(raw.ch_names), "trials": 1, "pnts": raw.n_times, "srate": raw.info["sfreq"],
        "xmin": 0.0, "data": data_file, "chanlocs": chanlocs, "event": np.array([]),
    }  # fmt: skip
    scipy.io.savemat(set_path, {"EEG": header}, appendmat=False)
    return data_path


def test_an_eeglab_set_whose_data_file_lies_outside_its_folder_fails_alone(prefect_harness, tmp_path):
    from flows.ingest import store_recordings

    folder = tmp_path / "inbox"
    raw = _recording(256.0, {}, drop=(), seed=5).pick("eeg")
    good = folder / "sub-13_eeg.set"
    _write_eeglab(good, raw, "sub-13_eeg.fdt")
    hostile = folder / "sub-14_eeg.set"
    pointer = "../elsewhere/sub-14_eeg.fdt"
    _write_eeglab(hostile, raw, pointer)
    for header in (good, hostile):
        _write_labels(default_labels_path(header), FULL_COLUMNS, _full_label_rows())
    assert (
        mne.io.read_raw_eeglab(hostile, verbose=False).filenames[0].resolve().parent == tmp_path / "elsewhere"
    )

    with pytest.raises(InputError, match=rf"its header refers to .*{re.escape(pointer)}, outside") as caught:
        read_recording(hostile)
    assert caught.value.where == str(hostile)
    result = store_recordings(recordings=[str(good), str(hostile)], out_dir=str(tmp_path / "run"))
    assert result["stored"][str(good)]["n_trials"] == 2
    assert list(result["failures"]) == [str(hostile)]
    assert "outside the recording's folder" in result["failures"][str(hostile)]


@pytest.mark.parametrize(
    ("columns", "rows", "expected"),
    [
        (("onset", "valence"), [[1.0, 5.0], [64.5, 5.0]], "header lacks column(s) ['arousal']"),
        (REQUIRED_COLUMNS, [[1.0, 5.0, 5.0], [64.5, 12, 5.0]], "line 3 (trial 1): valence = 12"),
        (REQUIRED_COLUMNS, [[1.0, 5.0, 5.0], [70.0, 5.0, 5.0]], "line 3 (trial 1): the trial"),
        (REQUIRED_COLUMNS, [[64.5, 5.0, 5.0], [1.0, 5.0, 5.0]], "line 3 (trial 1): onset 1 s is not"),
        (REQUIRED_COLUMNS, [[1.0, "high", 5.0]], "line 2 (trial 0): valence = 'high' is not"),
        ((*REQUIRED_COLUMNS, "valance"), [[1.0, 5.0, 5.0, 5.0]], "unexpected column(s) ['valance']"),
    ],
)
def test_bad_sidecar_is_refused_naming_the_csv_and_line(recordings, tmp_path, columns, rows, expected):
    labels = _write_labels(tmp_path / "labels.csv", columns, rows)
    with pytest.raises(InputError) as caught:
        read_recording(recordings["bdf"], labels_path=labels)
    assert str(caught.value).startswith(f"{labels}: ")
    assert expected in str(caught.value)


def test_missing_sidecar_names_where_it_was_expected(tmp_path, recordings):
    lonely = tmp_path / "s05.edf"
    lonely.write_bytes(recordings["edf"].read_bytes())
    with pytest.raises(InputError, match="labels sidecar not found") as caught:
        read_recording(lonely)
    assert caught.value.where == str(tmp_path / "s05_labels.csv")


def test_labels_csv_tolerates_spaces_case_and_blank_lines(tmp_path):
    labels = tmp_path / "x_labels.csv"
    labels.write_text(" Onset , VALENCE,arousal,Liking\n\n2.5, 1, 9, 4.5\n70,3,4,5\n\n")
    table = read_labels_csv(labels, recording_seconds=133.0)
    np.testing.assert_array_equal(table.onsets, [2.5, 70.0])
    np.testing.assert_array_equal(
        table.labels, [[1, 9, MISSING_LABEL_FILL, 4.5], [3, 4, MISSING_LABEL_FILL, 5]]
    )
    assert table.filled == ("dominance",)
    with pytest.raises(InputError, match="ends after the recording"):
        read_labels_csv(labels, recording_seconds=132.9)


def test_channel_matching_prefers_exact_names_and_refuses_ambiguity():
    names = [*(name.upper() for name in DEAP_CHANNELS), "T3", "EEG Fpz"]
    matched, missing = match_deap_channels(names)
    assert missing == [] and matched["T7"] == "T7" and matched["Fp1"] == "FP1"
    with pytest.raises(InputError, match=r"channels \['Fp1', 'FP1\.'\] all name DEAP channel Fp1"):
        match_deap_channels(["Fp1", "FP1."], where="rec.edf")


@pytest.mark.parametrize(
    ("name", "suffix", "labels_name"),
    [("s01.BDF", ".bdf", "s01_labels.csv"), ("sub-02_eeg.fif.gz", ".fif.gz", "sub-02_eeg_labels.csv")],
)
def test_sidecar_name_follows_the_recording_stem(name, suffix, labels_name):
    assert recording_suffix(name) == suffix
    assert default_labels_path(Path("/data") / name) == Path("/data") / labels_name


def test_unknown_format_and_too_low_a_rate_are_refused(tmp_path):
    text = tmp_path / "s01.txt"
    text.write_text("not EEG")
    with pytest.raises(InputError, match="unknown recording format"):
        read_recording(text)
    slow = tmp_path / "s01.edf"
    names = list(DEAP_CHANNELS)
    raw = mne.io.RawArray(
        np.random.default_rng(0).normal(0, 1e-5, (32, 64 * 70)), mne.create_info(names, 64.0, "eeg")
    )
    mne.export.export_raw(slow, raw, verbose=False)
    with pytest.raises(InputError, match=r"sampled at 64 Hz.*needs at least 100 Hz"):
        read_recording(slow)


def test_manifest_describes_what_the_reader_does():
    manifest_path = Path(__file__).resolve().parents[1] / "data_manifests" / "recordings.yaml"
    manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    assert list(manifest["formats"]) == list(RECORDING_READERS)
    sidecar = manifest["labels_sidecar"]
    assert tuple(sidecar["required_columns"]) == REQUIRED_COLUMNS
    assert tuple(sidecar["optional_columns"]) == OPTIONAL_COLUMNS
    assert sidecar["missing_optional_fill"] == MISSING_LABEL_FILL
    assert tuple(manifest["channels"]) == DEAP_CHANNELS
    assert tuple(manifest["label_columns"]) == LABEL_NAMES
    assert tuple(manifest["label_range"]) == LABEL_RANGE
    assert manifest["channel_matching"]["aliases"] == CHANNEL_ALIASES
    assert (manifest["sampling_rate_hz"], manifest["baseline_seconds"]) == (SFREQ, BASELINE_SECONDS)
    parameters = manifest["parameters"]
    assert tuple(parameters["passband_hz"]) == PASSBAND_HZ
    assert tuple(parameters["transition_hz"]) == TRANSITION_HZ
    assert parameters["min_sfreq_hz"] == MIN_SFREQ
    assert parameters["n_samples"] == N_SAMPLES
    assert parameters["montage"] == MONTAGE
    assert parameters["max_interpolated_channels"] == MAX_INTERPOLATED_CHANNELS

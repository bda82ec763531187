"""Reader for users' own EEG recordings: any MNE-readable file plus a labels sidecar -> :class:`Trials`.

A recording becomes the same DEAP-shaped trials as DEAP's preprocessed files, so every later
stage treats it alike. What the reader accepts and does (also in ``data_manifests/recordings.yaml``):

Formats
    ``.bdf`` (BioSemi), ``.edf``, ``.fif`` / ``.fif.gz`` (MNE), ``.set`` (EEGLAB, data embedded or
    in a ``.fdt`` beside it) and ``.vhdr`` (BrainVision, with its ``.eeg`` and ``.vmrk``), read
    with MNE's format reader. Only the channels used are loaded into memory.

Labels sidecar
    ``<recording stem>_labels.csv`` beside the recording (``s01.bdf`` -> ``s01_labels.csv``,
    ``sub-01_eeg.fif.gz`` -> ``sub-01_eeg_labels.csv``), or any file given as ``labels_path``:
    each trial's onset and scores, read and checked by :mod:`pipeline.sources.labels`. The info
    of :func:`read_recording_with_info` lists the label columns it filled.

Channels
    The 32 DEAP channels are found by name, never by position: case is ignored, as are an
    ``EEG`` prefix (``"EEG Fp1"``), a reference suffix (``"Fp1-REF"``, ``"Fp1-Ref"``) and EDF's
    trailing dots (``"Fp1."``); the old 10-20 names T3, T4, T5, T6 stand for T7, T8, P7, P8 when
    the new name is absent. Other channels (EXG, Status, ECG, ...) are ignored. A DEAP channel
    that is absent, or that the file marks bad, is missing: an :class:`InputError` lists the
    missing ones, unless ``interpolate_missing=True``, which fills up to
    :data:`MAX_INTERPOLATED_CHANNELS` of them by spherical-spline interpolation over the other
    channels at their biosemi32 montage positions, warns, and lists them in the info.

Processing (to match DEAP's ``data_preprocessed`` files)
    1. keep the matched channels (renamed to DEAP names, typed EEG);
    2. band-pass 4-45 Hz at the recording's own rate (MNE's zero-phase FIR, ``firwin`` design,
       transition bands 2-4 Hz and 45-50 Hz, so 50-Hz mains lies in the stop band); filtering
       before resampling means the signal is already band-limited far below the new Nyquist
       frequency (64 Hz) and no filter runs on a coarser grid;
    3. resample to 128 Hz (MNE's FFT resampling, any rate ratio); the recording must be sampled
       at :data:`MIN_SFREQ` (100 Hz) or more, so the stop band fits under its Nyquist frequency;
    4. interpolate missing channels, if asked;
    5. common average reference over the 32 DEAP channels, in :data:`DEAP_CHANNELS` order;
    6. cut each trial's 8064 samples (3-s baseline + 60-s trial) from its onset, rounded to the
       nearest 128-Hz sample;
    7. convert MNE's volts to microvolts (x 1e6), DEAP's unit.

    DEAP itself down-sampled before filtering; filtering first at the original rate differs
    from that only in the roll-off near the band edges. DEAP also removed EOG artefacts, which
    this reader does not: clean them beforehand (e.g. with ICA in MNE) if the recording has
    many. Amplitudes are only as right as the file's declared units (MNE converts them to volts).

Provenance
    Subject id: the ``subject`` argument, else the number in a ``sub-XX`` / ``subXX`` / ``sXX``
    part of the file name (``sub-07_task-film_eeg.bdf`` -> 7, ``s12.edf`` -> 12), else 0. Trial
    id: the sidecar row (0, 1, ...). Kind ``"raw"``; ``source`` is the recording's path;
    ``source_sha256`` is the SHA-256 of the recording file, or, for formats whose data live in
    further files (BrainVision ``.eeg``, EEGLAB ``.fdt``, split FIF), of the bytes of the header
    file followed by each data file in MNE's order. The sidecar is not part of that digest; its
    own SHA-256 is in the info.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mne
import numpy as np

from pipeline.errors import InputError
from pipeline.sources.labels import MISSING_LABEL_FILL, read_labels_csv
from pipeline.sources.trials import DEAP_CHANNELS, N_SAMPLES, SFREQ, Trials, file_sha256

RECORDING_READERS: dict[str, Callable[..., mne.io.BaseRaw]] = {
    ".bdf": mne.io.read_raw_bdf,
    ".edf": mne.io.read_raw_edf,
    ".fif": mne.io.read_raw_fif,
    ".fif.gz": mne.io.read_raw_fif,
    ".set": mne.io.read_raw_eeglab,
    ".vhdr": mne.io.read_raw_brainvision,
}
LABELS_SUFFIX = "_labels.csv"
_MAX_HEADER_BYTES = 1 << 20  # a BrainVision header is a few kB
CHANNEL_ALIASES: dict[str, str] = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
PASSBAND_HZ = (4.0, 45.0)
# Transition widths (Hz): 2 below 4 Hz (MNE's default there); 5 above 45 Hz, so the stop band
# begins at 50 Hz and European mains is removed (MNE's default would reach 56.25 Hz).
TRANSITION_HZ = (2.0, 5.0)
MIN_SFREQ = 2 * (PASSBAND_HZ[1] + TRANSITION_HZ[1])  # the stop band must fit under Nyquist
MONTAGE = "biosemi32"
MAX_INTERPOLATED_CHANNELS = 8  # a quarter of the montage; beyond that the splines guess more than they see
VOLTS_TO_MICROVOLTS = 1e6

_EEG_PREFIX = re.compile(r"^eeg[\s:_-]+", re.IGNORECASE)
_REFERENCE_SUFFIX = re.compile(r"[\s_-]ref$", re.IGNORECASE)
_SUBJECT_IN_NAME = re.compile(r"(?:^|[^a-z0-9])(?:sub-?|s)(\d+)(?![0-9])", re.IGNORECASE)


def recording_suffix(path: str | os.PathLike) -> str:
    """The recognised format suffix of a recording's name (``".bdf"``, ``".fif.gz"``, ...).

    Raises
    ------
    InputError
        Naming the file when its suffix is none of :data:`RECORDING_READERS`.
    """
    name = Path(path).name.lower()
    # The longest suffix first, so "x.fif.gz" is not taken for a ".gz" file.
    for suffix in sorted(RECORDING_READERS, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise InputError(
        path, f"unknown recording format; expected a name ending in one of {list(RECORDING_READERS)}"
    )


def default_labels_path(path: str | os.PathLike) -> Path:
    """Where a recording's labels sidecar is looked for: ``<recording stem>_labels.csv`` beside it."""
    path = Path(path)
    stem = path.name[: -len(recording_suffix(path))]
    return path.with_name(stem + LABELS_SUFFIX)


def _canonical_channel_name(name: str) -> str:
    """A channel name reduced to its electrode, lower-cased: ``"EEG Fp1-REF"`` -> ``"fp1"``."""
    text = name.strip().rstrip(".").strip()
    text = _EEG_PREFIX.sub("", text)
    text = _REFERENCE_SUFFIX.sub("", text)
    return text.strip().rstrip(".").strip().lower()


def match_deap_channels(
    ch_names: Sequence[str], where: str | os.PathLike = "ch_names"
) -> tuple[dict[str, str], list[str]]:
    """Find each DEAP channel among a recording's channel names.

    Parameters
    ----------
    ch_names : sequence of str
        The recording's channel names, in any order, possibly with other channels.
    where : path-like or str
        What to name in an error (the recording's path).

    Returns
    -------
    matched : dict
        DEAP channel name -> the recording's channel name holding it, in ``DEAP_CHANNELS`` order.
    missing : list of str
        DEAP channels not found, in ``DEAP_CHANNELS`` order.

    Raises
    ------
    InputError
        When ``ch_names`` is not a sequence of strings, or when two channels of the recording
        claim the same DEAP channel at the same precedence (e.g. ``"Fp1"`` and ``"FP1."``).
        An exact (normalised) name takes precedence over an old 10-20 alias.
    """
    if isinstance(ch_names, str) or not isinstance(ch_names, Sequence):
        raise InputError(where, f"channel names must be a sequence of strings, got {type(ch_names).__name__}")
    if not all(isinstance(name, str) for name in ch_names):
        raise InputError(where, "channel names must be a sequence of strings")
    by_lower = {name.lower(): name for name in DEAP_CHANNELS}
    aliases = {old.lower(): new for old, new in CHANNEL_ALIASES.items()}
    exact: dict[str, list[str]] = {}
    aliased: dict[str, list[str]] = {}
    for original in ch_names:
        canonical = _canonical_channel_name(original)
        if canonical in by_lower:
            exact.setdefault(by_lower[canonical], []).append(original)
        elif canonical in aliases:
            aliased.setdefault(aliases[canonical], []).append(original)
    matched: dict[str, str] = {}
    missing: list[str] = []
    for deap_name in DEAP_CHANNELS:
        candidates = exact.get(deap_name) or aliased.get(deap_name) or []
        if len(candidates) > 1:
            raise InputError(where, f"channels {candidates} all name DEAP channel {deap_name}; keep one")
        if candidates:
            matched[deap_name] = candidates[0]
        else:
            missing.append(deap_name)
    return matched, missing


def _subject_id(path: Path, subject: int | None) -> tuple[int, str]:
    if subject is not None:
        if isinstance(subject, bool) or not isinstance(subject, int | np.integer) or subject < 0:
            raise InputError(path, f"subject must be a non-negative integer, got {subject!r}")
        return int(subject), "argument"
    stem = path.name[: -len(recording_suffix(path))]
    match = _SUBJECT_IN_NAME.search(stem)
    if match is None:
        return 0, "default"
    return int(match.group(1)), "file name"


def _check_inside_folder(path: Path, referenced: list[str]) -> None:
    """Refuse a recording whose header points at files outside its own folder (``../x.eeg``,
    ``/etc/...``): such a file would be read, hashed and stored as if it were the recording."""
    folder = path.resolve().parent
    for name in referenced:
        target = (path.parent / name).resolve()
        if target.parent != folder and folder not in target.parents:
            raise InputError(
                path, f"its header refers to {name}, outside the recording's folder; put that file beside it"
            )


def _brainvision_references(path: Path) -> list[str]:
    """The DataFile and MarkerFile a BrainVision header names (read before MNE opens them)."""
    try:
        with path.open("rb") as handle:
            text = handle.read(_MAX_HEADER_BYTES).decode("latin-1")
    except OSError as err:
        raise InputError(path, f"cannot read the header ({err.strerror or err})") from None
    found = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() in ("datafile", "markerfile") and value.strip():
            found.append(value.strip())
    return found


def _open_recording(path: Path) -> mne.io.BaseRaw:
    reader = RECORDING_READERS[recording_suffix(path)]
    if recording_suffix(path) == ".vhdr":
        _check_inside_folder(path, _brainvision_references(path))
    try:
        # preload=False: only the channels kept are loaded later, so wide montages stay cheap.
        raw = reader(path, preload=False, verbose=False)
    except (
        ValueError,
        OSError,
        RuntimeError,
        KeyError,
        IndexError,
        TypeError,
        EOFError,
        NotImplementedError,
    ) as err:
        raise InputError(
            path, f"cannot read as a {recording_suffix(path)} recording ({type(err).__name__}: {err})"
        ) from None
    # Whatever else MNE followed (an EEGLAB .fdt, split FIF parts) must lie beside it too.
    _check_inside_folder(path, [str(name) for name in raw.filenames if name is not None])
    return raw


def _recording_sha256(path: Path, raw: mne.io.BaseRaw) -> tuple[str, list[str]]:
    """SHA-256 of the recording, over the header file then any separate data files."""
    parts, seen = [path], {path.resolve()}
    for name in raw.filenames:
        if name is not None and Path(name).resolve() not in seen:
            parts.append(Path(name))
            seen.add(Path(name).resolve())
    if len(parts) == 1:
        return file_sha256(path), [str(path)]
    digest = hashlib.sha256()
    for part in parts:
        with part.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest(), [str(part) for part in parts]


def _deap_signals(raw: mne.io.BaseRaw, matched: dict[str, str], missing: list[str]) -> np.ndarray:
    """The 32 DEAP channels at 128 Hz, band-passed, interpolated and average-referenced, in volts."""
    raw.pick(list(matched.values()))
    raw.load_data(verbose=False)
    raw.rename_channels({original: deap_name for deap_name, original in matched.items()}, verbose=False)
    non_eeg = {
        name: "eeg" for name, kind in zip(raw.ch_names, raw.get_channel_types(), strict=True) if kind != "eeg"
    }
    if non_eeg:
        raw.set_channel_types(non_eeg, verbose=False)
    raw.info["bads"] = []
    low, high = PASSBAND_HZ
    raw.filter(
        low,
        high,
        picks="eeg",
        method="fir",
        phase="zero",
        fir_design="firwin",
        l_trans_bandwidth=TRANSITION_HZ[0],
        h_trans_bandwidth=TRANSITION_HZ[1],
        verbose=False,
    )
    if raw.info["sfreq"] != SFREQ:
        raw.resample(SFREQ, verbose=False)
    if missing:
        placeholders = mne.io.RawArray(
            np.zeros((len(missing), raw.n_times)),
            mne.create_info(missing, SFREQ, "eeg"),
            first_samp=raw.first_samp,
            verbose=False,
        )
        raw.add_channels([placeholders], force_update_info=True)
        raw.set_montage(MONTAGE, on_missing="raise", verbose=False)
        raw.info["bads"] = list(missing)
        raw.interpolate_bads(reset_bads=True, method={"eeg": "spline"}, verbose=False)
    raw.reorder_channels(list(DEAP_CHANNELS))
    signals = raw.get_data()
    return signals - signals.mean(axis=0, keepdims=True)


def read_recording_with_info(
    path: str | os.PathLike,
    labels_path: str | os.PathLike | None = None,
    interpolate_missing: bool = False,
    subject: int | None = None,
) -> tuple[Trials, dict[str, Any]]:
    """Read a recording and its labels sidecar into DEAP-shaped trials, with what was done.

    Parameters
    ----------
    path : path-like
        The recording (``.bdf``, ``.edf``, ``.fif``, ``.fif.gz``, ``.set`` or ``.vhdr``).
    labels_path : path-like, optional
        The labels CSV; by default ``<recording stem>_labels.csv`` beside the recording.
    interpolate_missing : bool
        Interpolate up to :data:`MAX_INTERPOLATED_CHANNELS` missing DEAP channels instead of
        refusing the recording.
    subject : int, optional
        Subject id; by default the number in the file name (``sub-XX`` or ``sXX``), else 0.

    Returns
    -------
    trials : Trials
        (n_trials, 32, 8064) float32 in µV at 128 Hz, channels in ``DEAP_CHANNELS`` order,
        labels from the sidecar, kind ``"raw"``.
    info : dict
        ``channel_map`` (DEAP name -> recording channel), ``interpolated_channels``,
        ``ignored_channels`` (recording channels not used), ``filled_labels`` (column -> fill
        value), ``onsets_s``, ``original_sfreq``, ``hashed_files`` (the files behind
        ``source_sha256``), ``labels_path``, ``labels_sha256``, ``subject_from`` (``"argument"``,
        ``"file name"`` or ``"default"``).

    Raises
    ------
    InputError
        Naming the recording when it is missing, of an unknown format, unreadable, sampled at
        under :data:`MIN_SFREQ`, or lacks DEAP channels (listed) that may not be interpolated; naming the
        sidecar when it fails the checks of :func:`~pipeline.sources.labels.read_labels_csv`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            path, "recording file does not exist" if not path.exists() else "is not a regular file"
        )
    recording_suffix(path)
    if not isinstance(interpolate_missing, bool):
        raise InputError(path, f"interpolate_missing must be True or False, got {interpolate_missing!r}")
    subject_id, subject_from = _subject_id(path, subject)
    labels_path = Path(labels_path) if labels_path is not None else default_labels_path(path)

    raw = _open_recording(path)
    original_sfreq = float(raw.info["sfreq"])
    if original_sfreq < MIN_SFREQ:
        raise InputError(
            path,
            f"sampled at {original_sfreq:g} Hz; the band-pass, whose stop band begins at "
            f"{PASSBAND_HZ[1] + TRANSITION_HZ[1]:g} Hz, needs at least {MIN_SFREQ:g} Hz",
        )
    table = read_labels_csv(labels_path, recording_seconds=raw.n_times / original_sfreq)
    matched, missing = _channels_to_use(path, raw, interpolate_missing)

    source_sha256, hashed_files = _recording_sha256(path, raw)
    ignored = [name for name in raw.ch_names if name not in set(matched.values())]
    epochs = _cut_trials(_deap_signals(raw, matched, missing), table.onsets)
    n_trials = len(epochs)
    trials = Trials(
        signals=epochs,
        labels=table.labels,
        subject=np.full(n_trials, subject_id, dtype=np.int32),
        trial=np.arange(n_trials, dtype=np.int32),
        source=str(path),
        source_sha256=source_sha256,
        kind="raw",
    )
    info = {
        "channel_map": dict(matched),
        "interpolated_channels": list(missing),
        "ignored_channels": ignored,
        "filled_labels": {name: MISSING_LABEL_FILL for name in table.filled},
        "onsets_s": table.onsets.tolist(),
        "original_sfreq": original_sfreq,
        "hashed_files": hashed_files,
        "labels_path": str(labels_path),
        "labels_sha256": file_sha256(labels_path),
        "subject_from": subject_from,
    }
    return trials, info


def _channels_to_use(
    path: Path, raw: mne.io.BaseRaw, interpolate_missing: bool
) -> tuple[dict[str, str], list[str]]:
    """The recording's usable DEAP channels and the missing ones to interpolate, in DEAP order.

    A channel the file marks bad counts as missing. Missing channels are refused unless
    ``interpolate_missing`` allows them (at most :data:`MAX_INTERPOLATED_CHANNELS`, with a warning).
    """
    matched, missing = match_deap_channels(raw.ch_names, where=path)
    marked_bad = [deap_name for deap_name, original in matched.items() if original in raw.info["bads"]]
    for deap_name in marked_bad:
        del matched[deap_name]
    missing = [name for name in DEAP_CHANNELS if name in missing or name in marked_bad]
    if missing:
        detail = f" ({marked_bad} marked bad in the file)" if marked_bad else ""
        if not interpolate_missing:
            raise InputError(
                path,
                f"missing DEAP channel(s) {missing}{detail}; found channels {list(raw.ch_names)}. "
                f"Rename them, or pass interpolate_missing=True to interpolate up to "
                f"{MAX_INTERPOLATED_CHANNELS}",
            )
        if len(missing) > MAX_INTERPOLATED_CHANNELS:
            raise InputError(
                path,
                f"missing {len(missing)} DEAP channels {missing}{detail}; at most "
                f"{MAX_INTERPOLATED_CHANNELS} can be interpolated",
            )
        warnings.warn(
            f"{path}: interpolated missing DEAP channel(s) {missing} by spherical splines",
            UserWarning,
            stacklevel=3,
        )
    return matched, missing


def _cut_trials(signals: np.ndarray, onsets: np.ndarray) -> np.ndarray:
    """(n_trials, 32, 8064) float32 µV windows of ``signals`` (volts) from each onset (seconds)."""
    starts = np.rint(onsets * SFREQ).astype(np.int64)
    # Rounding can put the last window one sample past a recording that ends exactly with it.
    starts = np.minimum(starts, signals.shape[1] - N_SAMPLES)
    epochs = np.stack([signals[:, start : start + N_SAMPLES] for start in starts]) * VOLTS_TO_MICROVOLTS
    return epochs.astype(np.float32)


def read_recording(
    path: str | os.PathLike,
    labels_path: str | os.PathLike | None = None,
    interpolate_missing: bool = False,
    subject: int | None = None,
) -> Trials:
    """Read a recording and its labels sidecar into DEAP-shaped trials.

    The same as :func:`read_recording_with_info` without the info dict; interpolated channels
    are still announced by a ``UserWarning``.

    Returns
    -------
    Trials
        (n_trials, 32, 8064) float32 in µV at 128 Hz, channels in ``DEAP_CHANNELS`` order,
        kind ``"raw"``.
    """
    trials, _ = read_recording_with_info(
        path, labels_path, interpolate_missing=interpolate_missing, subject=subject
    )
    return trials

"""The labels sidecar of a recording: each trial's onset and self-assessment scores.

``<recording stem>_labels.csv`` beside the recording (see :func:`pipeline.sources.raw.default_labels_path`),
or any file given as ``labels_path``. Header ``onset,valence,arousal`` with optional
``dominance`` and ``liking`` (any order, case and surrounding spaces ignored, no other columns);
one row per trial. ``onset`` is the start of the trial's 3-s baseline, in seconds from the
recording's first sample (MNE's ``raw.times``); the 60-s stimulus follows it. Onsets rise
strictly, each trial's 63 s lie inside the recording, and every label is a number in [1, 9].
A missing ``dominance`` or ``liking`` column is filled with :data:`MISSING_LABEL_FILL` (5, the
middle of the 1-9 scale), and :class:`LabelTable` names the filled columns.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.sources.trials import LABEL_NAMES, LABEL_RANGE, N_SAMPLES, SFREQ

REQUIRED_COLUMNS: tuple[str, ...] = ("onset", "valence", "arousal")
OPTIONAL_COLUMNS: tuple[str, ...] = ("dominance", "liking")
MISSING_LABEL_FILL = 5.0  # the middle of the 1-9 self-assessment scale: "no information"
TRIAL_SECONDS = N_SAMPLES / SFREQ  # 63 s: the 3-s baseline and the 60-s trial


@dataclass(frozen=True)
class LabelTable:
    """The contents of a labels sidecar.

    Attributes
    ----------
    onsets : float64 array (n_trials,)
        Start of each trial's baseline, in seconds from the recording's first sample.
    labels : float32 array (n_trials, 4)
        Scores in ``LABEL_NAMES`` order.
    filled : tuple of str
        Label columns absent from the file and set to :data:`MISSING_LABEL_FILL`.
    """

    onsets: np.ndarray
    labels: np.ndarray
    filled: tuple[str, ...]


def read_labels_csv(path: str | os.PathLike, recording_seconds: float | None = None) -> LabelTable:
    """Read and check a labels sidecar (see the module docstring for its format).

    Parameters
    ----------
    path : path-like
        The CSV file.
    recording_seconds : float, optional
        Length of the recording; when given, every trial's 63 s must end inside it.

    Returns
    -------
    LabelTable
        Onsets, labels in ``LABEL_NAMES`` order and the names of the filled columns.

    Raises
    ------
    InputError
        Naming the CSV, and the line and trial where one is at fault, when the file is missing
        or unreadable, the header lacks a required column or has an unknown or repeated one, a
        row has the wrong number of values, a value is not a finite number, a label is outside
        [1, 9], an onset is negative or not above the one before, a trial ends after the
        recording, or there are no rows.
    """
    where = Path(path)
    if recording_seconds is not None and not (
        isinstance(recording_seconds, int | float)
        and math.isfinite(recording_seconds)
        and recording_seconds > 0
    ):
        raise InputError(where, f"recording_seconds must be a positive number, got {recording_seconds!r}")
    rows = _non_blank_rows(where)
    columns = _read_header(where, rows[0][1])
    if len(rows) == 1:
        raise InputError(where, "holds a header but no trials")
    onsets: list[float] = []
    labels: list[list[float]] = []
    for trial, (line, row) in enumerate(rows[1:]):
        values = _row_values(where, line, trial, columns, row)
        _check_onset(where, line, trial, values["onset"], onsets[-1] if onsets else None, recording_seconds)
        _check_label_range(where, line, trial, values)
        onsets.append(values["onset"])
        labels.append([values.get(name, MISSING_LABEL_FILL) for name in LABEL_NAMES])
    filled = tuple(name for name in LABEL_NAMES if name not in columns)
    return LabelTable(np.asarray(onsets, dtype=np.float64), np.asarray(labels, dtype=np.float32), filled)


def _non_blank_rows(where: Path) -> list[tuple[int, list[str]]]:
    """The sidecar's rows that hold anything, each with the line it starts on; at least one."""
    if not where.is_file():
        raise InputError(
            where,
            f"labels sidecar not found; expected a CSV with header {','.join(REQUIRED_COLUMNS)}"
            f"[,{','.join(OPTIONAL_COLUMNS)}] and one row per trial",
        )
    try:
        with where.open(newline="", encoding="utf-8-sig") as handle:
            rows = [
                (line, row) for line, row in _numbered_rows(csv.reader(handle)) if any(c.strip() for c in row)
            ]
    except (UnicodeDecodeError, csv.Error, OSError) as err:
        raise InputError(where, f"cannot read as a UTF-8 CSV file ({type(err).__name__}: {err})") from None
    if not rows:
        raise InputError(where, "is empty; expected a header line and one row per trial")
    return rows


def _numbered_rows(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """Rows with the file line each starts on (a quoted cell may span lines)."""
    line = 1
    for row in reader:
        yield line, row
        line = reader.line_num + 1


def _read_header(where: Path, header: list[str]) -> list[str]:
    columns = [cell.strip().lower() for cell in header]
    allowed = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        raise InputError(where, f"column(s) {duplicated} appear more than once in the header")
    unknown = [name for name in columns if name not in allowed]
    if unknown:
        raise InputError(where, f"unexpected column(s) {unknown} in the header; allowed: {list(allowed)}")
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise InputError(
            where,
            f"header lacks column(s) {missing}; expected {','.join(REQUIRED_COLUMNS)} "
            f"with optional {','.join(OPTIONAL_COLUMNS)}",
        )
    return columns


def _row_values(where: Path, line: int, trial: int, columns: list[str], row: list[str]) -> dict[str, float]:
    """One trial's row as column -> finite number."""
    if len(row) != len(columns):
        raise InputError(where, f"line {line} (trial {trial}) has {len(row)} values; expected {len(columns)}")
    return {
        name: _parse_number(where, line, trial, name, cell) for name, cell in zip(columns, row, strict=True)
    }


def _parse_number(where: Path, line: int, trial: int, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise InputError(
            where, f"line {line} (trial {trial}): {column} = {cell.strip()!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise InputError(where, f"line {line} (trial {trial}): {column} = {cell.strip()!r} is not finite")
    return value


def _check_onset(
    where: Path, line: int, trial: int, onset: float, previous: float | None, recording_seconds: float | None
) -> None:
    """Refuse an onset that is negative, not after the previous one, or whose trial outlasts the recording."""
    if onset < 0:
        raise InputError(where, f"line {line} (trial {trial}): onset {onset:g} s is negative")
    if previous is not None and onset <= previous:
        raise InputError(
            where,
            f"line {line} (trial {trial}): onset {onset:g} s is not after the previous {previous:g} s",
        )
    if recording_seconds is not None and onset + TRIAL_SECONDS > recording_seconds:
        raise InputError(
            where,
            f"line {line} (trial {trial}): the trial from onset {onset:g} s to "
            f"{onset + TRIAL_SECONDS:g} s ends after the recording ({recording_seconds:g} s long)",
        )


def _check_label_range(where: Path, line: int, trial: int, values: dict[str, float]) -> None:
    low, high = LABEL_RANGE
    for name in LABEL_NAMES:
        if name in values and not low <= values[name] <= high:
            raise InputError(
                where,
                f"line {line} (trial {trial}): {name} = {values[name]:g} outside [{low:g}, {high:g}]",
            )

"""DEAP-style data manifests: what a data folder should hold, and a check of a folder against one.

A manifest (``data_manifests/<name>.yaml``) lists the file layouts a data set comes in, each with
a name pattern such as ``s{01..32}.dat`` (zero-padded numbers 01 to 32, the number being the
subject), plus the array shapes, sampling rate, channel order and label columns. Checking a
folder picks the layout it holds, lists the subject files found and the expected ones that are
absent, and names every other entry as unexpected. Only plain names that match the pattern are
ever turned into paths, so a folder listing cannot lead outside the folder.

What a manifest must hold is the JSON Schema ``pipeline/manifest.schema.json`` (printed by
``eegmi schema manifest``); a manifest that breaks it is refused in one line naming the file and
the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import InputError
from pipeline.schemas import check_against_schema

MANIFEST_DIR = Path(__file__).resolve().parents[2] / "data_manifests"
_MANIFEST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_RANGE_PATTERN = re.compile(r"(?P<prefix>[^{}]*)\{(?P<first>\d+)\.\.(?P<last>\d+)\}(?P<suffix>[^{}]*)")


@dataclass(frozen=True)
class FolderCheck:
    """What a data folder holds, measured against one layout of a manifest.

    Attributes
    ----------
    layout : str
        Name of the layout the folder holds (the one with the most subject files).
    folder : Path
        The folder the files are in: the folder checked, or its subfolder named by the layout.
    files : tuple of Path
        The subject files found, sorted by subject.
    subjects : tuple of int
        Their subject numbers, in the same order.
    missing : tuple of str
        Expected file names that are absent, sorted by subject.
    unexpected : tuple of str
        Other entries of the folder (not subject files of the layout, nor its companions), sorted.
    """

    layout: str
    folder: Path
    files: tuple[Path, ...]
    subjects: tuple[int, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


@dataclass(frozen=True)
class _Layout:
    name: str
    subfolder: str | None
    prefix: str
    suffix: str
    first: int
    last: int
    width: int
    companions: frozenset[str]

    @property
    def expected(self) -> dict[int, str]:
        return {number: self.file_name(number) for number in range(self.first, self.last + 1)}

    def file_name(self, number: int) -> str:
        return f"{self.prefix}{number:0{self.width}d}{self.suffix}"

    def subject_of(self, name: str) -> int | None:
        """The subject number a file name stands for, or None when it is not one of this layout's."""
        match = re.fullmatch(rf"{re.escape(self.prefix)}(\d{{{self.width}}}){re.escape(self.suffix)}", name)
        if match is None:
            return None
        number = int(match.group(1))
        return number if self.first <= number <= self.last else None


def _parse_layout(where: str, entry: Mapping[str, Any]) -> _Layout:
    """A layout the schema accepted, with the facts that relate its keys checked."""
    name, pattern = entry["name"], entry["pattern"]
    match = _RANGE_PATTERN.fullmatch(pattern)
    first_text, last_text = match.group("first"), match.group("last")
    first, last = int(first_text), int(last_text)
    if len(first_text) != len(last_text) or first > last:
        problem = f"range {{{first_text}..{last_text}}} must rise and its numbers have equal width"
        raise InputError(where, f"layout {name!r}: {problem}")
    if entry["count"] != last - first + 1:
        problem = f"count {entry['count']!r} disagrees with pattern {pattern!r}"
        raise InputError(where, f"layout {name!r}: {problem}")
    return _Layout(
        name=name,
        subfolder=entry.get("folder"),
        prefix=match.group("prefix"),
        suffix=match.group("suffix"),
        first=first,
        last=last,
        width=len(first_text),
        companions=frozenset(entry.get("companions", [])),
    )


def _validate(manifest: Any, where: str) -> list[_Layout]:
    """Check a loaded manifest against ``pipeline/manifest.schema.json``, then the facts that
    relate its keys (which JSON Schema cannot state); return its parsed layouts."""
    check_against_schema(manifest, "manifest", where)
    layouts = [_parse_layout(where, entry) for entry in manifest["layouts"]]
    names = [layout.name for layout in layouts]
    if len(set(names)) != len(names):
        raise InputError(where, f"layout names repeat: {names}")

    data_shape = manifest["arrays"]["data"]["shape"]
    labels_shape = manifest["arrays"]["labels"]["shape"]
    channels = manifest["channels"]
    if len(channels) != data_shape[1]:
        problem = f"must be {data_shape[1]} distinct names (arrays.data.shape[1]), got {len(channels)}"
        raise InputError(where, f"'channels' {problem}")
    n_eeg = manifest["n_eeg_channels"]
    if n_eeg > len(channels):
        raise InputError(where, f"'n_eeg_channels' must be an integer in [1, {len(channels)}], got {n_eeg!r}")
    if len(manifest["label_columns"]) != labels_shape[1]:
        raise InputError(where, f"'label_columns' must list {labels_shape[1]} names (arrays.labels.shape[1])")
    if labels_shape[0] != data_shape[0]:
        raise InputError(
            where, f"arrays.labels has {labels_shape[0]} rows but arrays.data {data_shape[0]} trials"
        )
    low, high = manifest["label_range"]
    if not low < high:
        raise InputError(where, f"'label_range' must be [low, high] with low < high, got {[low, high]!r}")
    return layouts


def available_manifests() -> list[str]:
    """Names of the manifests shipped in ``data_manifests/``."""
    return sorted(path.stem for path in MANIFEST_DIR.glob("*.yaml"))


def _manifest_path(name_or_path: str | os.PathLike) -> Path:
    if isinstance(name_or_path, str) and _MANIFEST_NAME.fullmatch(name_or_path):
        path = MANIFEST_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise InputError(name_or_path, f"no such manifest; available: {available_manifests()}")
        return path
    if not isinstance(name_or_path, str | os.PathLike):
        raise InputError("manifest", f"expected a manifest name or path, got {type(name_or_path).__name__}")
    path = Path(name_or_path)
    if not path.is_file():
        raise InputError(path, "manifest file not found")
    return path


def load_manifest(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a DEAP-style manifest.

    Parameters
    ----------
    name_or_path : str or path-like
        A name in ``data_manifests/`` (``"deap"``, ``"deap-synthetic"``) or the path of a YAML file.

    Returns
    -------
    dict
        The manifest as written (``yaml.safe_load``), after checking that it has every required
        key, that each layout's pattern is a plain file name with a ``{first..last}`` range
        agreeing with its ``count``, and that channels and label columns match the array shapes.

    Raises
    ------
    InputError
        Naming the manifest, when it is absent, not YAML, or fails a check.
    """
    path = _manifest_path(name_or_path)
    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a readable YAML file ({type(err).__name__}: {err})") from None
    _validate(manifest, str(path))
    return manifest


def _subject_files(folder: Path, names: list[str], layout: _Layout) -> dict[int, str]:
    files = {}
    for name in names:
        number = layout.subject_of(name)
        if number is not None and (folder / name).is_file():
            files[number] = name
    return files


def _listing(folder: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(folder))
    except OSError as err:
        raise InputError(folder, f"cannot list the folder ({err.strerror})") from None


def check_folder(folder: str | os.PathLike, manifest: Mapping[str, Any] | str | os.PathLike) -> FolderCheck:
    """Check a data folder against a manifest before any file is read.

    The layout whose subject files the folder holds most of is chosen (the first listed wins a
    tie). When the folder holds none, a subfolder named by a layout's ``folder`` (e.g.
    ``data_preprocessed_python`` in DEAP's root) is checked instead. Any subset of subjects is
    accepted: the absent ones are reported in ``missing``.

    Parameters
    ----------
    folder : path-like
        The folder to check.
    manifest : mapping, str or path-like
        A manifest from :func:`load_manifest`, or a name or path to load.

    Returns
    -------
    FolderCheck

    Raises
    ------
    InputError
        Naming the folder, when it does not exist, is not a folder, or holds no subject file of
        any layout; naming the manifest, when it is invalid.
    """
    if isinstance(manifest, Mapping):
        layouts = _validate(manifest, f"manifest {manifest.get('dataset', '?')!s}")
    else:
        layouts = _validate(load_manifest(manifest), str(manifest))
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "folder does not exist")
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")

    candidates = [(folder, layout) for layout in layouts]
    names_in = {folder: _listing(folder)}
    if not any(_subject_files(folder, names_in[folder], layout) for layout in layouts):
        candidates = []
        for layout in layouts:
            if layout.subfolder is not None and (folder / layout.subfolder).is_dir():
                subfolder = folder / layout.subfolder
                names_in.setdefault(subfolder, _listing(subfolder))
                candidates.append((subfolder, layout))
    found = [(where, layout, _subject_files(where, names_in[where], layout)) for where, layout in candidates]
    found = [entry for entry in found if entry[2]]
    if not found:
        examples = ", ".join(f"{layout.file_name(layout.first)} ({layout.name})" for layout in layouts)
        problem = "is empty" if not names_in[folder] else "holds no subject file of any layout"
        raise InputError(folder, f"{problem}; expected files named like {examples}")
    where, layout, files = max(found, key=lambda entry: len(entry[2]))  # max keeps the first of equals

    subjects = sorted(files)
    known = set(files.values()) | layout.companions
    return FolderCheck(
        layout=layout.name,
        folder=where,
        files=tuple(where / files[number] for number in subjects),
        subjects=tuple(subjects),
        missing=tuple(name for number, name in layout.expected.items() if number not in files),
        unexpected=tuple(name for name in names_in[where] if name not in known),
    )

"""The inbox run without Prefect: the recordings that appeared in a folder since the last run.

It remembers each file it has stored by the SHA-256 of its bytes in the run folder's inbox
ledger (written atomically), so every file is picked up once, whatever it is called and however
often it runs; a file that fails to read is tried again on the next run. What happens after
storing is :func:`pipeline.runs.recordings.update_models`. The ``ingest-inbox`` flow wraps
:func:`ingest_inbox`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import InputError
from pipeline.files import atomic_write_bytes
from pipeline.runs.recordings import (
    PLAIN_INGEST,
    IngestSettings,
    default_source_path,
    nothing_stored,
    previous_report,
    recordings_store_kind,
    stored_then_updated,
)
from pipeline.sources.raw import recording_suffix
from pipeline.sources.trials import file_sha256
from pipeline.store.run_folder import RunFolder, read_json_file
from pipeline.store.runlock import output_errors

LEDGER_FORMAT = "eegmi-inbox/1"


# The inbox --------------------------------------------------------------------------------------


def _is_utf8(text: str) -> bool:
    """Whether a name read from the file system decodes as UTF-8 (no surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inbox_recordings(inbox_dir: str | os.PathLike, settle_seconds: float = 0.0) -> list[Path]:
    """Recording files directly in ``inbox_dir``, sorted by name, leaving hidden and unsettled files.

    A file still being copied must not be read half-written: copy into the inbox under a hidden
    name (``.s01.bdf``) and rename it, or let ``settle_seconds`` pass after its last change.

    Raises
    ------
    InputError
        When ``inbox_dir`` is not a folder or ``settle_seconds`` is negative.
    """
    folder = Path(inbox_dir)
    if not folder.is_dir():
        raise InputError(folder, "inbox folder does not exist")
    if not isinstance(settle_seconds, int | float) or settle_seconds < 0:
        raise InputError("settle_seconds", f"must be a number >= 0, got {settle_seconds!r}")
    now = time.time()
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if not _is_utf8(entry.name):  # Prefect passes names as JSON, which only holds Unicode
            warnings.warn(
                f"{os.fsencode(entry)!r}: skipped: the file name is not valid UTF-8; rename it", stacklevel=2
            )
            continue
        try:
            recording_suffix(entry)
        except InputError:  # sidecars, BrainVision .eeg/.vmrk, EEGLAB .fdt and anything else
            continue
        if now - entry.stat().st_mtime >= settle_seconds:
            found.append(entry)
    return found


def read_ledger(out_dir: str | os.PathLike) -> dict[str, dict]:
    """The inbox files already stored in ``out_dir``: SHA-256 of the file -> what was stored.

    Raises
    ------
    InputError
        Naming the ledger when it is not one.
    """
    path = RunFolder(out_dir).inbox_ledger
    ledger = read_json_file(path, "an inbox ledger")
    if ledger is None:
        return {}
    if (
        not isinstance(ledger, dict)
        or ledger.get("format") != LEDGER_FORMAT
        or not isinstance(ledger.get("files"), dict)
    ):
        raise InputError(path, f"is not an inbox ledger (format {LEDGER_FORMAT})")
    return ledger["files"]


def write_ledger(out_dir: str | os.PathLike, files: dict[str, dict]) -> None:
    """Replace the ledger atomically: a kill leaves the old one or the new one."""
    payload = json.dumps({"format": LEDGER_FORMAT, "files": files}, indent=1, sort_keys=True)
    with output_errors(out_dir):
        atomic_write_bytes(RunFolder(out_dir).inbox_ledger, payload.encode())


def file_digests(paths: list[Path], ledger: dict[str, dict]) -> dict[str, str]:
    """SHA-256 of each file; one seen before with the same name, size and modification time is not
    hashed again."""
    known = {
        (entry.get("name"), entry.get("size"), entry.get("mtime_ns")): sha for sha, entry in ledger.items()
    }
    digests = {}
    for path in paths:
        status = path.stat()
        digests[str(path)] = known.get((path.name, status.st_size, status.st_mtime_ns)) or file_sha256(path)
    return digests


def with_stored_files(ledger: dict[str, dict], digests: dict[str, str], stored: dict[str, dict]) -> dict:
    """``ledger`` with an entry for each file of ``stored`` (path -> what was stored)."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    entries = {}
    for path, result in stored.items():
        status = Path(path).stat()
        entries[digests[path]] = {
            "name": Path(path).name,
            "size": status.st_size,
            "mtime_ns": status.st_mtime_ns,
            "stored": now,
            "n_trials": result["n_trials"],
        }
    return {**ledger, **entries}


def ingest_inbox(
    run: RunFolder | str,
    inbox_dir: str,
    settle_seconds: float = 0.0,
    settings: IngestSettings = PLAIN_INGEST,
) -> dict:
    """Store the inbox's new recordings in the run, then encode and report (or retrain).

    Each file is recognised by the SHA-256 of its bytes and stored once; the ledger gains a
    file only after its trials are committed, so a killed run picks it up again (the store
    skips what it already holds). Files changed less than ``settle_seconds`` ago are left for
    the next run. Returns what :func:`pipeline.runs.recordings.ingest_recordings` returns, plus
    ``n_skipped`` (files stored by earlier runs).
    """
    run = RunFolder(run)
    inbox = os.path.abspath(os.fspath(inbox_dir))
    recordings_store_kind(run)  # a synthetic run is refused before any work
    ledger = read_ledger(run)
    candidates = inbox_recordings(inbox, settle_seconds)
    digests = file_digests(candidates, ledger)
    new = [path for path, digest in digests.items() if digest not in ledger]
    n_skipped = len(candidates) - len(new)
    settings.log.info("%s: %d new recording(s), %d already stored", inbox, len(new), n_skipped)
    stored = nothing_stored(run)
    if new:
        stored = settings.store(run, new, settings.interpolate_missing)
        write_ledger(run, with_stored_files(ledger, digests, stored["stored"]))
    source_path = default_source_path(previous_report(run), inbox)
    return stored_then_updated(run, stored, settings, source_path, "ingest-inbox", new, n_skipped=n_skipped)

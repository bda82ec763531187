"""Atomic file writes and timestamps, shared by the store, run locks, checkpoints, the report
writer and the thread registry.

Imports nothing but the standard library: :mod:`pipeline.threads` uses it, and must be importable
before numpy or torch is, so that the thread counts it sets take effect.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the complete new one.

    The bytes go to a unique sibling, are flushed to disk, and the file is renamed over ``path``
    (atomic on POSIX and Windows within one file system).
    """
    path = Path(path)
    # Opened with "xb" (not mkstemp, whose files are private 0600) so the file gets the
    # permissions of the user's umask, like any other file they write.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def utc_now() -> str:
    """The current UTC time to the second, ISO 8601 (as stores and run markers record it)."""
    return datetime.now(UTC).isoformat(timespec="seconds")

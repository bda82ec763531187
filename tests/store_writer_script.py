"""Ingest generated trials into a frame store one by one, so a test can kill it mid-way.

Usage::

    python store_writer_script.py STORE [--sleep SECONDS] [--hang-at K]

Prints ``committed <sha prefix> <trial>`` after each trial becomes visible and ``done`` at
the end. With ``--hang-at K`` it prints ``hanging`` and sleeps before committing the K-th
trial it writes (1-based), after that trial's data is written, so a kill lands exactly between
the data writes and the commit.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import numpy as np

from pipeline.store.frames import FrameStore

FRAME_SHAPE = (6, 3, 16, 16)
CONFIG_HASH = "0123456789abcdef"
N_SOURCES = 3
TRIALS_PER_SOURCE = 6


def make_source(index: int) -> dict:
    """The arrays of generated source file ``index``, the same on every call."""
    rng = np.random.default_rng(1000 + index)
    frames = rng.standard_normal((TRIALS_PER_SOURCE, *FRAME_SHAPE)).astype(np.float32)
    return {
        "frames": frames,
        "labels": rng.uniform(1, 9, (TRIALS_PER_SOURCE, 4)).astype(np.float32),
        "subject": np.full(TRIALS_PER_SOURCE, index + 1, dtype=np.int32),
        "trial": np.arange(TRIALS_PER_SOURCE, dtype=np.int32),
        "source": f"s{index + 1:02d}.dat",
        "source_sha256": hashlib.sha256(frames.tobytes()).hexdigest(),
    }


class HangingStore(FrameStore):
    """A store that stops before committing its ``hang_at``-th write."""

    hang_at = 0
    n_commits = 0

    def _commit(self, rows: np.ndarray) -> None:
        HangingStore.n_commits += 1
        if HangingStore.n_commits == self.hang_at:
            print("hanging", flush=True)
            time.sleep(60)
        super()._commit(rows)


def ingest(path: str, sleep_seconds: float = 0.0, hang_at: int = 0) -> None:
    """Add every generated trial to the store at ``path``, one trial per call."""
    HangingStore.hang_at = hang_at
    store = HangingStore.create_or_open(
        path, config_hash=CONFIG_HASH, attrs={"kind": "synthetic"}, frame_shape=FRAME_SHAPE
    )
    for index in range(N_SOURCES):
        source = make_source(index)
        for trial in range(TRIALS_PER_SOURCE):
            one = slice(trial, trial + 1)
            written = store.add_trials(
                source["frames"][one],
                source["labels"][one],
                source["subject"][one],
                source["trial"][one],
                source["source"],
                source["source_sha256"],
            )
            if written:
                print(f"committed {source['source_sha256'][:8]} {trial}", flush=True)
                time.sleep(sleep_seconds)
    store.consolidate()
    print("done", flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("store")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--hang-at", type=int, default=0)
    args = parser.parse_args(argv)
    ingest(args.store, args.sleep, args.hang_at)


if __name__ == "__main__":
    main(sys.argv[1:])

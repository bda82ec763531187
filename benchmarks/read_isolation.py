"""What reading each file in a bounded child process costs, against reading it in process.

Writes DEAP-layout ``sXX.dat`` files (40 trials each, ~100 MB, as ``preprocess.py`` does), then
reads each file 5 times each way, alternating the order to share out the machine's noise, and
keeps the median:

- ``direct``: :func:`pipeline.sources.deap.read_source_file` in this process;
- ``isolated``: ``read_source_file(path, isolate=True)`` as the preprocessing flows read: the
  pickle's opcodes parsed in a child process (started from multiprocessing's fork server)
  bounded in time and memory, the arrays then built in this process from the bytes it read;
- ``preprocess``: read, band power, imaging and store write of the file in this thread, the
  per-file work the overhead is a fraction of.

torch is imported first so that this process is as large as a flow's.

Usage::

    python benchmarks/read_isolation.py              # 8 files, writes benchmarks/results/read_isolation.json
    python benchmarks/read_isolation.py --subjects 2 # quick run, prints the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "read_isolation.json"
REPEATS = 5


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads)."""
    return time.process_time()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=8, help="files to write and read (default 8)")
    parser.add_argument("--output", type=Path, help=f"write the JSON here (default {RESULTS} at 8 files)")
    args = parser.parse_args(argv)

    import torch  # noqa: F401  (a flow's process holds torch too; fork cost grows with the process)

    from pipeline.signal.bands import band_log_power
    from pipeline.signal.config import PreprocessConfig
    from pipeline.signal.imaging import deap_imaging_operator
    from pipeline.sources.deap import read_source_file
    from pipeline.sources.synthetic_files import write_synthetic_deap
    from pipeline.sources.synthetic_spec import SyntheticDeapSpec
    from pipeline.store.ingest_eeg import deap_store_spec, open_store

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="eegmi-isolation-") as work:
        spec = SyntheticDeapSpec(n_subjects=args.subjects, n_trials=40, seed=0)
        write_synthetic_deap(spec, Path(work) / "data")
        files = sorted((Path(work) / "data").glob("s*.dat"))
        file_bytes = sum(path.stat().st_size for path in files) // len(files)
        config = PreprocessConfig()
        operator = deap_imaging_operator(config)
        store = open_store(str(Path(work) / "run"), deap_store_spec(config, "deap-python"))
        seconds = {"direct": 0.0, "isolated": 0.0, "preprocess": 0.0}
        cpu_seconds = dict.fromkeys(seconds, 0.0)
        for path in files:
            # Each read REPEATS times, alternating, and the median kept: on a shared machine a
            # single read can take twice as long as the next for reasons of its own.
            times: dict[str, list[float]] = {"direct": [], "isolated": []}
            cpu_times: dict[str, list[float]] = {"direct": [], "isolated": []}
            for repeat in range(REPEATS):
                for how in ("direct", "isolated") if repeat % 2 == 0 else ("isolated", "direct"):
                    start, cpu_start = time.perf_counter(), _cpu_seconds()
                    trials = read_source_file(path, isolate=how == "isolated")
                    times[how].append(time.perf_counter() - start)
                    cpu_times[how].append(_cpu_seconds() - cpu_start)
            for how in times:
                seconds[how] += statistics.median(times[how])
                cpu_seconds[how] += statistics.median(cpu_times[how])
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            trials = read_source_file(path)
            frames = operator.to_frames(band_log_power(trials.signals, config, sfreq=trials.sfreq))
            store.add_trials(
                frames=frames,
                labels=trials.labels,
                subject=trials.subject,
                trial=trials.trial,
                source=trials.source,
                source_sha256=trials.source_sha256,
            )
            seconds["preprocess"] += time.perf_counter() - start
            cpu_seconds["preprocess"] += _cpu_seconds() - cpu_start
    n = len(files)
    overhead = (seconds["isolated"] - seconds["direct"]) / n
    cpu_overhead = (cpu_seconds["isolated"] - cpu_seconds["direct"]) / n
    result = {
        "benchmark": "read_isolation",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_start": list(load_start),
            "load_average_end": list(os.getloadavg()),
            "shared_machine_busy": load_start[0] > 0.5 * (os.cpu_count() or 1),
        },
        "n_files": n,
        "file_bytes": file_bytes,
        "per_file_seconds": {key: value / n for key, value in seconds.items()},
        "isolation_overhead_seconds_per_file": overhead,
        "isolation_overhead_fraction_of_preprocessing": overhead / (seconds["preprocess"] / n),
        # CPU time of this process alone: it depends less on how busy the machine is, but leaves
        # out the parsing child (a child of the fork server, not of this process).
        "per_file_cpu_seconds_this_process": {key: value / n for key, value in cpu_seconds.items()},
        "isolation_overhead_cpu_seconds_per_file_this_process": cpu_overhead,
    }
    text = json.dumps(result, indent=2)
    output = args.output or (RESULTS if args.subjects == 8 else None)
    if output is not None:
        output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Preprocessing speed at DEAP's full size, and the imaging operator against per-frame ``griddata``.

Writes DEAP-layout ``sXX.dat`` files with the synthetic generator (32 subjects × 40 trials by
default, about 4.3 GB), then measures:

- each step on its own, file by file in one thread: read (unpickling, checks and the file's
  SHA-256), band power, imaging-operator application, store write;
- end to end: the ``deap-preprocess`` Prefect flow into a fresh run folder, after a warm-up run
  that starts Prefect's temporary server (timed apart, as every ``eegmi`` call pays it once);
- interpolation: ``scipy.interpolate.griddata(method="cubic")`` frame by frame and band by band,
  as EEGLearn makes its images, on a subset extrapolated to every frame, against the precomputed
  operator on the same subset and on every frame.

Usage::

    python benchmarks/preprocess.py                # full size, writes benchmarks/results/preprocess.json
    python benchmarks/preprocess.py --subjects 4   # quick run; prints the JSON (add --output to keep it)

See benchmarks/README.md for the meaning of every field.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pipeline.threads import apply_thread_environment, choose_thread_policy

# As the eegmi command does for a run alone, before numpy starts its threads: files as parallel
# tasks, one per usable core (other runs are not counted, so runs stay comparable; the load is
# recorded), one BLAS thread each.
apply_thread_environment(choose_thread_policy(other_runs=0))

import numpy as np  # noqa: E402

from flows._runtime import configure_offline_prefect, heartbeats_only_for_a_server  # noqa: E402

FULL_SUBJECTS, FULL_TRIALS = 32, 40
END_TO_END_LIMIT_SECONDS = 20.0
MAX_OVER_FLOOR = 2.0
MIN_INTERPOLATION_SPEEDUP = 100.0
# 4.3 GB of files plus two stores of ~0.7 GB each, with room to spare.
FULL_SIZE_FREE_BYTES = 8 * 10**9
RESULTS = Path(__file__).resolve().parent / "results" / "preprocess.json"


def machine_info() -> dict:
    """Cores, platform and the versions that decide the speed of each step."""
    import prefect
    import scipy
    import zarr

    from pipeline import __version__

    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "zarr": zarr.__version__,
        "prefect": prefect.__version__,
        "eegmi": __version__,
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }


def check_free_disk(folder: Path, n_subjects: int, n_trials: int) -> None:
    """Exit with a clear message when ``folder``'s file system cannot hold the files and stores."""
    needed = FULL_SIZE_FREE_BYTES * (n_subjects * n_trials) / (FULL_SUBJECTS * FULL_TRIALS)
    free = shutil.disk_usage(folder).free
    if free < needed:
        sys.exit(
            f"benchmarks/preprocess.py: {folder}: {free / 1e9:.1f} GB free, the benchmark needs "
            f"{needed / 1e9:.1f} GB; free some space or pass --work-dir on a larger disk"
        )


def synthetic_files(spec, folder: Path) -> tuple[list[Path], float | None]:
    """The spec's ``sXX.dat`` files in ``folder``, written unless a previous run left the same ones.

    Returns the files and the seconds spent writing them (None when reused).
    """
    from pipeline.sources.synthetic_files import GROUND_TRUTH_FILE, write_synthetic_deap

    recorded = folder / GROUND_TRUTH_FILE
    files = [folder / f"s{subject:02d}.dat" for subject in range(1, spec.n_subjects + 1)]
    reusable = recorded.is_file() and all(path.is_file() for path in files)
    if reusable and json.loads(recorded.read_text())["spec"] == spec.to_dict():
        return files, None
    start = time.perf_counter()
    written = write_synthetic_deap(spec, folder)
    return written, time.perf_counter() - start


def time_steps(files: list[Path], out_dir: Path) -> tuple[dict, np.ndarray]:
    """Each preprocessing step alone, file after file in this thread.

    Returns the step timings and the band power of every trial (n_trials, 63, 32, 3), which
    the interpolation comparison reuses.
    """
    from pipeline.signal.bands import band_log_power
    from pipeline.signal.config import PreprocessConfig
    from pipeline.signal.imaging import deap_imaging_operator
    from pipeline.sources.deap import read_source_file
    from pipeline.sources.trials import file_sha256
    from pipeline.store.ingest_eeg import deap_store_spec, open_store

    config = PreprocessConfig()
    operator = deap_imaging_operator(config)
    store = open_store(str(out_dir), deap_store_spec(config, "deap-python"))
    _reset_peak_rss()
    seconds = {"read": 0.0, "sha256": 0.0, "band_power": 0.0, "imaging": 0.0, "store_write": 0.0}
    band_powers = []
    for path in files:
        start = time.perf_counter()
        trials = read_source_file(path)
        seconds["read"] += time.perf_counter() - start

        start = time.perf_counter()
        file_sha256(path)
        seconds["sha256"] += time.perf_counter() - start

        start = time.perf_counter()
        band_power = band_log_power(trials.signals, config, sfreq=trials.sfreq, where=trials.source)
        seconds["band_power"] += time.perf_counter() - start

        start = time.perf_counter()
        frames = operator.to_frames(band_power, where=trials.source)
        seconds["imaging"] += time.perf_counter() - start

        start = time.perf_counter()
        store.add_trials(
            frames=frames,
            labels=trials.labels,
            subject=trials.subject,
            trial=trials.trial,
            source=trials.source,
            source_sha256=trials.source_sha256,
        )
        seconds["store_write"] += time.perf_counter() - start
        band_powers.append(band_power)
    start = time.perf_counter()
    store.consolidate()
    seconds["store_write"] += time.perf_counter() - start

    n_files = len(files)
    steps = {
        "read_seconds": seconds["read"],
        "sha256_seconds_within_read": seconds["sha256"],
        "band_power_seconds": seconds["band_power"],
        "imaging_seconds": seconds["imaging"],
        "store_write_seconds": seconds["store_write"],
        "total_seconds": sum(value for key, value in seconds.items() if key != "sha256"),
        "per_file_seconds": {key: value / n_files for key, value in seconds.items()},
        "frames_codec": [str(codec) for codec in store.frames.compressors],
        "store_bytes": _folder_bytes(out_dir),
        "peak_rss_bytes": _peak_rss_bytes(),
    }
    return steps, np.concatenate(band_powers)


def time_floor(files: list[Path], band_power: np.ndarray, parallel_tasks: int) -> dict:
    """The work no implementation of preprocessing can skip, each part alone in this thread.

    - reading every file's bytes (into one reused buffer, no parsing);
    - the band-power FFT alone: ``scipy.fft.rfft`` of every 1-s window of every channel of
      every trial, one worker, on arrays of the files' shape (float32, as the pipeline converts);
    - compressing the frames alone: the store's codec (Blosc lz4, shuffle, level 5, one thread)
      on every trial's frames, one chunk per trial as the store writes them.

    ``serial_seconds`` is their sum; ``seconds`` divides it by the tasks the shipped flow runs
    at once (one file per task), the floor for a run that keeps every core busy.
    """
    import scipy.fft
    from numcodecs import Blosc, blosc

    from pipeline.signal.config import PreprocessConfig
    from pipeline.signal.imaging import deap_imaging_operator

    config = PreprocessConfig()
    buffer = bytearray(16 * 2**20)
    start = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    read_seconds = time.perf_counter() - start

    # Not part of the floor as the project's issue defines it, but work every run must do too:
    # the store records each file's SHA-256.
    view = memoryview(buffer)
    start = time.perf_counter()
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                digest.update(view[:n])
    sha256_seconds = time.perf_counter() - start - read_seconds

    n_trials_per_file = len(band_power) // len(files)
    samples = round(config.window_seconds * config.sfreq)
    windows = np.random.default_rng(0).standard_normal(
        (n_trials_per_file, 32, config.n_windows, samples), dtype=np.float32
    )
    start = time.perf_counter()
    for _ in files:
        scipy.fft.rfft(windows, axis=-1, workers=1)
    fft_seconds = time.perf_counter() - start

    codec = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)
    operator = deap_imaging_operator(config)
    threads = blosc.get_nthreads()
    blosc.set_nthreads(1)
    compress_seconds, compressed_bytes = 0.0, 0
    try:
        for first in range(0, len(band_power), n_trials_per_file):
            frames = operator.to_frames(band_power[first : first + n_trials_per_file])
            start = time.perf_counter()
            for trial in frames:
                compressed_bytes += len(codec.encode(np.ascontiguousarray(trial)))
            compress_seconds += time.perf_counter() - start
    finally:
        blosc.set_nthreads(threads)
    serial = read_seconds + fft_seconds + compress_seconds
    side_by_side = _floor_side_by_side(files, windows, band_power, operator, codec, parallel_tasks)
    return {
        "read_bytes_seconds": read_seconds,
        "fft_seconds": fft_seconds,
        "compress_seconds": compress_seconds,
        "compressed_bytes": compressed_bytes,
        "serial_seconds": serial,
        "parallel_tasks": parallel_tasks,
        "seconds": serial / parallel_tasks,
        "sha256_seconds_beyond_reading": sha256_seconds,
        "seconds_with_sha256": (serial + sha256_seconds) / parallel_tasks,
        "side_by_side": side_by_side,
    }


def _floor_side_by_side(files, windows, band_power, operator, codec, parallel_tasks: int) -> dict:
    """The floor's parts again, each run by ``parallel_tasks`` threads at once, one file each as
    the flow runs them; also reading and hashing every file that way.

    ``seconds / parallel_tasks`` assumes free cores; on a machine other work keeps busy they are
    not, and these times say what the same work takes there at the same moment. The frames are
    made ``parallel_tasks`` files at a time, outside the timing.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import scipy.fft
    from numcodecs import blosc

    buffers = threading.local()

    def read_file(path: Path, digest=None) -> None:
        if not hasattr(buffers, "buffer"):
            buffers.buffer = bytearray(16 * 2**20)
        view = memoryview(buffers.buffer)
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(view):
                if digest is not None:
                    digest.update(view[:n])

    def transform(_: Path) -> None:  # the spectra are dropped at once, as the flow's are
        scipy.fft.rfft(windows, axis=-1, workers=1)

    def compress(trials: np.ndarray) -> None:
        for trial in trials:
            codec.encode(np.ascontiguousarray(trial))

    n_trials_per_file = len(band_power) // len(files)
    threads = blosc.get_nthreads()
    blosc.set_nthreads(1)
    with ThreadPoolExecutor(parallel_tasks) as pool:
        start = time.perf_counter()
        list(pool.map(read_file, files))
        read_seconds = time.perf_counter() - start
        start = time.perf_counter()
        list(pool.map(lambda path: read_file(path, hashlib.sha256()), files))
        read_and_sha256_seconds = time.perf_counter() - start
        start = time.perf_counter()
        list(pool.map(transform, files))
        fft_seconds = time.perf_counter() - start
        compress_seconds = 0.0
        try:
            group = n_trials_per_file * parallel_tasks
            for first in range(0, len(band_power), group):
                frames = operator.to_frames(band_power[first : first + group])
                starts = range(0, len(frames), n_trials_per_file)
                start = time.perf_counter()
                list(pool.map(compress, [frames[i : i + n_trials_per_file] for i in starts]))
                compress_seconds += time.perf_counter() - start
        finally:
            blosc.set_nthreads(threads)
    seconds = read_seconds + fft_seconds + compress_seconds
    return {
        "read_bytes_seconds": read_seconds,
        "fft_seconds": fft_seconds,
        "compress_seconds": compress_seconds,
        "seconds": seconds,
        "sha256_seconds_beyond_reading": read_and_sha256_seconds - read_seconds,
        "seconds_with_sha256": read_and_sha256_seconds + fft_seconds + compress_seconds,
    }


def time_end_to_end(data_dir: Path, work_dir: Path, n_expected: int, max_workers: list[int]) -> dict:
    """The preprocessing flow into fresh run folders, after a warm-up that starts Prefect's server.

    The flow runs as shipped first, then once with a thread pool of each size in ``max_workers``.
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.deap import preprocess_deap
    from pipeline.sources.synthetic_files import write_synthetic_deap
    from pipeline.sources.synthetic_spec import SyntheticDeapSpec

    warmup_data = work_dir / "warmup-data"
    write_synthetic_deap(SyntheticDeapSpec(n_subjects=1, n_trials=1, seed=99), warmup_data)
    start = time.perf_counter()
    preprocess_deap(out_dir=str(work_dir / "warmup-out"), data_dir=str(warmup_data))
    result = {"prefect_startup_and_warmup_seconds": time.perf_counter() - start, "runs": []}

    runners = [("as shipped", preprocess_deap)] + [
        (
            f"ThreadPoolTaskRunner(max_workers={n})",
            preprocess_deap.with_options(task_runner=ThreadPoolTaskRunner(n)),
        )
        for n in max_workers
    ]
    for index, (name, flow) in enumerate(runners):
        out_dir = work_dir / f"end-to-end-{index}"
        load_before = os.getloadavg()[0]
        _reset_peak_rss()
        start = time.perf_counter()
        summary = flow(out_dir=str(out_dir), data_dir=str(data_dir))
        elapsed = time.perf_counter() - start
        if summary["n_trials_stored"] != n_expected:
            sys.exit(
                f"benchmarks/preprocess.py: {name}: the flow stored {summary['n_trials_stored']} "
                f"of {n_expected} trials"
            )
        result["runs"].append(
            {
                "task_runner": name,
                "seconds": elapsed,
                "n_trials_stored": summary["n_trials_stored"],
                "load_average_1min_before": load_before,
                "load_average_1min_after": os.getloadavg()[0],
                "peak_rss_bytes": _peak_rss_bytes(),
            }
        )
        shutil.rmtree(out_dir)
    result["seconds"] = result["runs"][0]["seconds"]
    return result


def time_interpolation(band_power: np.ndarray, n_subset_frames: int) -> dict:
    """Per-frame cubic ``griddata`` (EEGLearn) against the precomputed operator.

    ``griddata`` runs on the first ``n_subset_frames`` frames, every band, and its time is scaled
    to all frames; the operator runs on the same subset and on all frames (best of a few runs).
    """
    from scipy.interpolate import griddata

    from pipeline.signal.config import PreprocessConfig
    from pipeline.signal.imaging import deap_imaging_operator

    operator = deap_imaging_operator(PreprocessConfig())
    n_trials, n_windows, n_electrodes, n_bands = band_power.shape
    n_frames = n_trials * n_windows
    n_subset = min(n_subset_frames, n_frames)
    per_frame = band_power.reshape(n_frames, n_electrodes, n_bands)[:n_subset]
    grid = tuple(np.meshgrid(operator.grid_x, operator.grid_y))

    start = time.perf_counter()
    by_griddata = np.empty((n_subset, n_bands, operator.grid_size, operator.grid_size))
    for frame in range(n_subset):
        for band in range(n_bands):
            by_griddata[frame, band] = griddata(
                operator.positions_2d, per_frame[frame, :, band], grid, method="cubic", fill_value=0.0
            )
    griddata_seconds = time.perf_counter() - start

    subset_as_trial = per_frame[np.newaxis]
    operator_subset_seconds = _best_of(5, lambda: operator.to_frames(subset_as_trial))
    by_operator = operator.to_frames(subset_as_trial)[0]
    operator_full_seconds = _best_of(3, lambda: operator.to_frames(band_power))
    griddata_full_seconds = griddata_seconds * n_frames / n_subset
    return {
        "griddata_call": "griddata(positions_2d, values, grid, method='cubic', fill_value=0)",
        "n_frames_full": n_frames,
        "n_bands": n_bands,
        "n_frames_subset": n_subset,
        "griddata_subset_seconds": griddata_seconds,
        "griddata_full_seconds_extrapolated": griddata_full_seconds,
        "operator_subset_seconds": operator_subset_seconds,
        "operator_full_seconds": operator_full_seconds,
        "speedup_subset": griddata_seconds / operator_subset_seconds,
        "speedup_full": griddata_full_seconds / operator_full_seconds,
        "max_abs_difference_subset": float(np.max(np.abs(by_griddata - by_operator))),
        "value_range_subset": [float(per_frame.min()), float(per_frame.max())],
    }


def _best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux; elsewhere the peak stays the process's lifetime peak)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_bytes() -> int:
    """Peak resident memory since the last :func:`_reset_peak_rss` (or since the process began)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(
    n_subjects: int, n_trials: int, seed: int, work_dir: Path, n_griddata_frames: int, max_workers: list[int]
) -> dict:
    """Generate (or reuse) the files in ``work_dir/data``, time everything, return the results."""
    from pipeline.sources.synthetic_spec import SyntheticDeapSpec

    spec = SyntheticDeapSpec(n_subjects=n_subjects, n_trials=n_trials, seed=seed)
    load_start = os.getloadavg()
    files, generate_seconds = synthetic_files(spec, work_dir / "data")
    n_expected = n_subjects * n_trials
    data = {
        "n_subjects": n_subjects,
        "n_trials_per_subject": n_trials,
        "n_trials": n_expected,
        "n_frames": n_expected * 63,
        "n_files": len(files),
        "file_bytes": sum(path.stat().st_size for path in files),
        "files": "DEAP data_preprocessed_python layout (float64, 40 channels) written by "
        "pipeline.sources.synthetic_files.write_synthetic_deap: Python 3 pickles, protocol 4 (array bytes "
        "stored verbatim, as in DEAP's own cPickle files)",
        "generate_seconds": generate_seconds,
        "page_cache": "files written just before (or by an earlier run) and likely cached in memory",
    }
    steps, band_power = time_steps(files, work_dir / "steps-out")
    shutil.rmtree(work_dir / "steps-out")
    floor = time_floor(files, band_power, choose_thread_policy(other_runs=0).parallel_tasks)
    end_to_end = time_end_to_end(work_dir / "data", work_dir, n_expected, max_workers)
    interpolation = time_interpolation(band_power, n_griddata_frames)
    load_end = os.getloadavg()

    full_size = (n_subjects, n_trials) == (FULL_SUBJECTS, FULL_TRIALS)
    machine = machine_info()
    machine.update(
        load_average_start=list(load_start),
        load_average_end=list(load_end),
        # The load at the start only: every later reading includes the benchmark's own work.
        shared_machine_busy=load_start[0] > 0.5 * machine["cpu_count"],
    )
    return {
        "benchmark": "preprocess",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "data": data,
        "steps": steps,
        "floor": floor,
        "end_to_end": end_to_end,
        "interpolation": interpolation,
        "targets": {
            "end_to_end_full_deap": {
                "limit_seconds": END_TO_END_LIMIT_SECONDS,
                "measured_seconds": end_to_end["seconds"],
                "pass": end_to_end["seconds"] <= END_TO_END_LIMIT_SECONDS if full_size else None,
                "applies_to": f"{FULL_SUBJECTS} subjects x {FULL_TRIALS} trials",
            },
            "end_to_end_over_floor": {
                "max_ratio": MAX_OVER_FLOOR,
                "measured_ratio": end_to_end["seconds"] / floor["seconds"],
                "pass": end_to_end["seconds"] <= MAX_OVER_FLOOR * floor["seconds"],
                "over_floor_with_sha256": end_to_end["seconds"] / floor["seconds_with_sha256"],
                "over_side_by_side_floor": end_to_end["seconds"] / floor["side_by_side"]["seconds"],
                "over_side_by_side_floor_with_sha256": end_to_end["seconds"]
                / floor["side_by_side"]["seconds_with_sha256"],
            },
            "interpolation_speedup": {
                "min_ratio": MIN_INTERPOLATION_SPEEDUP,
                "measured_ratio": interpolation["speedup_full"],
                "pass": interpolation["speedup_full"] >= MIN_INTERPOLATION_SPEEDUP,
            },
        },
    }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--subjects",
        type=_positive_int,
        default=FULL_SUBJECTS,
        help=f"subjects to generate (default {FULL_SUBJECTS}: DEAP's full size)",
    )
    parser.add_argument(
        "--trials",
        type=_positive_int,
        default=FULL_TRIALS,
        help=f"trials per subject (default {FULL_TRIALS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    parser.add_argument(
        "--griddata-frames",
        type=_positive_int,
        default=2000,
        help="frames interpolated with griddata, every band (default 2000)",
    )
    parser.add_argument(
        "--max-workers",
        type=_positive_int,
        nargs="*",
        default=[],
        help="also time the flow with a thread pool of each of these sizes",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the generated files in WORK_DIR/data and reuse them on the next run "
        "(default: a temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"where to write the JSON (default: {RESULTS.relative_to(RESULTS.parents[2])} "
        "at full size; printed only otherwise)",
    )
    args = parser.parse_args(argv)

    configure_offline_prefect()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Prefect gives its temporary server 20 s to start, too little on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="eegmi-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    # A throwaway Prefect home keeps the benchmark's flow runs out of the user's own.
    os.environ.setdefault("PREFECT_HOME", str(work_dir / "prefect-home"))
    check_free_disk(work_dir, args.subjects, args.trials)
    try:
        # As the eegmi command runs its flows on the temporary server.
        with heartbeats_only_for_a_server():
            results = run(
                args.subjects, args.trials, args.seed, work_dir, args.griddata_frames, args.max_workers
            )
    finally:
        for name in ("warmup-data", "warmup-out", "steps-out"):
            shutil.rmtree(work_dir / name, ignore_errors=True)
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)

    text = json.dumps(results, indent=2) + "\n"
    full_size = (args.subjects, args.trials) == (FULL_SUBJECTS, FULL_TRIALS)
    output = args.output or (RESULTS if full_size else None)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

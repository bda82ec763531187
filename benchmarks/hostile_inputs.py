"""What a user sees, and how long it takes, for each hostile or broken input of the failure-safety list.

Each case builds its inputs in a temporary folder and runs the ``eegmi`` command on them in its
own process, as a user would: a crafted DEAP pickle as ``s01.dat`` beside a good ``s02.dat``
(``eegmi preprocess --data-dir DIR --out OUT``), a recording whose header points outside its
folder beside a good one (``eegmi ingest``), a nested ``report.json`` or checkpoint pointer, a
bad sidecar line, an unusable ``--out`` or ``--data-dir``. It records the exit code, the
command's own ``eegmi:`` lines, whether any traceback reached the terminal and the command's
wall time. For the pickles it also times the refusal itself:
``read_source_file(path, isolate=True)``, the bounded read the flow runs per file.

The commands share one Prefect server started by this script (``PREFECT_API_URL``), so the wall
times leave out the ~10 s a lone command spends starting its temporary server.

Usage::

    python benchmarks/hostile_inputs.py            # writes benchmarks/results/hostile_inputs.json
    python benchmarks/hostile_inputs.py --print    # prints the table as Markdown as well
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "hostile_inputs.json"
EEGMI = Path(sys.executable).with_name("eegmi")
# The crafted files and recording writers the tests use: one definition of each hostile input.
sys.path.insert(0, str(ROOT / "tests"))


def _run(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command``; its exit code, ``eegmi:`` lines, traceback or not, and seconds."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate(timeout=600)
    seconds = time.perf_counter() - start
    return {
        "exit_code": process.returncode,
        "lines": [line for line in (stdout + stderr).splitlines() if line.startswith("eegmi:")],
        "traceback": "Traceback" in stderr,
        "command_seconds": round(seconds, 2),
    }


def _good_dat(path: Path) -> None:
    from pipeline.sources.deap import write_deap_dat
    from pipeline.sources.trials import N_SAMPLES

    data = np.random.default_rng(2).normal(0.0, 20.0, (2, 40, N_SAMPLES))
    write_deap_dat(path, data, np.full((2, 4), 5.0))


def _pickle_cases(work: Path, env: dict[str, str]) -> list[dict]:
    from test_hostile_files import CRAFTED

    from pipeline.errors import InputError
    from pipeline.sources.deap import read_source_file

    rows = []
    for name, (craft, _) in CRAFTED.items():
        data = work / name / "data"
        data.mkdir(parents=True)
        crafted = data / "s01.dat"
        crafted.write_bytes(craft())
        _good_dat(data / "s02.dat")
        start = time.perf_counter()
        try:
            read_source_file(crafted, isolate=True)
            refusal = "read"
        except InputError as err:
            refusal = err.problem
        read_seconds = time.perf_counter() - start
        result = _run(
            [str(EEGMI), "preprocess", "--data-dir", str(data), "--out", str(work / name / "run")], env
        )
        rows.append(
            {
                "case": f"pickle: {name} ({len(craft())} B) beside a good s02.dat",
                "command": "eegmi preprocess --data-dir DIR --out OUT",
                **result,
                "read_seconds": round(read_seconds, 3),
                "read_outcome": refusal,
            }
        )
    return rows


def _recording_cases(work: Path, env: dict[str, str]) -> list[dict]:
    from test_ingest_recordings import write_recording
    from test_sources_raw import (
        FULL_COLUMNS,
        _full_label_rows,
        _recording,
        _write_brainvision,
        _write_eeglab,
        _write_labels,
    )

    from pipeline.sources.raw import default_labels_path
    from pipeline.store.run_folder import RunFolder

    def ingest(case: str, recordings: list[Path], out: Path) -> dict:
        command = [str(EEGMI), "ingest", *map(str, recordings), "--out", str(out)]
        return {"case": case, "command": "eegmi ingest RECORDING... --out OUT", **_run(command, env)}

    rows = []
    folder = work / "brainvision" / "inbox"
    good = write_recording(folder, "sub-01_eeg.fif", seed=1)
    header = folder / "sub-02_eeg.vhdr"
    _write_brainvision(header, _recording(256.0, {}, drop=(), seed=2).pick("eeg"))
    _write_labels(default_labels_path(header), FULL_COLUMNS, _full_label_rows())
    elsewhere = work / "brainvision" / "elsewhere"
    elsewhere.mkdir()
    header.with_suffix(".eeg").rename(elsewhere / "file.eeg")
    header.write_text(header.read_text().replace("DataFile=sub-02_eeg.eeg", "DataFile=../elsewhere/file.eeg"))
    rows.append(
        ingest("BrainVision .vhdr with DataFile=../elsewhere/file.eeg", [good, header], folder / "run")
    )

    folder = work / "eeglab" / "inbox"
    good = write_recording(folder, "sub-01_eeg.fif", seed=1)
    hostile = folder / "sub-03_eeg.set"
    _write_eeglab(hostile, _recording(256.0, {}, drop=(), seed=3).pick("eeg"), "../elsewhere/sub-03_eeg.fdt")
    _write_labels(default_labels_path(hostile), FULL_COLUMNS, _full_label_rows())
    rows.append(
        ingest("EEGLAB .set whose data file is ../elsewhere/sub-03_eeg.fdt", [good, hostile], folder / "run")
    )

    folder = work / "sidecar" / "inbox"
    recording = write_recording(folder, "sub-01_eeg.fif", seed=3)
    sidecar = recording.with_name("sub-01_eeg_labels.csv")
    lines = sidecar.read_text().splitlines()
    onset, _, arousal = lines[2].split(",")
    lines[2] = f"{onset},not-a-number,{arousal}"
    sidecar.write_text("\n".join(lines) + "\n")
    rows.append(ingest("labels sidecar with a bad value on line 3", [recording], folder / "run"))

    nested = "[" * 100_000 + "]" * 100_000
    for kind in ("report", "checkpoint"):
        folder = work / f"nested-{kind}"
        first, second = (write_recording(folder / "inbox", f"sub-0{s}_eeg.fif", seed=s) for s in (1, 2))
        run = RunFolder(folder / "run")
        _run([str(EEGMI), "ingest", str(first), "--out", str(run)], env)
        if kind == "report":
            target = run.report_json
        else:  # a checkpoint pointer, beside a classifier so that the run gets as far as reading it
            run.vae_dir().mkdir(parents=True)
            (run.classifier_dir() / "classifier.json").write_text("{}")
            target = run.vae_dir() / "best.json"
        target.write_text(nested)
        rows.append(ingest(f"{target.relative_to(run.path)} nested 100,000 deep", [second], run.path))
    return rows


def _argument_cases(work: Path, env: dict[str, str]) -> list[dict]:
    data = work / "arguments" / "data"
    data.mkdir(parents=True)
    _good_dat(data / "s01.dat")
    cases: list[tuple[str, list[str]]] = [
        ("over-long --out (300-character folder name)", ["--out", str(work / ("a" * 300) / "run")]),
        ("--out s3://bucket/run without s3fs", ["--out", "s3://bucket/run"]),
    ]
    rows = []
    for case, out in cases:
        command = [str(EEGMI), "preprocess", "--data-dir", str(data), *out]
        rows.append(
            {"case": case, "command": "eegmi preprocess --data-dir DIR --out OUT", **_run(command, env)}
        )
    not_utf8 = os.fsencode(str(work)) + b"/deap-\xff"
    command = [
        os.fsencode(str(EEGMI)),
        b"preprocess",
        b"--data-dir",
        not_utf8,
        b"--out",
        os.fsencode(str(work / "r")),
    ]
    rows.append(
        {
            "case": "non-UTF-8 --data-dir",
            "command": "eegmi preprocess --data-dir DIR --out OUT",
            **_run(command, env),
        }
    )
    return rows


def _table(rows: list[dict]) -> str:
    lines = ["| input | exit | what the user sees | command s | read s |", "|---|---|---|---|---|"]
    for row in rows:
        shown = "<br>".join(row["lines"]) + (" **+ traceback**" if row["traceback"] else "")
        read = f"{row['read_seconds']:.3f}" if "read_seconds" in row else ""
        lines.append(
            f"| {row['case']} | {row['exit_code']} | {shown} | {row['command_seconds']:.1f} | {read} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"write the JSON here (default {RESULTS})"
    )
    parser.add_argument("--print", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)

    from flows._runtime import configure_offline_prefect

    configure_offline_prefect()
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    load_start = os.getloadavg()
    groups: list[Callable[[Path, dict[str, str]], list[dict]]] = [
        _pickle_cases,
        _recording_cases,
        _argument_cases,
    ]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="eegmi-hostile-") as work, prefect_test_harness(120):
        env = {
            **os.environ,
            "PREFECT_HOME": str(Path(work) / "prefect-home"),
            "PREFECT_API_URL": str(get_current_settings().api.url),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "1",
        }
        for group in groups:
            rows.extend(group(Path(work), env))
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_1min_before_after": [load_start[0], os.getloadavg()[0]]},
        "note": "wall times on a shared machine; the commands used a Prefect server already running",
        "cases": rows,
    }
    args.output.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.print:
        print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

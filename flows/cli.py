"""The ``eegmi`` command line: parses arguments, runs a flow, turns its outcome into an exit code.

The parser lives here; what each command does with its arguments is in :mod:`flows.commands`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flows import commands
from flows._runtime import (
    EXIT_TERMINATED,
    Terminated,
    configure_offline_prefect,
    exit_now,
    heartbeats_only_for_a_server,
    log_named_errors_without_traceback,
    stop_on_sigterm,
)
from flows._watchdog import start_watchdog
from flows.commands import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "build_parser",
    "main",
    "run_command",
]

EXIT_INTERRUPTED = 130
PRESET_CHOICES = ("demo", "paper")
STORE_OUT_HELP = "run folder; the store is OUT/frames.zarr"


# An option table: flag (or positional name) -> add_argument keywords, in the order --help lists them.
OptionTable = dict[str, dict[str, Any]]


class _OneOf(dict):
    """An option table whose options exclude one another (one mutually exclusive group)."""


@dataclass(frozen=True)
class _Command:
    """One subcommand: its texts, its option tables in --help order, and what runs it.

    A table may also be a function that builds it when the parser is built (for defaults that
    live in modules which importing :mod:`flows.cli` should not load).
    """

    help: str
    description: str
    options: tuple[OptionTable | Callable[[], OptionTable], ...]
    run: Callable[[argparse.Namespace], int]
    defaults: dict[str, Any] = field(default_factory=dict)


def _add_command(subcommands: argparse._SubParsersAction, name: str, command: _Command) -> None:
    parser = subcommands.add_parser(name, help=command.help, description=command.description)
    for table in command.options:
        table = table() if callable(table) else table
        target = parser.add_mutually_exclusive_group() if isinstance(table, _OneOf) else parser
        for flag, keywords in table.items():
            target.add_argument(flag, **keywords)
    parser.set_defaults(run=command.run, **command.defaults)


def _run_options(name: str, texts: dict[str, str]) -> OptionTable:
    """What every full run takes: its data folder, run folder, preset, seed and ``--resume``.

    ``texts`` holds the help of ``data_dir``, ``preset``, ``seed`` and ``resume`` (and, optionally,
    the data folder's ``data_metavar``).
    """
    return {
        "--data-dir": {"metavar": texts.get("data_metavar"), "help": texts["data_dir"]},
        "--out": {"default": f"runs/{name}", "help": f"run folder (default: runs/{name})"},
        "--preset": {"choices": PRESET_CHOICES, "default": "demo", "help": texts["preset"]},
        "--seed": {"type": int, "default": 0, "help": texts["seed"]},
        "--resume": {"action": "store_true", "help": texts["resume"]},
    }


def _scenario_option() -> OptionTable:
    from pipeline.sources.scenarios import SCENARIOS

    return {
        "--synthetic-scenario": {
            "choices": SCENARIOS,
            "default": "planted",
            "help": "synthetic data only: planted (emotion effects planted in known blocks, the default), "
            "null (ratings independent of the EEG) or confound (subject rating habits, a rhythm that "
            "follows the habit, and a moderate genuine within-subject effect)",
        }
    }


def _seed_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1 seed")
    return value


def _betas(text: str) -> list[float]:
    """``--beta 1,2,4,6`` → [1.0, 2.0, 4.0, 6.0]; positive, distinct numbers only."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not all(value > 0 and value < float("inf") for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every β must be a positive finite number")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} lists a value twice")
    return values


_SEEDS_OPTION: OptionTable = {
    "--seeds": {
        "type": _seed_count,
        "default": 1,
        "metavar": "N",
        "help": "train N β-VAEs (model seeds SEED … SEED+N-1, one split) and report in how many of them "
        "each factor and block is found (default: 1)",
    }
}
_DASK_OPTIONS = _OneOf(
    {
        "--dask-address": {
            "metavar": "ADDRESS",
            "help": "preprocess on a running Dask cluster, e.g. tcp://10.0.0.5:8786 (its workers must "
            "reach the data and the run folder)",
        },
        "--dask-workers": {
            "type": int,
            "metavar": "N",
            "help": "preprocess on a Dask LocalCluster of N worker processes started for this run",
        },
    }
)


def _schedule_options(folders_required: bool = True) -> OptionTable:
    from flows.deployments import DEFAULT_NIGHTLY_CRON, DEFAULT_SETTLE_SECONDS, DEFAULT_WEEKLY_CRON

    return {
        "--inbox": {
            "required": folders_required,
            "metavar": "DIR",
            "help": "folder new recordings are put in",
        },
        "--out": {
            "required": folders_required,
            "metavar": "DIR",
            "help": "run folder the recordings are added to",
        },
        "--nightly": {
            "default": DEFAULT_NIGHTLY_CRON,
            "metavar": "CRON",
            "help": "cron of the nightly ingest",
        },
        "--weekly": {"default": DEFAULT_WEEKLY_CRON, "metavar": "CRON", "help": "cron of the weekly retrain"},
        "--timezone": {"default": "UTC", "help": "IANA zone of the cron times (default UTC)"},
        "--settle-seconds": {
            "type": float,
            "default": DEFAULT_SETTLE_SECONDS,
            "help": "leave files changed more recently than this for the next run (still being copied)",
        },
        "--interpolate-missing": {
            "action": "store_true",
            "help": "interpolate up to 8 missing DEAP channels",
        },
    }


_PREPROCESS = _Command(
    help="DEAP signals → band images → OUT/frames.zarr",
    description="Turn DEAP subject files (or the synthetic DEAP) into the frame store OUT/frames.zarr. "
    "Re-running skips trials already stored; new files are appended.",
    options=(
        _OneOf(
            {
                "--data-dir": {"help": "folder of DEAP sXX.dat (data_preprocessed_python) or sXX.mat files"},
                "--synthetic": {"action": "store_true", "help": "use the built-in synthetic DEAP (default)"},
            }
        ),
        {
            "--out": {"required": True, "help": STORE_OUT_HELP},
            "--subjects": {
                "type": int,
                "default": None,
                "help": "synthetic data only: number of subjects (default 32)",
            },
            "--seed": {"type": int, "default": 0, "help": "synthetic data only: generator seed"},
        },
        _scenario_option,
        _DASK_OPTIONS,
    ),
    run=commands.run_preprocess,
)

_DEAP_RUN_TEXTS = {
    "data_dir": "folder of DEAP sXX.dat or sXX.mat files (default: the synthetic DEAP)",
    "preset": "demo: minutes on a 2-core CPU; paper: the paper's settings (128 latents, β=6, 300 epochs; "
    "GPU)",
    "seed": "seeds the data split, the models and the synthetic data",
    "resume": "continue VAE training from its last checkpoint",
}
# DEAP's own options after the shared run options.
_DEAP_OPTIONS: OptionTable = {
    "--subjects": {
        "type": int,
        "default": None,
        "help": "synthetic data only: number of subjects (default: the preset's)",
    },
    "--mixed-precision": {
        "action": "store_true",
        "help": "bf16 autocast for β-VAE training on a GPU (ignored on CPU)",
    },
    "--compile": {
        "action": "store_true",
        "help": "torch.compile the β-VAE before training (pays a compilation first; meant for a GPU)",
    },
    "--protocol": {
        "choices": ("trial", "subject", "both"),
        "default": None,
        "help": "split by trial, by subject (held-out subjects), or both, each with its own models "
        "(default: trial for demo, both for paper)",
    },
    "--beta": {
        "type": _betas,
        "default": None,
        "metavar": "B[,B...]",
        "help": "the β-VAE's β; several values (e.g. 1,2,4,6) train one model each and keep one by "
        "its validation reconstruction (default: the preset's)",
    },
}
_DEAP = _Command(
    help="the whole pipeline on DEAP: frames, β-VAE, Î ranking, LSTM, top-k tables, report",
    description="Preprocess DEAP (or the synthetic DEAP), train the frame β-VAE, rank its factors by "
    "Î(X;Z_j), classify emotion with the 63-step LSTM, and write OUT/report.json and OUT/report.html.",
    options=(
        _run_options("deap", _DEAP_RUN_TEXTS),
        _DEAP_OPTIONS,
        _SEEDS_OPTION,
        _scenario_option,
        _DASK_OPTIONS,
    ),
    run=commands.run_deap,
)

_INGEST = _Command(
    help="add new recordings to a run: store, encode with its model, rewrite the report",
    description="Add recordings (.bdf .edf .fif .fif.gz .set .vhdr, each with <stem>_labels.csv "
    "beside it) to OUT/frames.zarr without touching stored trials; a file already stored (same "
    "bytes) is skipped. If OUT holds trained models, the new trials are encoded with them and the "
    "report is rewritten without retraining; --retrain fits the models again on everything stored.",
    options=(
        {
            "recordings": {"nargs": "*", "metavar": "RECORDING", "help": "recording files"},
            "--inbox": {
                "metavar": "DIR",
                "help": "take the recordings in DIR not stored before (see `eegmi serve`)",
            },
            "--out": {"required": True, "help": STORE_OUT_HELP},
            "--retrain": {"action": "store_true", "help": "refit split, β-VAE and LSTM on everything"},
            "--interpolate-missing": {
                "action": "store_true",
                "help": "interpolate up to 8 missing DEAP channels instead of refusing the recording",
            },
            "--preset": {
                "choices": PRESET_CHOICES,
                "default": None,
                "help": "settings for --retrain (default: those recorded in OUT/report.json, else demo)",
            },
            "--seed": {"type": int, "default": 0, "help": "seed for --preset"},
        },
        _DASK_OPTIONS,
    ),
    run=commands.run_ingest,
)

_SERVE = _Command(
    help="serve the scheduled runs: nightly ingest of an inbox, weekly retrain",
    description="Register the nightly-ingest and weekly-retrain deployments with the Prefect API "
    "(PREFECT_API_URL, or a temporary local server) and run them on schedule until Ctrl-C.",
    options=(_schedule_options, {"--limit": {"type": int, "default": None, "help": "most runs at once"}}),
    run=commands.run_serve,
)

_DEPLOYMENTS = _Command(
    help="list the scheduled runs `eegmi serve` would serve, without starting anything",
    description="Print each deployment with its cron schedule, next run and parameters. With no "
    "arguments, the defaults are listed and the folders are shown as the options that set them.",
    options=(lambda: _schedule_options(folders_required=False),),
    run=commands.run_deployments,
)

_SCHEMA = _Command(
    help="print the JSON Schema of report.json (or of a DEAP data manifest)",
    description="Print a JSON Schema shipped with eegmi: that of OUT/report.json (the default; its "
    "schema_version is the one every report records), or with 'manifest' that of the DEAP-style data "
    "manifests (data_manifests/deap.yaml). Validate a report elsewhere with any JSON Schema "
    "2020-12 validator.",
    options=(
        {
            "document": {
                "nargs": "?",
                "choices": ("report", "manifest"),
                "default": "report",
                "help": "which schema",
            }
        },
    ),
    run=commands.run_schema,
)

_IMAGE_RUN_TEXTS = {
    "data_metavar": "DIR",
    "preset": "demo: minutes on a 2-core CPU (a capped share of the images, few epochs); paper: every "
    "image and the paper's epochs (GPU). The model is the paper's in both.",
    "seed": "seeds the data split, the model and embedded data",
    "resume": "continue β-VAE training from its last checkpoint",
}


def _image_command(dataset: str, help: str, description: str, data_help: str) -> _Command:
    """An image data set's command: it runs the flow flows.<dataset>.<dataset>; only the texts differ."""
    return _Command(
        help=help,
        description=description,
        options=(_run_options(dataset, {**_IMAGE_RUN_TEXTS, "data_dir": data_help}), _SEEDS_OPTION),
        run=commands.run_image_flow,
        defaults={"dataset": dataset},
    )


# The commands in the order `eegmi --help` lists them.
_COMMANDS: dict[str, _Command] = {
    "preprocess": _PREPROCESS,
    "deap": _DEAP,
    "mnist": _image_command(
        "mnist",
        help="MNIST through the same stages: store, β-VAE, Î ranking, Table 2, traversals, report",
        description="Store MNIST's IDX files (or, without --data-dir, scikit-learn's 1797 digits laid "
        "out like MNIST), train the paper's 128-latent β-VAE, rank its factors by Î(X;Z_j) and write "
        "OUT/report.json and OUT/report.html with traversal montages of the top factors.",
        data_help="folder of the four MNIST IDX files, raw or .gz (Fashion-MNIST too)",
    ),
    "celeba": _image_command(
        "celeba",
        help="CelebA through the same stages: store, β-VAE, Î ranking, Table 2, traversals, report",
        description="Store CelebA's aligned JPEGs as 64x64 RGB (or, without --data-dir, procedural "
        "images with 4 known factors), train the paper's β-VAE, rank its factors by Î(X;Z_j) and write "
        "OUT/report.json and OUT/report.html. An unreadable image is named and skipped.",
        data_help="CelebA root holding img_align_celeba/ (and list_eval_partition.txt)",
    ),
    "ingest": _INGEST,
    "serve": _SERVE,
    "deployments": _DEPLOYMENTS,
    "schema": _SCHEMA,
}


def _thread_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch and numpy, and parallel preprocessing tasks (default: a fair "
        "share of the usable cores among the eegmi runs alive, following them as they start and "
        "end; OMP_NUM_THREADS also sets it)",
    )
    return options


class _WithThreadOptions(argparse._SubParsersAction):
    """Every command takes --threads (after the command name, like its other options)."""

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs.setdefault("parents", []).append(_thread_options())
        return super().add_parser(name, **kwargs)


def configure_threads(args: argparse.Namespace) -> None:
    """Apply the thread policy (pipeline.threads) before torch or numpy starts its thread pools,
    and register the run so that runs alive at once share the cores (:func:`release_threads` ends it)."""
    from pipeline.threads import apply_thread_environment, choose_thread_policy, start_run

    if args.command == "serve":
        # serve waits; its scheduled runs (child processes) register and take their share themselves.
        policy = choose_thread_policy(args.threads, other_runs=0)
    else:
        policy = choose_thread_policy(args.threads)
        start_run(policy)
    apply_thread_environment(policy)
    if "torch" in sys.modules:  # already loaded (eegmi called from Python): set its pool directly
        sys.modules["torch"].set_num_threads(policy.threads)


def release_threads() -> None:
    """The run is over: other runs may take its cores."""
    from pipeline.threads import end_run

    end_run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eegmi",
        description="Influential VAE factors and emotion-carrying scalp regions in EEG (Liu et al.).",
    )
    parser.register("action", "parsers", _WithThreadOptions)
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in _COMMANDS.items():
        _add_command(subcommands, name, command)
    return parser


def _check_arguments_are_unicode(args: argparse.Namespace) -> None:
    """Refuse a path that is not valid UTF-8 up front: flow parameters travel as JSON, which
    cannot hold it, and the failure would come later as a traceback."""
    from pipeline.errors import InputError

    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise InputError(
                        f"--{name.replace('_', '-')}",
                        f"{os.fsencode(text)!r} is not valid UTF-8; rename it or use another path",
                    ) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_offline_prefect()
    log_named_errors_without_traceback()
    from pipeline.errors import InputError

    try:
        _check_arguments_are_unicode(args)
        configure_threads(args)
        with heartbeats_only_for_a_server():
            return args.run(args)
    except InputError as error:
        print(f"eegmi: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        release_threads()


def run_command(argv: list[str] | None = None) -> None:
    """The ``eegmi`` entry point: :func:`main` with a watchdog that stops what the run started
    however it ends, and SIGTERM or Ctrl-C turned into one line and a prompt exit."""
    start_watchdog()
    stop_on_sigterm()
    try:
        code = main(argv)
    except Terminated:
        print("eegmi: stopped by SIGTERM; everything stored before is intact", file=sys.stderr)
        exit_now(EXIT_TERMINATED)
    except KeyboardInterrupt:
        print("eegmi: interrupted; everything stored before is intact", file=sys.stderr)
        exit_now(EXIT_INTERRUPTED)
    sys.exit(code)


if __name__ == "__main__":
    run_command()

"""The ``eegmi`` command line: parses arguments, runs a flow, turns its outcome into an exit code.

The parser lives here; what each command does with its arguments is in :mod:`flows.commands`.
"""

from __future__ import annotations

import argparse
import os
import sys

from flows import commands
from flows._runtime import (
    EXIT_TERMINATED,
    Terminated,
    configure_offline_prefect,
    exit_now,
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


def _add_run_options(parser: argparse.ArgumentParser, name: str, texts: dict[str, str]) -> None:
    """What every full run takes: its data folder, run folder, preset, seed and ``--resume``.

    ``texts`` holds the help of ``data_dir``, ``preset``, ``seed`` and ``resume`` (and, optionally,
    the data folder's ``data_metavar``).
    """
    parser.add_argument("--data-dir", metavar=texts.get("data_metavar"), help=texts["data_dir"])
    parser.add_argument("--out", default=f"runs/{name}", help=f"run folder (default: runs/{name})")
    parser.add_argument("--preset", choices=PRESET_CHOICES, default="demo", help=texts["preset"])
    parser.add_argument("--seed", type=int, default=0, help=texts["seed"])
    parser.add_argument("--resume", action="store_true", help=texts["resume"])


def _add_preprocess(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "preprocess",
        help="DEAP signals → band images → OUT/frames.zarr",
        description="Turn DEAP subject files (or the synthetic DEAP) into the frame store OUT/frames.zarr. "
        "Re-running skips trials already stored; new files are appended.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir", help="folder of DEAP sXX.dat (data_preprocessed_python) or sXX.mat files"
    )
    source.add_argument("--synthetic", action="store_true", help="use the built-in synthetic DEAP (default)")
    parser.add_argument("--out", required=True, help=STORE_OUT_HELP)
    parser.add_argument(
        "--subjects", type=int, default=None, help="synthetic data only: number of subjects (default 32)"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic data only: generator seed")
    _add_scenario_option(parser)
    _add_dask_options(parser)
    parser.set_defaults(run=commands.run_preprocess)


def _add_scenario_option(parser: argparse.ArgumentParser) -> None:
    from pipeline.sources.synthetic_spec import SCENARIOS

    parser.add_argument(
        "--synthetic-scenario",
        choices=SCENARIOS,
        default="planted",
        help="synthetic data only: planted (emotion effects planted in known blocks, the default), "
        "null (ratings independent of the EEG) or confound (subject rating habits, a rhythm that follows "
        "the habit, and a moderate genuine within-subject effect)",
    )


_DEAP_RUN_TEXTS = {
    "data_dir": "folder of DEAP sXX.dat or sXX.mat files (default: the synthetic DEAP)",
    "preset": "demo: minutes on a 2-core CPU; paper: the paper's settings (128 latents, β=6, 300 epochs; "
    "GPU)",
    "seed": "seeds the data split, the models and the synthetic data",
    "resume": "continue VAE training from its last checkpoint",
}
# DEAP's own options after the shared ones: flag -> add_argument keywords.
_DEAP_OPTIONS: dict[str, dict] = {
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
}


def _add_deap(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "deap",
        help="the whole pipeline on DEAP: frames, β-VAE, Î ranking, LSTM, top-k tables, report",
        description="Preprocess DEAP (or the synthetic DEAP), train the frame β-VAE, rank its factors by "
        "Î(X;Z_j), classify emotion with the 63-step LSTM, and write OUT/report.json and OUT/report.html.",
    )
    _add_run_options(parser, "deap", _DEAP_RUN_TEXTS)
    for flag, options in _DEAP_OPTIONS.items():
        parser.add_argument(flag, **options)
    parser.add_argument(
        "--beta",
        type=_betas,
        default=None,
        metavar="B[,B...]",
        help="the β-VAE's β; several values (e.g. 1,2,4,6) train one model each and keep one by "
        "its validation reconstruction (default: the preset's)",
    )
    _add_seeds_option(parser)
    _add_scenario_option(parser)
    _add_dask_options(parser)
    parser.set_defaults(run=commands.run_deap)


def _add_seeds_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seeds",
        type=_seed_count,
        default=1,
        metavar="N",
        help="train N β-VAEs (model seeds SEED … SEED+N-1, one split) and report in how many of them "
        "each factor and block is found (default: 1)",
    )


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


def _add_dask_options(parser: argparse.ArgumentParser) -> None:
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument(
        "--dask-address",
        metavar="ADDRESS",
        help="preprocess on a running Dask cluster, e.g. tcp://10.0.0.5:8786 (its workers must reach "
        "the data and the run folder)",
    )
    cluster.add_argument(
        "--dask-workers",
        type=int,
        metavar="N",
        help="preprocess on a Dask LocalCluster of N worker processes started for this run",
    )


def _add_ingest(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "ingest",
        help="add new recordings to a run: store, encode with its model, rewrite the report",
        description="Add recordings (.bdf .edf .fif .fif.gz .set .vhdr, each with <stem>_labels.csv "
        "beside it) to OUT/frames.zarr without touching stored trials; a file already stored (same "
        "bytes) is skipped. If OUT holds trained models, the new trials are encoded with them and the "
        "report is rewritten without retraining; --retrain fits the models again on everything stored.",
    )
    parser.add_argument("recordings", nargs="*", metavar="RECORDING", help="recording files")
    parser.add_argument(
        "--inbox", metavar="DIR", help="take the recordings in DIR not stored before (see `eegmi serve`)"
    )
    parser.add_argument("--out", required=True, help=STORE_OUT_HELP)
    parser.add_argument("--retrain", action="store_true", help="refit split, β-VAE and LSTM on everything")
    parser.add_argument(
        "--interpolate-missing",
        action="store_true",
        help="interpolate up to 8 missing DEAP channels instead of refusing the recording",
    )
    parser.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        default=None,
        help="settings for --retrain (default: those recorded in OUT/report.json, else demo)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --preset")
    _add_dask_options(parser)
    parser.set_defaults(run=commands.run_ingest)


def _add_schedule_options(parser: argparse.ArgumentParser, folders_required: bool = True) -> None:
    from flows.deployments import DEFAULT_NIGHTLY_CRON, DEFAULT_SETTLE_SECONDS, DEFAULT_WEEKLY_CRON

    for flag, help_text in (
        ("--inbox", "folder new recordings are put in"),
        ("--out", "run folder the recordings are added to"),
    ):
        parser.add_argument(flag, required=folders_required, metavar="DIR", help=help_text)
    for flag, default, which in (
        ("--nightly", DEFAULT_NIGHTLY_CRON, "nightly ingest"),
        ("--weekly", DEFAULT_WEEKLY_CRON, "weekly retrain"),
    ):
        parser.add_argument(flag, default=default, metavar="CRON", help=f"cron of the {which}")
    parser.add_argument("--timezone", default="UTC", help="IANA zone of the cron times (default UTC)")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=DEFAULT_SETTLE_SECONDS,
        help="leave files changed more recently than this for the next run (still being copied)",
    )
    parser.add_argument(
        "--interpolate-missing", action="store_true", help="interpolate up to 8 missing DEAP channels"
    )


def _add_serve(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "serve",
        help="serve the scheduled runs: nightly ingest of an inbox, weekly retrain",
        description="Register the nightly-ingest and weekly-retrain deployments with the Prefect API "
        "(PREFECT_API_URL, or a temporary local server) and run them on schedule until Ctrl-C.",
    )
    _add_schedule_options(parser)
    parser.add_argument("--limit", type=int, default=None, help="most runs at once")
    parser.set_defaults(run=commands.run_serve)


def _add_deployments(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "deployments",
        help="list the scheduled runs `eegmi serve` would serve, without starting anything",
        description="Print each deployment with its cron schedule, next run and parameters. With no "
        "arguments, the defaults are listed and the folders are shown as the options that set them.",
    )
    _add_schedule_options(parser, folders_required=False)
    parser.set_defaults(run=commands.run_deployments)


def _add_schema(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "schema",
        help="print the JSON Schema of report.json (or of a DEAP data manifest)",
        description="Print a JSON Schema shipped with eegmi: that of OUT/report.json (the default; its "
        "schema_version is the one every report records), or with 'manifest' that of the DEAP-style data "
        "manifests (data_manifests/deap.yaml). Validate a report elsewhere with any JSON Schema "
        "2020-12 validator.",
    )
    parser.add_argument(
        "document", nargs="?", choices=("report", "manifest"), default="report", help="which schema"
    )
    parser.set_defaults(run=commands.run_schema)


_IMAGE_RUN_TEXTS = {
    "data_metavar": "DIR",
    "preset": "demo: minutes on a 2-core CPU (a capped share of the images, few epochs); paper: every "
    "image and the paper's epochs (GPU). The model is the paper's in both.",
    "seed": "seeds the data split, the model and embedded data",
    "resume": "continue β-VAE training from its last checkpoint",
}
# Each image data set's command runs the flow flows.<dataset>.<dataset>; only the texts differ.
_IMAGE_COMMANDS: dict[str, dict[str, str]] = {
    "mnist": {
        "help": "MNIST through the same stages: store, β-VAE, Î ranking, Table 2, traversals, report",
        "description": "Store MNIST's IDX files (or, without --data-dir, scikit-learn's 1797 digits laid "
        "out like MNIST), train the paper's 128-latent β-VAE, rank its factors by Î(X;Z_j) and write "
        "OUT/report.json and OUT/report.html with traversal montages of the top factors.",
        "data_help": "folder of the four MNIST IDX files, raw or .gz (Fashion-MNIST too)",
    },
    "celeba": {
        "help": "CelebA through the same stages: store, β-VAE, Î ranking, Table 2, traversals, report",
        "description": "Store CelebA's aligned JPEGs as 64x64 RGB (or, without --data-dir, procedural "
        "images with 4 known factors), train the paper's β-VAE, rank its factors by Î(X;Z_j) and write "
        "OUT/report.json and OUT/report.html. An unreadable image is named and skipped.",
        "data_help": "CelebA root holding img_align_celeba/ (and list_eval_partition.txt)",
    },
}


def _add_image_commands(subcommands: argparse._SubParsersAction) -> None:
    for dataset, texts in _IMAGE_COMMANDS.items():
        parser = subcommands.add_parser(dataset, help=texts["help"], description=texts["description"])
        _add_run_options(parser, dataset, {**_IMAGE_RUN_TEXTS, "data_dir": texts["data_help"]})
        _add_seeds_option(parser)
        parser.set_defaults(run=commands.run_image_flow, dataset=dataset)


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
    for add in (
        _add_preprocess,
        _add_deap,
        _add_image_commands,
        _add_ingest,
        _add_serve,
        _add_deployments,
        _add_schema,
    ):
        add(subcommands)
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

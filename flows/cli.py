"""The ``eegmi`` command line: parses arguments, runs a flow, turns its outcome into an exit code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from flows._runtime import (
    EXIT_TERMINATED,
    Terminated,
    configure_offline_prefect,
    exit_now,
    log_named_errors_without_traceback,
    stop_on_sigterm,
)
from flows._watchdog import start_watchdog

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130


def _print_file_failures(failures: dict[str, str]) -> None:
    """One stderr line per source file that failed, naming it and what is wrong."""
    for name, why in failures.items():
        print(f"eegmi: error: {name}: {why}", file=sys.stderr)


def _add_preprocess(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
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
    parser.add_argument("--out", required=True, help="run folder; the store is OUT/frames.zarr")
    parser.add_argument(
        "--subjects", type=int, default=None, help="synthetic data only: number of subjects (default 32)"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic data only: generator seed")
    _add_scenario_option(parser)
    _add_dask_options(parser)
    parser.set_defaults(run=_run_preprocess)


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


def _check_out_folder(args: argparse.Namespace) -> None:
    """Refuse an unusable --out (an over-long path, a URL without its filesystem, a read-only
    folder) in one line before a Prefect server starts: inside the flow, Prefect would log the
    refusal with its traceback. Called after the inputs are checked, since it creates the folder."""
    from pipeline.runlock import check_run_folder

    # Training, checkpoints and the report need a local folder; a frame store alone may be a URL.
    check_run_folder(args.out, local_only=args.command != "preprocess")


def _synthetic_spec(args: argparse.Namespace, n_subjects: int | None):
    """The synthetic data's spec, after checking that the run folder's store may take it.

    Refusals come here, in one line, before a Prefect server starts for the flow.
    """
    from pipeline.ingest import check_store_accepts
    from pipeline.sources.synthetic_spec import scenario_spec

    settings = {"seed": args.seed} if n_subjects is None else {"seed": args.seed, "n_subjects": n_subjects}
    spec = scenario_spec(args.synthetic_scenario, **settings)
    _check_out_folder(args)
    check_store_accepts(args.out, "synthetic", spec.identity())
    return spec


def _run_preprocess(args: argparse.Namespace) -> int:
    from pipeline.manifests import check_folder

    synthetic = None
    # Bad input is reported here, in one line, before a Prefect server starts for the flow.
    if args.data_dir is not None:
        check_folder(args.data_dir, "deap")
        _check_out_folder(args)
    else:
        synthetic = _synthetic_spec(args, args.subjects).to_dict()

    from flows.deap import SourceFilesFailed, preprocess_deap
    from flows.runners import preprocess_task_runner

    runner = preprocess_task_runner(args.dask_address, args.dask_workers)
    state = preprocess_deap.with_options(task_runner=runner)(
        out_dir=args.out, data_dir=args.data_dir, synthetic=synthetic, return_state=True
    )
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, SourceFilesFailed):
        _print_file_failures(outcome.failures)
        n_failed, n_stored = len(outcome.failures), outcome.n_stored_files
        print(f"eegmi: {n_failed} file(s) failed; {n_stored} stored", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(outcome, BaseException):
        raise outcome
    print(
        f"{outcome['store']}: {outcome['n_trials_stored']} trials stored "
        f"({outcome['n_trials_new']} new from {outcome['n_files']} file(s))"
    )
    return EXIT_OK


def _add_deap(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "deap",
        help="the whole pipeline on DEAP: frames, β-VAE, Î ranking, LSTM, top-k tables, report",
        description="Preprocess DEAP (or the synthetic DEAP), train the frame β-VAE, rank its factors by "
        "Î(X;Z_j), classify emotion with the 63-step LSTM, and write OUT/report.json and OUT/report.html.",
    )
    parser.add_argument(
        "--data-dir", help="folder of DEAP sXX.dat or sXX.mat files (default: the synthetic DEAP)"
    )
    parser.add_argument("--out", default="runs/deap", help="run folder (default: runs/deap)")
    parser.add_argument(
        "--preset",
        choices=("demo", "paper"),
        default="demo",
        help="demo: minutes on a 2-core CPU; paper: the paper's settings (128 latents, β=6, 300 epochs; GPU)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the data split, the models and the synthetic data"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue VAE training from its last checkpoint"
    )
    parser.add_argument(
        "--subjects",
        type=int,
        default=None,
        help="synthetic data only: number of subjects (default: the preset's)",
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="bf16 autocast for β-VAE training on a GPU (ignored on CPU)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the β-VAE before training (pays a compilation first; meant for a GPU)",
    )
    parser.add_argument(
        "--protocol",
        choices=("trial", "subject", "both"),
        default=None,
        help="split by trial, by subject (held-out subjects), or both, each with its own models "
        "(default: trial for demo, both for paper)",
    )
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
    parser.set_defaults(run=_run_deap)


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


def _run_deap(args: argparse.Namespace) -> int:
    from flows.deap import check_seed_options

    check_seed_options(args.seeds, args.beta)  # before the flow: a refusal is one line, not a traceback
    if args.data_dir is not None:
        _check_out_folder(args)  # the flow checks the data folder against its manifest
    else:
        from pipeline.presets import deap_preset

        _synthetic_spec(args, args.subjects or deap_preset(args.preset).synthetic_subjects)
    from flows.deap import SourceFilesFailed, deap

    state = deap(
        out_dir=args.out,
        data_dir=args.data_dir,
        preset=args.preset,
        seed=args.seed,
        resume=args.resume,
        protocol=args.protocol,
        betas=args.beta,
        synthetic_subjects=args.subjects,
        dask_address=args.dask_address,
        dask_workers=args.dask_workers,
        mixed_precision=args.mixed_precision,
        compile_model=args.compile,
        synthetic_scenario=args.synthetic_scenario,
        n_seeds=args.seeds,
        return_state=True,
    )
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, SourceFilesFailed):
        _print_file_failures(outcome.failures)
        print("eegmi: stopped before training: fix or remove the files above and rerun", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(outcome, BaseException):
        raise outcome
    print(f"report: {outcome['report_html']}")
    print(f"Î: {outcome['n_influential']} influential factor(s); emotion-linked: {outcome['linked']}")
    stability = outcome.get("stability")
    if stability is not None and stability["n_seeds"] > 1:
        print(
            f"seeds: {stability['n_seeds']}; the report's factors, LSTM and top-k tables are seed "
            f"{stability['reported_seed']}'s (the most representative)"
        )
        blocks = [
            f"{'-'.join(block['electrodes'])} ({block['band']}, z{block['factor']}, "
            f"found in {block['seeds_found']} of {block['n_seeds']} seeds, linked in {block['seeds_linked']})"
            for block in outcome["linked_blocks"]
        ]
        print(f"emotion-linked blocks found in most seeds: {', '.join(blocks) or 'none'}")
    if outcome.get("beta_sweep"):
        print(f"β sweep: kept β = {outcome['beta_sweep']['chosen_beta']:g} ({outcome['beta_sweep']['rule']})")
    for protocol, figures in outcome["classification"].items():
        print(f"LSTM, split by {protocol}: {figures['verdict']}")
    if outcome["ground_truth_passed"] is not None:
        # Scenario-neutral: under `null` the truth is that nothing may be linked.
        verdict = "matches" if outcome["ground_truth_passed"] else "does NOT match"
        print(f"synthetic data: the report {verdict} the scenario's ground truth (see ground_truth_check)")
    return EXIT_OK


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


def _add_ingest(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
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
    parser.add_argument("--out", required=True, help="run folder; the store is OUT/frames.zarr")
    parser.add_argument("--retrain", action="store_true", help="refit split, β-VAE and LSTM on everything")
    parser.add_argument(
        "--interpolate-missing",
        action="store_true",
        help="interpolate up to 8 missing DEAP channels instead of refusing the recording",
    )
    parser.add_argument(
        "--preset",
        choices=("demo", "paper"),
        default=None,
        help="settings for --retrain (default: those recorded in OUT/report.json, else demo)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --preset")
    _add_dask_options(parser)
    parser.set_defaults(run=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from pipeline.errors import InputError

    if args.recordings and args.inbox:
        raise InputError("eegmi ingest", "give recording files or --inbox DIR, not both")
    if not (args.recordings or args.inbox or args.retrain):
        raise InputError("eegmi ingest", "nothing to do: give recording files, --inbox DIR or --retrain")
    from flows.deap import SourceFilesFailed
    from flows.ingest import ingest_inbox, ingest_recordings

    common = {
        "out_dir": args.out,
        "retrain": args.retrain,
        "interpolate_missing": args.interpolate_missing,
        "preset": args.preset,
        "seed": args.seed,
        "dask_address": args.dask_address,
        "dask_workers": args.dask_workers,
    }
    if args.inbox:
        state = ingest_inbox(inbox_dir=args.inbox, **common, return_state=True)
    else:
        state = ingest_recordings(recordings=args.recordings, **common, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, SourceFilesFailed):
        _print_file_failures(outcome.failures)
        n_failed, n_stored = len(outcome.failures), outcome.n_stored_files
        print(f"eegmi: {n_failed} recording(s) failed; {n_stored} stored and processed", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(outcome, BaseException):
        raise outcome
    print(
        f"{outcome['store']}: {outcome['n_trials_stored']} trials stored "
        f"({outcome['n_trials_new']} new from {outcome['n_recordings']} recording(s))"
    )
    if outcome["action"] == "nothing stored":
        print("no trials stored yet: nothing to train, encode or report")
    elif outcome["action"] == "stored only":
        print(f"no trained models in {args.out} yet: run `eegmi ingest --retrain --out {args.out}` to train")
    else:
        print(f"models {outcome['action']}; {outcome['n_encoded']} trial(s) encoded")
        print(f"report: {outcome['report_html']}")
    return EXIT_OK


def _add_schedule_options(parser: argparse.ArgumentParser, folders_required: bool = True) -> None:
    from flows.deployments import DEFAULT_NIGHTLY_CRON, DEFAULT_SETTLE_SECONDS, DEFAULT_WEEKLY_CRON

    parser.add_argument(
        "--inbox", required=folders_required, metavar="DIR", help="folder new recordings are put in"
    )
    parser.add_argument(
        "--out", required=folders_required, metavar="DIR", help="run folder the recordings are added to"
    )
    parser.add_argument(
        "--nightly", default=DEFAULT_NIGHTLY_CRON, metavar="CRON", help="cron of the nightly ingest"
    )
    parser.add_argument(
        "--weekly", default=DEFAULT_WEEKLY_CRON, metavar="CRON", help="cron of the weekly retrain"
    )
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


def _schedule_specs(args: argparse.Namespace) -> list:
    from flows.deployments import deployment_specs

    return deployment_specs(
        args.inbox,
        args.out,
        nightly_cron=args.nightly,
        weekly_cron=args.weekly,
        timezone=args.timezone,
        interpolate_missing=args.interpolate_missing,
        settle_seconds=args.settle_seconds,
    )


def _add_serve(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve the scheduled runs: nightly ingest of an inbox, weekly retrain",
        description="Register the nightly-ingest and weekly-retrain deployments with the Prefect API "
        "(PREFECT_API_URL, or a temporary local server) and run them on schedule until Ctrl-C.",
    )
    _add_schedule_options(parser)
    parser.add_argument("--limit", type=int, default=None, help="most runs at once")
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from flows.deployments import serve_deployments

    serve_deployments(_schedule_specs(args), limit=args.limit)
    return EXIT_OK


def _add_deployments(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "deployments",
        help="list the scheduled runs `eegmi serve` would serve, without starting anything",
        description="Print each deployment with its cron schedule, next run and parameters. With no "
        "arguments, the defaults are listed and the folders are shown as the options that set them.",
    )
    _add_schedule_options(parser, folders_required=False)
    parser.set_defaults(run=_run_deployments)


def _run_deployments(args: argparse.Namespace) -> int:
    from flows.deployments import describe

    print(describe(_schedule_specs(args)))
    if args.inbox is None or args.out is None:
        print(
            "\nServe them with `eegmi serve --inbox DIR --out DIR` (plus any schedule options given "
            "here); `eegmi deployments --inbox DIR --out DIR` lists them with those folders."
        )
    return EXIT_OK


def _add_schema(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
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
    parser.set_defaults(run=_run_schema)


def _run_schema(args: argparse.Namespace) -> int:
    from pipeline.schemas import schema_text

    sys.stdout.write(schema_text(args.document))
    return EXIT_OK


def _add_image_options(parser: argparse.ArgumentParser, dataset: str, data_help: str) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help=data_help)
    parser.add_argument("--out", default=f"runs/{dataset}", help=f"run folder (default: runs/{dataset})")
    parser.add_argument(
        "--preset",
        choices=("demo", "paper"),
        default="demo",
        help="demo: minutes on a 2-core CPU (a capped share of the images, few epochs); paper: every "
        "image and the paper's epochs (GPU). The model is the paper's in both.",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the data split, the model and embedded data"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue β-VAE training from its last checkpoint"
    )
    _add_seeds_option(parser)


def _print_image_outcome(outcome: dict) -> None:
    for entry in outcome["skipped"]:
        print(f"eegmi: skipped unreadable image {entry['name']}: {entry['reason']}", file=sys.stderr)
    cutoff = outcome["information_cutoff"]
    verdict = "within" if cutoff["within_tolerance"] else "NOT within"
    print(f"report: {outcome['report_html']}")
    print(
        f"Î: {outcome['n_influential']} of {outcome['n_factors']} factor(s) influential, "
        f"total {outcome['total_mi_nats']:.3g} nats"
    )
    print(
        f"Table 2: the top {cutoff['n_factors']} factor(s) hold {100 * cutoff['share']:.0f} % of Î; MSE "
        f"{cutoff['mse']:.4g} against {cutoff['mse_all_factors']:.4g} with all factors "
        f"({100 * cutoff['relative_increase']:+.1f} %, {verdict} {100 * cutoff['tolerance']:.0f} %)"
    )
    check = outcome["ground_truth_check"]
    if check is not None:
        verdict = "within" if check["within_one"] else "NOT within"
        print(
            f"procedural images: {check['n_true_factors']} true factor(s), {check['n_influential']} "
            f"influential ({verdict} k ± 1)"
        )
    stability = outcome.get("stability")
    if stability is not None and stability["n_seeds"] > 1:
        counts = ", ".join(f"{found} of {stability['n_seeds']}" for found in outcome["seeds_found"])
        print(
            f"seeds: {stability['n_seeds']}; the report is seed {stability['reported_seed']}'s (the most "
            f"representative); its influential factors were found in {counts or 'no'} seeds"
        )


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


def _add_image_commands(commands: argparse._SubParsersAction) -> None:
    for dataset, texts in _IMAGE_COMMANDS.items():
        parser = commands.add_parser(dataset, help=texts["help"], description=texts["description"])
        _add_image_options(parser, dataset, texts["data_help"])
        parser.set_defaults(run=_run_image_flow, dataset=dataset)


def _run_image_flow(args: argparse.Namespace) -> int:
    flow = getattr(importlib.import_module(f"flows.{args.dataset}"), args.dataset)
    state = flow(
        out_dir=args.out,
        data_dir=args.data_dir,
        preset=args.preset,
        seed=args.seed,
        resume=args.resume,
        n_seeds=args.seeds,
        return_state=True,
    )
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        raise outcome
    _print_image_outcome(outcome)
    return EXIT_OK


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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_preprocess(commands)
    _add_deap(commands)
    _add_image_commands(commands)
    _add_ingest(commands)
    _add_serve(commands)
    _add_deployments(commands)
    _add_schema(commands)
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

"""The ``eegmi`` command line: parses arguments, runs a flow, turns its outcome into an exit code."""

from __future__ import annotations

import argparse
import sys

from flows._runtime import configure_offline_prefect

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


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
    parser.set_defaults(run=_run_preprocess)


def _run_preprocess(args: argparse.Namespace) -> int:
    from flows.deap import SourceFilesFailed, preprocess_deap

    synthetic = None
    if args.data_dir is None:
        synthetic = {"seed": args.seed}
        if args.subjects is not None:
            synthetic["n_subjects"] = args.subjects
    state = preprocess_deap(out_dir=args.out, data_dir=args.data_dir, synthetic=synthetic, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, SourceFilesFailed):
        for name, why in outcome.failures.items():
            print(f"eegmi: error: {name}: {why}", file=sys.stderr)
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
    parser.set_defaults(run=_run_deap)


def _run_deap(args: argparse.Namespace) -> int:
    from flows.deap import SourceFilesFailed, deap

    state = deap(
        out_dir=args.out,
        data_dir=args.data_dir,
        preset=args.preset,
        seed=args.seed,
        resume=args.resume,
        synthetic_subjects=args.subjects,
        return_state=True,
    )
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, SourceFilesFailed):
        for name, why in outcome.failures.items():
            print(f"eegmi: error: {name}: {why}", file=sys.stderr)
        print("eegmi: stopped before training: fix or remove the files above and rerun", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(outcome, BaseException):
        raise outcome
    print(f"report: {outcome['report_html']}")
    print(f"Î: {outcome['n_influential']} influential factor(s); emotion-linked: {outcome['linked']}")
    print(f"LSTM test accuracy {outcome['test_accuracy']:.3f} (chance {outcome['chance_accuracy']:.3f})")
    if outcome["ground_truth_passed"] is not None:
        verdict = "recovered" if outcome["ground_truth_passed"] else "NOT all recovered"
        print(f"synthetic data: planted blocks {verdict} (see report.json ground_truth_check)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eegmi",
        description="Influential VAE factors and emotion-carrying scalp regions in EEG (Liu et al.).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_preprocess(commands)
    _add_deap(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_offline_prefect()
    from pipeline.errors import InputError

    try:
        return args.run(args)
    except InputError as error:
        print(f"eegmi: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

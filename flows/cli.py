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
    parser.add_argument("--subjects", type=int, default=None,
                        help="synthetic data only: number of subjects (default 32)")
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
    print(f"{outcome['store']}: {outcome['n_trials_stored']} trials stored "
          f"({outcome['n_trials_new']} new from {outcome['n_files']} file(s))")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eegmi",
        description="Influential VAE factors and emotion-carrying scalp regions in EEG (Liu et al.).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_preprocess(commands)
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

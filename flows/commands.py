"""What each ``eegmi`` command does once its arguments are parsed: check the inputs, run the
flow, print its outcome and return the exit code (:mod:`flows.cli` builds the parser)."""

from __future__ import annotations

import argparse
import importlib
import sys

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _outcome_unless_files_failed(state, failed_summary: str) -> dict | None:
    """The finished flow's outcome; ``None`` when source files failed, after one stderr line per
    failed file (naming it and what is wrong) and ``failed_summary``, which may use
    ``{n_failed}`` and ``{n_stored}``. A flow that crashed raises its exception here."""
    from flows.deap import SourceFilesFailed

    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, SourceFilesFailed):
        for name, why in outcome.failures.items():
            print(f"eegmi: error: {name}: {why}", file=sys.stderr)
        summary = failed_summary.format(n_failed=len(outcome.failures), n_stored=outcome.n_stored_files)
        print(summary, file=sys.stderr)
        return None
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _print_store_growth(outcome: dict, sources: str) -> None:
    """How many trials the store holds and how many of them ``sources`` just added."""
    print(
        f"{outcome['store']}: {outcome['n_trials_stored']} trials stored "
        f"({outcome['n_trials_new']} new from {sources})"
    )


def check_out_folder(args: argparse.Namespace) -> None:
    """Refuse an unusable --out (an over-long path, a URL without its filesystem, a read-only
    folder) in one line before a Prefect server starts: inside the flow, Prefect would log the
    refusal with its traceback. Called after the inputs are checked, since it creates the folder."""
    from pipeline.store.runlock import check_run_folder

    # Training, checkpoints and the report need a local folder; a frame store alone may be a URL.
    check_run_folder(args.out, local_only=args.command != "preprocess")


def synthetic_spec(args: argparse.Namespace, n_subjects: int | None):
    """The synthetic data's spec, after checking that the run folder's store may take it.

    Refusals come here, in one line, before a Prefect server starts for the flow.
    """
    from pipeline.sources.synthetic_spec import scenario_spec
    from pipeline.store.ingest_eeg import check_store_accepts

    settings = {"seed": args.seed} if n_subjects is None else {"seed": args.seed, "n_subjects": n_subjects}
    spec = scenario_spec(args.synthetic_scenario, **settings)
    check_out_folder(args)
    check_store_accepts(args.out, "synthetic", spec.identity())
    return spec


def run_preprocess(args: argparse.Namespace) -> int:
    from pipeline.sources.manifests import check_folder

    synthetic = None
    # Bad input is reported here, in one line, before a Prefect server starts for the flow.
    if args.data_dir is not None:
        check_folder(args.data_dir, "deap")
        check_out_folder(args)
    else:
        synthetic = synthetic_spec(args, args.subjects).to_dict()

    from flows.deap import preprocess_deap
    from flows.runners import preprocess_task_runner

    runner = preprocess_task_runner(args.dask_address, args.dask_workers)
    state = preprocess_deap.with_options(task_runner=runner)(
        out_dir=args.out, data_dir=args.data_dir, synthetic=synthetic, return_state=True
    )
    outcome = _outcome_unless_files_failed(state, "eegmi: {n_failed} file(s) failed; {n_stored} stored")
    if outcome is None:
        return EXIT_FAILED
    _print_store_growth(outcome, f"{outcome['n_files']} file(s)")
    return EXIT_OK


def _full_run_parameters(args: argparse.Namespace) -> dict:
    """The flow parameters of the options every full run takes (DEAP's and the image data sets'):
    data and run folders, preset, seed, ``--resume`` and ``--seeds``."""
    return {
        "out_dir": args.out,
        "data_dir": args.data_dir,
        "preset": args.preset,
        "seed": args.seed,
        "resume": args.resume,
        "n_seeds": args.seeds,
    }


def run_deap(args: argparse.Namespace) -> int:
    from flows.deap import check_seed_options

    check_seed_options(args.seeds, args.beta)  # before the flow: a refusal is one line, not a traceback
    if args.data_dir is not None:
        check_out_folder(args)  # the flow checks the data folder against its manifest
    else:
        from pipeline.models.presets import deap_preset

        synthetic_spec(args, args.subjects or deap_preset(args.preset).synthetic_subjects)
    from flows.deap import deap

    state = deap(
        **_full_run_parameters(args),
        protocol=args.protocol,
        betas=args.beta,
        synthetic_subjects=args.subjects,
        dask_address=args.dask_address,
        dask_workers=args.dask_workers,
        mixed_precision=args.mixed_precision,
        compile_model=args.compile,
        synthetic_scenario=args.synthetic_scenario,
        return_state=True,
    )
    outcome = _outcome_unless_files_failed(
        state, "eegmi: stopped before training: fix or remove the files above and rerun"
    )
    if outcome is None:
        return EXIT_FAILED
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


def run_ingest(args: argparse.Namespace) -> int:
    from pipeline.errors import InputError

    if args.recordings and args.inbox:
        raise InputError("eegmi ingest", "give recording files or --inbox DIR, not both")
    if not (args.recordings or args.inbox or args.retrain):
        raise InputError("eegmi ingest", "nothing to do: give recording files, --inbox DIR or --retrain")
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
    outcome = _outcome_unless_files_failed(
        state, "eegmi: {n_failed} recording(s) failed; {n_stored} stored and processed"
    )
    if outcome is None:
        return EXIT_FAILED
    _print_store_growth(outcome, f"{outcome['n_recordings']} recording(s)")
    if outcome["action"] == "nothing stored":
        print("no trials stored yet: nothing to train, encode or report")
    elif outcome["action"] == "stored only":
        print(f"no trained models in {args.out} yet: run `eegmi ingest --retrain --out {args.out}` to train")
    else:
        print(f"models {outcome['action']}; {outcome['n_encoded']} trial(s) encoded")
        print(f"report: {outcome['report_html']}")
    return EXIT_OK


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


def run_serve(args: argparse.Namespace) -> int:
    from flows.deployments import serve_deployments

    serve_deployments(_schedule_specs(args), limit=args.limit)
    return EXIT_OK


def run_deployments(args: argparse.Namespace) -> int:
    from flows.deployments import describe

    print(describe(_schedule_specs(args)))
    if args.inbox is None or args.out is None:
        print(
            "\nServe them with `eegmi serve --inbox DIR --out DIR` (plus any schedule options given "
            "here); `eegmi deployments --inbox DIR --out DIR` lists them with those folders."
        )
    return EXIT_OK


def run_schema(args: argparse.Namespace) -> int:
    from pipeline.schemas import schema_text

    sys.stdout.write(schema_text(args.document))
    return EXIT_OK


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


def run_image_flow(args: argparse.Namespace) -> int:
    flow = getattr(importlib.import_module(f"flows.{args.dataset}"), args.dataset)
    state = flow(**_full_run_parameters(args), return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        raise outcome
    _print_image_outcome(outcome)
    return EXIT_OK

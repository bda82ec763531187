"""DEAP flows: preprocess signals into the frame store, then learn, rank and report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from prefect import flow, get_run_logger, task, unmapped
from prefect.futures import as_completed

from flows.progress import epoch_progress, progress_display
from flows.runners import cluster_safe, exclusive_run, preprocess_task_runner
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import PreprocessConfig
from pipeline.deap_report import analyse_seed, build_deap_report, majority_linked_blocks
from pipeline.errors import InputError, NamedFailure
from pipeline.factors import FactorRules
from pipeline.ingest import deap_store_spec, ingest_trials, open_store, store_path
from pipeline.learn import (
    LearnConfig,
    can_continue_training,
    checkpoint_model_id,
    classifier_dir,
    fit_store_normalisation,
    keep_secondary_protocols,
    latent_set,
    make_split,
    run_protocols,
    seed_latent_set,
    store_normaliser,
    stored_split,
    train_store_classifier,
    train_store_vae,
    with_model_seed,
)
from pipeline.manifests import check_folder, load_manifest
from pipeline.models.classifier import load_classifier
from pipeline.models.encoding import encode_store
from pipeline.models.state import load_vae
from pipeline.presets import deap_preset, with_beta, with_training_options
from pipeline.runlock import OutputLocationError, begin_update, finish_update, output_errors
from pipeline.sources.deap import read_source_file
from pipeline.sources.synthetic import SyntheticDeapSpec, generate_subject, scenario_spec
from pipeline.sources.synthetic import ground_truth as synthetic_ground_truth
from pipeline.stability import SeedFactors, consensus_factors, representative_seed
from pipeline.store import FrameStore
from pipeline.sweep import RULE as SWEEP_RULE
from pipeline.sweep import choose_beta, score_candidate
from pipeline.threads import thread_record


class SourceFilesFailed(NamedFailure):
    """Some source files could not be stored; the others were. Carries which and why."""

    def __init__(self, failures: dict[str, str], n_stored_files: int):
        self.failures = failures
        self.n_stored_files = n_stored_files
        listing = "; ".join(f"{name}: {why}" for name, why in failures.items())
        super().__init__(f"{len(failures)} source file(s) failed, {n_stored_files} stored. {listing}")


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient I/O errors; a file that is simply bad will not improve on a second read."""
    try:
        state.result()
    except InputError:
        return False
    except Exception:
        return True
    return True


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_unless_bad_input)
def ingest_file(path: str, out_dir: str, config: dict, data_kind: str) -> dict:
    preprocess = PreprocessConfig.from_dict(config)
    trials = read_source_file(path, isolate=True)
    # A refused write is the run folder's fault, not the file's: it is neither retried nor blamed on it.
    with output_errors(out_dir):
        store = cluster_safe(open_store(out_dir, deap_store_spec(preprocess, data_kind)))
        return ingest_trials(store, trials, preprocess).to_dict()


@task(retries=1, retry_condition_fn=_retry_unless_bad_input)
def ingest_synthetic_subject(spec: dict, subject: int, out_dir: str, config: dict) -> dict:
    preprocess = PreprocessConfig.from_dict(config)
    synthetic = SyntheticDeapSpec.from_dict(spec)
    trials = generate_subject(synthetic, subject)
    with output_errors(out_dir):
        store = cluster_safe(
            open_store(out_dir, deap_store_spec(preprocess, "synthetic", synthetic.identity()))
        )
        return ingest_trials(store, trials, preprocess).to_dict()


@flow(name="deap-preprocess", task_runner=preprocess_task_runner())
@exclusive_run()
def preprocess_deap(
    out_dir: str,
    data_dir: str | None = None,
    synthetic: dict | None = None,
    config: dict | None = None,
) -> dict:
    """Turn DEAP files (or the synthetic DEAP) into ``OUT/frames.zarr``, one task per subject file.

    Files already stored under the same preprocessing config are skipped. A bad file fails its
    own task and is named in the flow's final state; every other file is still stored.
    """
    logger = get_run_logger()
    preprocess = PreprocessConfig.from_dict(config) if config else PreprocessConfig()
    config_dict = preprocess.to_dict()
    identity = None
    if data_dir is not None:
        check = check_folder(data_dir, load_manifest("deap"))
        if check.missing:
            logger.warning(
                "%s: %d expected file(s) absent: %s", data_dir, len(check.missing), ", ".join(check.missing)
            )
        if check.unexpected:
            logger.warning("%s: ignoring unexpected file(s): %s", data_dir, ", ".join(check.unexpected))
        data_kind = "deap-python" if check.layout == "data_preprocessed_python" else "deap-matlab"
        # The store is created once here so that parallel tasks only ever open an existing group.
        open_store(out_dir, deap_store_spec(preprocess, data_kind))
        names = [path.name for path in check.files]
        sources = [str(path) for path in check.files]
        futures = ingest_file.map(sources, out_dir, unmapped(config_dict), data_kind)
    else:
        spec = SyntheticDeapSpec.from_dict(synthetic or {})
        data_kind = "synthetic"
        identity = spec.identity()
        open_store(out_dir, deap_store_spec(preprocess, data_kind, identity))
        subjects = list(range(1, spec.n_subjects + 1))
        names = sources = [f"synthetic://s{subject:02d}" for subject in subjects]
        futures = ingest_synthetic_subject.map(
            unmapped(spec.to_dict()), subjects, out_dir, unmapped(config_dict)
        )

    name_of = {future.task_run_id: name for future, name in zip(futures, names, strict=True)}
    source_of = dict(zip(names, sources, strict=True))
    failures: dict[str, str] = {}
    results: list[dict] = []
    output_error: OutputLocationError | None = None
    for done, future in enumerate(as_completed(futures), start=1):
        name = name_of[future.task_run_id]
        future.wait()  # as_completed can yield before the future's final state is recorded
        state = future.state
        if state.is_completed():
            result = future.result()
            results.append(result)
            logger.info(
                "[%d/%d] %s: %d trial(s), %d newly stored",
                done,
                len(futures),
                name,
                result["n_trials"],
                result["n_written"],
            )
        else:
            error = state.result(raise_on_failure=False)
            if isinstance(error, OutputLocationError):
                output_error = error
            failures[name] = error.about(source_of[name]) if isinstance(error, InputError) else str(error)
            logger.error("[%d/%d] %s failed: %s", done, len(futures), name, failures[name])
    if output_error is not None:  # no file can be stored; the folder, not the files, is at fault
        raise output_error
    store = open_store(out_dir, deap_store_spec(preprocess, data_kind, identity))
    store.consolidate()
    summary = {
        "store": store_path(out_dir),
        "n_files": len(futures),
        "n_trials_stored": len(store.committed_rows()),
        "n_trials_new": sum(r["n_written"] for r in results),
    }
    if failures:
        raise SourceFilesFailed(failures, n_stored_files=len(results))
    return summary


def _checkpoint_dir(out_dir: str, slot: str | None = None) -> Path:
    """The main protocol's β-VAE is in ``checkpoints/vae``, another's in ``checkpoints/<slot>/vae``."""
    return classifier_dir(out_dir, slot) / "vae"


def seed_checkpoint_dir(out_dir: str, model_seed: int, reference_seed: int) -> Path:
    """The reference seed's β-VAE is in ``checkpoints/vae`` (as in a one-seed run), seed k's in
    ``checkpoints/vae_seed<k>``."""
    if model_seed == reference_seed:
        return _checkpoint_dir(out_dir)
    return Path(out_dir) / "checkpoints" / f"vae_seed{model_seed}"


def _sweep_dir(out_dir: str, beta: float) -> Path:
    return Path(out_dir) / "checkpoints" / "sweep" / f"beta-{beta:g}"


@task
def split_and_normalise(out_dir: str, learn: dict, slot: str | None = None) -> dict:
    config = LearnConfig.from_dict(learn)
    store = FrameStore.open(store_path(out_dir), writable=True)
    split = make_split(store, config.split_protocol, config.split_seed, config.class_threshold)
    fit_store_normalisation(store, split, slot)
    sizes = {"train": int(split.train.size), "val": int(split.val.size), "test": int(split.test.size)}
    get_run_logger().info(
        "split by %s: %s trials; band statistics from the training trials", split.protocol, sizes
    )
    return sizes


@task
def keep_protocol_slots(out_dir: str, slots: list[str]) -> None:
    """Drop what an earlier run stored for protocols this run does not train."""
    keep_secondary_protocols(FrameStore.open(store_path(out_dir), writable=True), slots)


def _epoch_logger(config: LearnConfig, what: str, trained: list | None = None):
    """Logs each epoch; appends its record to ``trained`` when given (to count the epochs run now)."""
    logger = get_run_logger()

    def report_epoch(record: dict) -> None:
        if trained is not None:
            trained.append(record)
        val = "n/a" if record["val_loss"] is None else f"{record['val_loss']:.1f}"
        logger.info(
            "%s epoch %d/%d: loss %.1f (reconstruction %.1f, KL %.2f), validation %s, %.0f s",
            what, record["epoch"], config.train.epochs, record["train_loss"], record["reconstruction"],
            record["kl"], val, record["seconds"],
        )  # fmt: skip

    return report_epoch


def _train_with_progress(
    store: FrameStore,
    config: LearnConfig,
    checkpoints: Path,
    resume: bool,
    what: str,
    slot: str | None = None,
    trained: list | None = None,
):
    """Train one β-VAE with a log line per epoch and the steps within each epoch shown as progress."""
    with progress_display(get_run_logger().info) as show:
        return train_store_vae(
            store,
            config,
            checkpoints,
            resume=resume,
            progress=_epoch_logger(config, what, trained),
            steps=show,
            slot=slot,
        )


@task
def train_frame_vae(out_dir: str, learn: dict, resume: bool, slot: str | None = None) -> dict:
    config = LearnConfig.from_dict(learn)
    store = FrameStore.open(store_path(out_dir))
    what = "VAE" if slot is None else f"VAE ({slot} protocol)"
    get_run_logger().info("training the β-VAE on %d torch thread(s)", torch.get_num_threads())
    result = _train_with_progress(store, config, _checkpoint_dir(out_dir, slot), resume, what, slot)
    return {
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
    }


@task
def train_seed_vae(out_dir: str, learn: dict, model_seed: int, reference_seed: int, reuse: bool) -> dict:
    """Train the β-VAE of one seed of an ensemble (``--seeds``) on the reference seed's split.

    With ``reuse``, a training state of this seed, model and split is continued: a finished one
    trains no epoch, one killed midway goes on from its last epoch. ``epochs_trained`` counts the
    epochs this call ran.
    """
    config = with_model_seed(LearnConfig.from_dict(learn), model_seed)
    store = FrameStore.open(store_path(out_dir))
    checkpoints = seed_checkpoint_dir(out_dir, model_seed, reference_seed)
    resume = reuse and can_continue_training(store, config, checkpoints)
    logger = get_run_logger()
    logger.info(
        "seed %d: %s the β-VAE on %d torch thread(s)",
        model_seed, "continuing" if resume else "training", torch.get_num_threads(),
    )  # fmt: skip
    trained: list[dict] = []
    what = f"VAE seed {model_seed}"
    result = _train_with_progress(store, config, checkpoints, resume, what, trained=trained)
    if not trained:
        logger.info("seed %d: reused, trained earlier (%d epochs)", model_seed, len(result.history))
    return {
        "seed": model_seed,
        "epochs": len(result.history),
        "epochs_trained": len(trained),
        "seconds": float(sum(record["seconds"] for record in trained)),
    }


@task
def encode_seed_task(out_dir: str, learn: dict, model_seed: int, reference_seed: int) -> dict:
    """Encode every stored trial with one seed's β-VAE into its own latent group."""
    config = LearnConfig.from_dict(learn)
    store = FrameStore.open(store_path(out_dir), writable=True)
    checkpoints = seed_checkpoint_dir(out_dir, model_seed, reference_seed)
    group = seed_latent_set(model_seed, reference_seed)
    logger = get_run_logger()
    with progress_display(logger.info) as show:
        n_encoded = encode_store(
            store,
            load_vae(checkpoints, "best"),
            checkpoint_model_id(checkpoints),
            normalise=store_normaliser(store),
            batch_size=config.encode_batch_size,
            progress=show,
            group=group,
        )
    logger.info("seed %d: encoded %d trial(s) into %s", model_seed, n_encoded, group)
    return {"n_encoded": n_encoded}


@task
def analyse_seed_task(out_dir: str, learn: dict, rules: dict, model_seed: int, reference_seed: int) -> dict:
    """Î, relevance, blocks and signed effects of one seed's influential factors (JSON-native)."""
    config = with_model_seed(LearnConfig.from_dict(learn), model_seed)
    store = FrameStore.open(store_path(out_dir))
    model = load_vae(seed_checkpoint_dir(out_dir, model_seed, reference_seed), "best")
    with progress_display(get_run_logger().info) as show:
        analysis = analyse_seed(
            store,
            model,
            config,
            FactorRules.from_dict(rules),
            seed_latent_set(model_seed, reference_seed),
            show,
        )
    get_run_logger().info(
        "seed %d: %d influential factor(s) %s", model_seed, len(analysis.indices), analysis.indices.tolist()
    )
    return analysis.to_dict()


@task
def choose_reported_seed(analyses: list[dict]) -> int:
    """The seed whose matched factors are on average most similar to the consensus."""
    seeds = [SeedFactors.from_dict(analysis) for analysis in analyses]
    chosen, scores = representative_seed(seeds, consensus_factors(seeds))
    get_run_logger().info(
        "seed %d is the most representative of %d (similarity to the consensus: %s); the LSTM, the "
        "top-k tables and the factor cards use it",
        chosen, len(seeds), ", ".join(f"seed {seed} {score:.3f}" for seed, score in scores.items()),
    )  # fmt: skip
    return chosen


def seed_ensemble(
    out_dir: str, learn: dict, rules: dict, seeds: list[int], reuse: bool
) -> tuple[list[dict], int, int]:
    """Train, encode and analyse every seed of ``seeds`` (the first is the reference, with the run's
    split and normalisation), one after another; returns the analyses, the seed to report and how
    many trials the reference seed's model encoded.

    Seeds train sequentially with the run's threads: the thread policy already gives one run every
    core it may use, so seeds side by side would share those cores and gain nothing.
    """
    reference = seeds[0]
    encoded = {}
    for model_seed in seeds:
        train_seed_vae(out_dir, learn, model_seed, reference, reuse)
        encoded[model_seed] = encode_seed_task(out_dir, learn, model_seed, reference)["n_encoded"]
    analyses = [analyse_seed_task(out_dir, learn, rules, model_seed, reference) for model_seed in seeds]
    return analyses, choose_reported_seed(analyses), encoded[reference]


@task
def sweep_frame_vae(
    out_dir: str, learn: dict, betas: list[float], resume: bool, threshold_nats: float
) -> dict:
    """Train one β-VAE per β on the main protocol, keep the one :func:`choose_beta` picks.

    The chosen model's weights become ``checkpoints/vae/best`` (with the sweep in its metadata),
    so every later stage uses it; the candidates stay in ``checkpoints/sweep/beta-<β>/``.
    """
    config = LearnConfig.from_dict(learn)
    logger = get_run_logger()
    store = FrameStore.open(store_path(out_dir))
    split = stored_split(store)
    rows = []
    for beta in betas:
        candidate = with_beta(config, beta)
        result = _train_with_progress(store, candidate, _sweep_dir(out_dir, beta), resume, f"VAE β={beta:g}")
        rows.append(score_candidate(result.model, store, split.train, split.val, threshold_nats))
        logger.info(
            "β=%g: %d influential factor(s), total Î %.2f nats, validation MSE %.4f",
            beta, rows[-1]["n_influential"], rows[-1]["total_mi_nats"], rows[-1]["val_mse"],
        )  # fmt: skip
    chosen = choose_beta(rows)
    sweep = {"rule": SWEEP_RULE, "candidates": rows, "chosen_beta": chosen}
    tensors, metadata = load_checkpoint(_sweep_dir(out_dir, chosen), "best")
    save_checkpoint(_checkpoint_dir(out_dir), "best", tensors, {**metadata, "beta_sweep": sweep})
    logger.info("β sweep: kept β=%g (%s)", chosen, SWEEP_RULE)
    return sweep


@task
def encode_frames_task(out_dir: str, learn: dict, slot: str | None = None) -> dict:
    config = LearnConfig.from_dict(learn)
    store = FrameStore.open(store_path(out_dir), writable=True)
    checkpoints = _checkpoint_dir(out_dir, slot)
    model = load_vae(checkpoints, "best")
    logger = get_run_logger()
    with progress_display(logger.info) as show:
        n_encoded = encode_store(
            store,
            model,
            checkpoint_model_id(checkpoints),
            normalise=store_normaliser(store, slot),
            batch_size=config.encode_batch_size,
            progress=show,
            group=latent_set(slot),
        )
    logger.info("encoded %d trial(s) with the best VAE", n_encoded)
    return {"n_encoded": n_encoded}


@task
def train_emotion_lstm(out_dir: str, learn: dict, slot: str | None = None, group: str | None = None) -> dict:
    """Train a protocol's LSTM on its latents (``group``: another seed's latents of the main protocol)."""
    config = LearnConfig.from_dict(learn)
    store = FrameStore.open(store_path(out_dir))
    with progress_display(get_run_logger().info) as show:
        epochs = epoch_progress(show, "LSTM (epochs)", config.classifier.epochs)
        _, evaluation = train_store_classifier(
            store, config, out_dir, progress=epochs, slot=slot, group=group
        )
    get_run_logger().info(
        "LSTM (%s protocol) test accuracy %.3f (chance %.3f) on %d trials",
        config.split_protocol, evaluation["accuracy"], evaluation["chance_accuracy"], evaluation["n"],
    )  # fmt: skip
    return {"test_accuracy": evaluation["accuracy"], "chance_accuracy": evaluation["chance_accuracy"]}


@task
def write_deap_report(
    out_dir: str,
    preset: dict,
    run_config: dict,
    source_path: str,
    ground_truth: dict | None,
    reported_seed: int | None = None,
    seed_analyses: list[dict] | None = None,
) -> dict:
    """Write the report of the main protocol's β-VAE; of seed ``reported_seed`` of an ensemble
    whose every seed is analysed in ``seed_analyses`` (the reference seed first)."""
    config = LearnConfig.from_dict(preset["learn"])
    reference_seed = config.train.seed
    if reported_seed is None:
        reported_seed = reference_seed
    config = with_model_seed(config, reported_seed)
    store = FrameStore.open(store_path(out_dir))
    with progress_display(get_run_logger().info) as show:
        report = build_deap_report(
            out_dir,
            store,
            load_vae(seed_checkpoint_dir(out_dir, reported_seed, reference_seed), "best"),
            load_classifier(Path(out_dir) / "checkpoints", "classifier"),
            config,
            FactorRules.from_dict(preset["rules"]),
            run_config,
            source_path,
            ground_truth,
            beta_sweep=load_checkpoint(_checkpoint_dir(out_dir), "best")[1].get("beta_sweep"),
            progress=show,
            group=seed_latent_set(reported_seed, reference_seed),
            seed_analyses=(
                None if seed_analyses is None else [SeedFactors.from_dict(a) for a in seed_analyses]
            ),
        )
    influential = [f["index"] for f in report["factors"] if f["influential"]]
    linked = [f["index"] for f in report["factors"] if f["emotion"]["linked"]]
    get_run_logger().info(
        "report: %d influential factor(s) %s, emotion-linked %s", len(influential), influential, linked
    )
    classification = report["classification"]
    return {
        "report_json": str(Path(out_dir) / "report.json"),
        "report_html": str(Path(out_dir) / "report.html"),
        "n_influential": len(influential),
        "linked": linked,
        "test_accuracy": classification["test_accuracy"],
        "chance_accuracy": classification["chance_accuracy"],
        "classification": {
            protocol: {key: value for key, value in figures.items() if key != "confusion"}
            for protocol, figures in classification.get(
                "by_protocol", {classification["protocol"]: classification}
            ).items()
        },
        "beta_sweep": report.get("beta_sweep"),
        "ground_truth_passed": report.get("ground_truth_check", {}).get("passed"),
        "stability": {
            key: report["stability"][key] for key in ("n_seeds", "reported_seed", "most_representative_seed")
        },
        "linked_blocks": majority_linked_blocks(report),
    }


@flow(name="deap")
@exclusive_run(local_only=True)
def deap(
    out_dir: str,
    data_dir: str | None = None,
    preset: str = "demo",
    seed: int = 0,
    resume: bool = False,
    protocol: str | None = None,
    betas: list[float] | None = None,
    synthetic_subjects: int | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
    synthetic_scenario: str = "planted",
    mixed_precision: bool = False,
    compile_model: bool = False,
    n_seeds: int = 1,
) -> dict:
    """The whole DEAP pipeline: frames → β-VAE → Î ranking → LSTM → top-k tables → report.

    Without ``data_dir`` it runs on the synthetic DEAP of ``synthetic_scenario`` (``planted``,
    ``null`` or ``confound``). ``resume`` continues VAE training from its last checkpoint; stored
    frames and latents of the same model are never recomputed.
    ``protocol`` (``trial``, ``subject`` or ``both``; default: the preset's) decides the
    splits: with ``both`` the subject protocol gets its own split, normalisation, β-VAE and
    LSTM, and the report shows the two accuracies side by side. ``betas`` overrides the
    preset's β; several values run a sweep (one β-VAE each, one kept).
    ``mixed_precision`` (bf16 autocast, CUDA only) and ``compile_model`` (``torch.compile`` of
    the β-VAE) change the speed of training, not what it computes beyond rounding.
    ``n_seeds`` > 1 trains β-VAEs with model seeds ``seed`` … ``seed + n_seeds − 1`` on the split
    and normalisation of ``seed`` and reports how often each factor and block is found again;
    seeds already trained on the same split are reused.
    """
    check_seed_options(n_seeds, betas)
    settings = with_training_options(
        deap_preset(preset, seed, protocol, tuple(betas) if betas else None), mixed_precision, compile_model
    )
    synthetic = None
    ground_truth = None
    if data_dir is None:
        spec = scenario_spec(
            synthetic_scenario, n_subjects=synthetic_subjects or settings.synthetic_subjects, seed=seed
        )
        synthetic = spec.to_dict()
        ground_truth = synthetic_ground_truth(spec)
    preprocess = preprocess_deap.with_options(task_runner=preprocess_task_runner(dask_address, dask_workers))
    preprocess(out_dir=out_dir, data_dir=data_dir, synthetic=synthetic)
    protocols = run_protocols(settings.protocol)
    # Until the report is written, a killed run leaves a marker telling the next run what to finish.
    begin_update(out_dir, settings.to_dict(), "training")
    keep_protocol_slots(out_dir, list(protocols[1:]))
    learn_config = replace(settings.learn, split_protocol=protocols[0])
    learn = learn_config.to_dict()
    split_and_normalise(out_dir, learn)
    if len(settings.betas) > 1:
        sweep = sweep_frame_vae(
            out_dir, learn, list(settings.betas), resume, settings.rules.influential_threshold_nats
        )
        learn_config = with_beta(learn_config, sweep["chosen_beta"])
        learn = learn_config.to_dict()
    elif n_seeds == 1:
        train_frame_vae(out_dir, learn, resume)
    reported_seed, seed_analyses = None, None
    if n_seeds == 1:
        encode_frames_task(out_dir, learn)
        train_emotion_lstm(out_dir, learn)
    else:
        seeds = list(range(seed, seed + n_seeds))
        seed_analyses, reported_seed, _ = seed_ensemble(out_dir, learn, settings.rules.to_dict(), seeds, True)
        reported_learn = with_model_seed(learn_config, reported_seed).to_dict()
        train_emotion_lstm(out_dir, reported_learn, group=seed_latent_set(reported_seed, seed))
    for slot in protocols[1:]:
        # Its own split, normalisation and models, at the β the main protocol uses.
        slot_learn = replace(learn_config, split_protocol=slot).to_dict()
        split_and_normalise(out_dir, slot_learn, slot)
        train_frame_vae(out_dir, slot_learn, resume, slot)
        encode_frames_task(out_dir, slot_learn, slot)
        train_emotion_lstm(out_dir, slot_learn, slot)
    settings = replace(settings, learn=learn_config)
    begin_update(out_dir, settings.to_dict(), "report")
    run_config = {
        "preset": settings.to_dict(),
        "seed": seed,
        "resume": resume,
        "synthetic": synthetic,
        # Reductions split over another thread count round differently: a rerun on a machine where
        # the thread policy chose otherwise can learn other factor indices from the same seed.
        **thread_record(),
    }
    source_path = (
        data_dir
        if data_dir is not None
        else f"synthetic://deap?scenario={spec.scenario}&subjects={spec.n_subjects}&seed={seed}"
    )
    written = write_deap_report(
        out_dir, settings.to_dict(), run_config, source_path, ground_truth, reported_seed, seed_analyses
    )
    finish_update(out_dir)
    return written


def check_seed_options(n_seeds: int, betas: list[float] | None) -> None:
    """A seed ensemble needs at least one seed and one β (a sweep already trains one model per β)."""
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise InputError("--seeds", f"{n_seeds!r}; expected a whole number >= 1")
    if n_seeds > 1 and betas and len(betas) > 1:
        raise InputError("--seeds", "a seed ensemble takes one β; give --beta one value or leave --seeds out")

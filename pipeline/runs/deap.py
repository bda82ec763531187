"""The DEAP run without Prefect: frames → β-VAE → Î ranking → LSTM → top-k tables → report.

Each step is a plain function of the run folder and JSON-native settings that opens the frame
store once; :func:`run_deap` sequences them. The ``deap`` flow passes the same steps wrapped as
Prefect tasks (:class:`DeapSteps`), so the sequence is written once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.analysis.factors import FactorRules
from pipeline.analysis.stability import SeedFactors, consensus_factors, representative_seed
from pipeline.analysis.sweep import RULE as SWEEP_RULE
from pipeline.analysis.sweep import choose_beta, score_candidate
from pipeline.errors import InputError
from pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.models.classifier import load_classifier
from pipeline.models.encoding import encode_store
from pipeline.models.learn import (
    LearnConfig,
    can_continue_training,
    checkpoint_model_id,
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
from pipeline.models.presets import DeapPreset, deap_preset, with_beta, with_betas, with_training_options
from pipeline.models.state import load_vae
from pipeline.report.assemble import ReportedRun
from pipeline.report.deap import analyse_seed, build_deap_report, majority_linked_blocks
from pipeline.runs.preprocess import DeapSource, preprocess_deap
from pipeline.store.frames import FrameStore
from pipeline.store.run_folder import RunFolder
from pipeline.store.runlock import begin_update, finish_update
from pipeline.threads import thread_record

LOG = logging.getLogger("eegmi")


# Settings --------------------------------------------------------------------------------------


def check_seed_options(n_seeds: int, betas: list[float] | None) -> None:
    """A seed ensemble needs at least one seed and one β (a sweep already trains one model per β)."""
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise InputError("--seeds", f"{n_seeds!r}; expected a whole number >= 1")
    if n_seeds > 1 and betas and len(betas) > 1:
        raise InputError("--seeds", "a seed ensemble takes one β; give --beta one value or leave --seeds out")


def deap_settings(
    preset: str | DeapPreset,
    seed: int,
    protocol: str | None = None,
    betas: list[float] | None = None,
    mixed_precision: bool = False,
    compile_model: bool = False,
) -> DeapPreset:
    """The run's settings: the named preset with the run's seed, or a whole ``DeapPreset`` as
    given (it carries its own seeds); then the protocol, β(s) and training options asked for."""
    if isinstance(preset, DeapPreset):
        chosen = preset if protocol is None else preset.replace(protocol=protocol)
        chosen = with_betas(chosen, tuple(betas)) if betas else chosen
        train = chosen.learn.train
        mixed_precision, compile_model = (
            mixed_precision or train.mixed_precision,
            compile_model or train.compile_model,
        )
    else:
        chosen = deap_preset(preset, seed, protocol, tuple(betas) if betas else None)
    return with_training_options(chosen, mixed_precision, compile_model)


# Learning steps: each opens the store once -----------------------------------------------------


def keep_protocol_slots(run: RunFolder, slots: list[str], log=LOG) -> None:
    """Drop what an earlier run stored for protocols this run does not train."""
    keep_secondary_protocols(run.open_store(writable=True), slots)


def split_and_normalise(run: RunFolder, learn: dict, slot: str | None = None, log=LOG) -> dict:
    config = LearnConfig.model_validate(learn)
    store = run.open_store(writable=True)
    split = make_split(store, config.split_protocol, config.split_seed, config.class_threshold)
    fit_store_normalisation(store, split, slot)
    sizes = {"train": int(split.train.size), "val": int(split.val.size), "test": int(split.test.size)}
    log.info("split by %s: %s trials; band statistics from the training trials", split.protocol, sizes)
    return sizes


def epoch_logger(log, epochs: int, what: str, trained: list | None = None) -> Callable[[dict], None]:
    """Logs each epoch; appends its record to ``trained`` when given (to count the epochs run now)."""

    def report_epoch(record: dict) -> None:
        if trained is not None:
            trained.append(record)
        val = "n/a" if record["val_loss"] is None else f"{record['val_loss']:.1f}"
        log.info(
            "%s epoch %d/%d: loss %.1f (reconstruction %.1f, KL %.2f), validation %s, %.0f s",
            what, record["epoch"], epochs, record["train_loss"], record["reconstruction"],
            record["kl"], val, record["seconds"],
        )  # fmt: skip

    return report_epoch


def _train(
    store: FrameStore, config: LearnConfig, checkpoints, resume: bool, what: str, log, show, **options
):
    """Train one β-VAE with a log line per epoch and the steps within each epoch shown by ``show``."""
    trained = options.pop("trained", None)
    progress = epoch_logger(log, config.train.epochs, what, trained)
    return train_store_vae(
        store, config, checkpoints, resume=resume, progress=progress, steps=show, **options
    )


def train_frame_vae(
    run: RunFolder, learn: dict, resume: bool, slot: str | None = None, log=LOG, show=None
) -> dict:
    config = LearnConfig.model_validate(learn)
    what = "VAE" if slot is None else f"VAE ({slot} protocol)"
    log.info("training the β-VAE on %d torch thread(s)", torch.get_num_threads())
    result = _train(run.open_store(), config, run.vae_dir(slot), resume, what, log, show, slot=slot)
    return {
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "epoch_seconds": [record["seconds"] for record in result.history],
    }


def sweep_frame_vae(
    run: RunFolder, learn: dict, betas: list[float], resume: bool, threshold_nats: float, log=LOG, show=None
) -> dict:
    """Train one β-VAE per β on the main protocol, keep the one :func:`choose_beta` picks.

    The chosen model's weights become ``checkpoints/vae/best`` (with the sweep in its metadata),
    so every later stage uses it; the candidates stay in ``checkpoints/sweep/beta-<β>/``.
    """
    config = LearnConfig.model_validate(learn)
    store = run.open_store()
    split = stored_split(store)
    rows = []
    for beta in betas:
        result = _train(
            store, with_beta(config, beta), run.sweep_dir(beta), resume, f"VAE β={beta:g}", log, show
        )
        rows.append(score_candidate(result.model, store, split.train, split.val, threshold_nats))
        log.info(
            "β=%g: %d influential factor(s), total Î %.2f nats, validation MSE %.4f",
            beta, rows[-1]["n_influential"], rows[-1]["total_mi_nats"], rows[-1]["val_mse"],
        )  # fmt: skip
    chosen = choose_beta(rows)
    sweep = {"rule": SWEEP_RULE, "candidates": rows, "chosen_beta": chosen}
    tensors, metadata = load_checkpoint(run.sweep_dir(chosen), "best")
    save_checkpoint(run.vae_dir(), "best", tensors, {**metadata, "beta_sweep": sweep})
    log.info("β sweep: kept β=%g (%s)", chosen, SWEEP_RULE)
    return sweep


def encode_frames(run: RunFolder, learn: dict, slot: str | None = None, log=LOG, show=None) -> dict:
    config = LearnConfig.model_validate(learn)
    checkpoints = run.vae_dir(slot)
    model_id = checkpoint_model_id(checkpoints)
    store = run.open_store(writable=True)
    n_encoded = encode_store(
        store,
        load_vae(checkpoints, "best"),
        model_id,
        normalise=store_normaliser(store, slot),
        batch_size=config.encode_batch_size,
        progress=show,
        group=latent_set(slot),
    )
    log.info("encoded %d trial(s) with the best VAE", n_encoded)
    return {"n_encoded": n_encoded}


def train_emotion_lstm(
    run: RunFolder, learn: dict, slot: str | None = None, group: str | None = None, log=LOG, show=None
) -> dict:
    """Train a protocol's LSTM on its latents (``group``: another seed's latents of the main protocol)."""
    config = LearnConfig.model_validate(learn)
    epochs = (
        None
        if show is None
        else lambda record: show("LSTM (epochs)", record["epoch"], config.classifier.epochs)
    )
    _, evaluation = train_store_classifier(
        run.open_store(), config, run.location, progress=epochs, slot=slot, group=group
    )
    log.info(
        "LSTM (%s protocol) test accuracy %.3f (chance %.3f) on %d trials",
        config.split_protocol, evaluation["accuracy"], evaluation["chance_accuracy"], evaluation["n"],
    )  # fmt: skip
    return {"test_accuracy": evaluation["accuracy"], "chance_accuracy": evaluation["chance_accuracy"]}


# A seed ensemble (--seeds) ------------------------------------------------------------------


def train_seed_vae(
    run: RunFolder, learn: dict, model_seed: int, reference_seed: int, reuse: bool, log=LOG, show=None
) -> dict:
    """Train the β-VAE of one seed of an ensemble (``--seeds``) on the reference seed's split.

    With ``reuse``, a training state of this seed, model and split is continued: a finished one
    trains no epoch, one killed midway goes on from its last epoch. ``epochs_trained`` counts the
    epochs this call ran.
    """
    config = with_model_seed(LearnConfig.model_validate(learn), model_seed)
    store = run.open_store()
    checkpoints = run.seed_vae_dir(model_seed, reference_seed)
    resume = reuse and can_continue_training(store, config, checkpoints)
    log.info(
        "seed %d: %s the β-VAE on %d torch thread(s)",
        model_seed, "continuing" if resume else "training", torch.get_num_threads(),
    )  # fmt: skip
    trained: list[dict] = []
    result = _train(store, config, checkpoints, resume, f"VAE seed {model_seed}", log, show, trained=trained)
    if not trained:
        log.info("seed %d: reused, trained earlier (%d epochs)", model_seed, len(result.history))
    return {
        "seed": model_seed,
        "epochs": len(result.history),
        "epochs_trained": len(trained),
        "seconds": float(sum(record["seconds"] for record in trained)),
    }


def encode_seed(
    run: RunFolder, learn: dict, model_seed: int, reference_seed: int, log=LOG, show=None
) -> dict:
    """Encode every stored trial with one seed's β-VAE into its own latent group."""
    config = LearnConfig.model_validate(learn)
    checkpoints = run.seed_vae_dir(model_seed, reference_seed)
    group = seed_latent_set(model_seed, reference_seed)
    model = load_vae(checkpoints, "best")
    store = run.open_store(writable=True)
    n_encoded = encode_store(
        store,
        model,
        checkpoint_model_id(checkpoints),
        normalise=store_normaliser(store),
        batch_size=config.encode_batch_size,
        progress=show,
        group=group,
    )
    log.info("seed %d: encoded %d trial(s) into %s", model_seed, n_encoded, group)
    return {"n_encoded": n_encoded}


def analyse_one_seed(
    run: RunFolder, learn: dict, rules: dict, model_seed: int, reference_seed: int, log=LOG, show=None
) -> dict:
    """Î, relevance, blocks and signed effects of one seed's influential factors (JSON-native)."""
    config = with_model_seed(LearnConfig.model_validate(learn), model_seed)
    model = load_vae(run.seed_vae_dir(model_seed, reference_seed), "best")
    group = seed_latent_set(model_seed, reference_seed)
    analysis = analyse_seed(run.open_store(), model, config, FactorRules.model_validate(rules), group, show)
    log.info(
        "seed %d: %d influential factor(s) %s", model_seed, len(analysis.indices), analysis.indices.tolist()
    )
    return analysis.to_dict()


def choose_reported_seed(analyses: list[dict], log=LOG) -> int:
    """The seed whose matched factors are on average most similar to the consensus."""
    seeds = [SeedFactors.from_dict(analysis) for analysis in analyses]
    chosen, scores = representative_seed(seeds, consensus_factors(seeds))
    log.info(
        "seed %d is the most representative of %d (similarity to the consensus: %s); the LSTM, the "
        "top-k tables and the factor cards use it",
        chosen, len(seeds), ", ".join(f"seed {seed} {score:.3f}" for seed, score in scores.items()),
    )  # fmt: skip
    return chosen


# The report -------------------------------------------------------------------------------------


def write_deap_report(
    run: RunFolder,
    preset: dict,
    run_config: dict,
    source_path: str,
    ground_truth: dict | None,
    reported_seed: int | None = None,
    seed_analyses: list[dict] | None = None,
    log=LOG,
    show=None,
) -> dict:
    """Write the report of the main protocol's β-VAE; of seed ``reported_seed`` of an ensemble
    whose every seed is analysed in ``seed_analyses`` (the reference seed first). Returns its
    summary (JSON-small)."""
    config = LearnConfig.model_validate(preset["learn"])
    reference_seed = config.train.seed
    reported_seed = reference_seed if reported_seed is None else reported_seed
    reported = ReportedRun(
        run.location,
        run.open_store(),
        load_vae(run.seed_vae_dir(reported_seed, reference_seed), "best"),
        run_config,
        group=seed_latent_set(reported_seed, reference_seed),
        seed_analyses=None if seed_analyses is None else [SeedFactors.from_dict(a) for a in seed_analyses],
        ground_truth=ground_truth,
    )
    report = build_deap_report(
        reported,
        load_classifier(run.classifier_dir(), "classifier"),
        with_model_seed(config, reported_seed),
        FactorRules.model_validate(preset["rules"]),
        source_path,
        beta_sweep=load_checkpoint(run.vae_dir(), "best")[1].get("beta_sweep"),
        progress=show,
    )
    influential = [f["index"] for f in report["factors"] if f["influential"]]
    linked = [f["index"] for f in report["factors"] if f["emotion"]["linked"]]
    log.info("report: %d influential factor(s) %s, emotion-linked %s", len(influential), influential, linked)
    return report_summary(run, report, influential, linked)


def report_summary(run: RunFolder, report: dict, influential: list[int], linked: list[int]) -> dict:
    """What a DEAP run returns: where its report is and its headline figures."""
    classification = report["classification"]
    by_protocol = classification.get("by_protocol", {classification["protocol"]: classification})
    return {
        "report_json": str(run.report_json),
        "report_html": str(run.report_html),
        "n_influential": len(influential),
        "linked": linked,
        "test_accuracy": classification["test_accuracy"],
        "chance_accuracy": classification["chance_accuracy"],
        "classification": {
            protocol: {key: value for key, value in figures.items() if key != "confusion"}
            for protocol, figures in by_protocol.items()
        },
        "beta_sweep": report.get("beta_sweep"),
        "ground_truth_passed": report.get("ground_truth_check", {}).get("passed"),
        "stability": {
            key: report["stability"][key] for key in ("n_seeds", "reported_seed", "most_representative_seed")
        },
        "linked_blocks": majority_linked_blocks(report),
    }


# The sequence -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeapSteps:
    """The steps a DEAP run (and a recordings update) is made of. The defaults are the plain
    functions above; the flows pass the same steps wrapped as Prefect tasks."""

    # Frames into the store, then each protocol's split and band normalisation.
    preprocess: Callable[..., dict] = preprocess_deap
    keep_protocol_slots: Callable[..., None] = keep_protocol_slots
    split_and_normalise: Callable[..., dict] = split_and_normalise
    # One protocol's models: its β-VAE (or a β sweep), the latents, the LSTM.
    train_vae: Callable[..., dict] = train_frame_vae
    sweep_vae: Callable[..., dict] = sweep_frame_vae
    encode: Callable[..., dict] = encode_frames
    train_lstm: Callable[..., dict] = train_emotion_lstm
    # A seed ensemble (--seeds): each seed's β-VAE, latents and factors, and the seed reported.
    train_seed_vae: Callable[..., dict] = train_seed_vae
    encode_seed: Callable[..., dict] = encode_seed
    analyse_seed: Callable[..., dict] = analyse_one_seed
    choose_reported_seed: Callable[..., int] = choose_reported_seed
    write_report: Callable[..., dict] = write_deap_report


PLAIN_STEPS = DeapSteps()


def seed_ensemble(
    run: RunFolder, learn: dict, rules: dict, seeds: list[int], reuse: bool, steps: DeapSteps = PLAIN_STEPS
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
        steps.train_seed_vae(run, learn, model_seed, reference, reuse)
        encoded[model_seed] = steps.encode_seed(run, learn, model_seed, reference)["n_encoded"]
    analyses = [steps.analyse_seed(run, learn, rules, model_seed, reference) for model_seed in seeds]
    return analyses, steps.choose_reported_seed(analyses), encoded[reference]


def _learn_main_protocol(
    run: RunFolder,
    settings: DeapPreset,
    learn_config: LearnConfig,
    resume: bool,
    n_seeds: int,
    steps: DeapSteps,
) -> tuple[LearnConfig, int | None, list[dict] | None]:
    """Split, normalise, train (one β, a β sweep or a seed ensemble), encode and train the LSTM of
    the main protocol; returns its settings (at the β kept) and the seed reported."""
    learn = learn_config.model_dump(mode="json")
    steps.split_and_normalise(run, learn)
    if len(settings.betas) > 1:
        threshold = settings.rules.influential_threshold_nats
        sweep = steps.sweep_vae(run, learn, list(settings.betas), resume, threshold)
        learn_config = with_beta(learn_config, sweep["chosen_beta"])
        learn = learn_config.model_dump(mode="json")
    elif n_seeds == 1:
        steps.train_vae(run, learn, resume)
    if n_seeds == 1:
        steps.encode(run, learn)
        steps.train_lstm(run, learn)
        return learn_config, None, None
    reference = learn_config.train.seed
    seeds = list(range(reference, reference + n_seeds))
    analyses, reported_seed, _ = seed_ensemble(
        run, learn, settings.rules.model_dump(mode="json"), seeds, True, steps
    )
    reported_learn = with_model_seed(learn_config, reported_seed).model_dump(mode="json")
    steps.train_lstm(run, reported_learn, group=seed_latent_set(reported_seed, reference))
    return learn_config, reported_seed, analyses


def run_deap(
    run: RunFolder | str,
    settings: DeapPreset,
    source: DeapSource,
    *,
    resume: bool = False,
    n_seeds: int = 1,
    steps: DeapSteps = PLAIN_STEPS,
) -> dict:
    """The whole DEAP run into the run folder ``run``; returns the report's summary.

    ``resume`` continues β-VAE training from its last checkpoint; stored frames and latents of
    the same model are never recomputed. With two protocols (``settings.protocol == "both"``)
    the subject protocol gets its own split, normalisation, β-VAE and LSTM at the β the main
    protocol uses. ``n_seeds`` > 1 trains β-VAEs with model seeds ``seed`` … ``seed + n_seeds − 1``
    on the split and normalisation of the preset's seed and reports the most representative one.
    """
    run = RunFolder(run)
    steps.preprocess(run, source)
    protocols = run_protocols(settings.protocol)
    # Until the report is written, a killed run leaves a marker telling the next run what to finish.
    begin_update(run, settings.model_dump(mode="json"), "training")
    steps.keep_protocol_slots(run, list(protocols[1:]))
    learn_config = settings.learn.replace(split_protocol=protocols[0])
    learn_config, reported_seed, analyses = _learn_main_protocol(
        run, settings, learn_config, resume, n_seeds, steps
    )
    for slot in protocols[1:]:
        slot_learn = learn_config.replace(split_protocol=slot).model_dump(mode="json")
        steps.split_and_normalise(run, slot_learn, slot)
        steps.train_vae(run, slot_learn, resume, slot)
        steps.encode(run, slot_learn, slot)
        steps.train_lstm(run, slot_learn, slot)
    settings = settings.replace(learn=learn_config)
    begin_update(run, settings.model_dump(mode="json"), "report")
    run_config: dict[str, Any] = {
        "preset": settings.model_dump(mode="json"),
        "seed": settings.learn.split_seed,
        "resume": resume,
        "synthetic": None if source.synthetic is None else source.synthetic.to_dict(),
        # Reductions split over another thread count round differently: a rerun on a machine where
        # the thread policy chose otherwise can learn other factor indices from the same seed.
        **thread_record(),
    }
    written = steps.write_report(
        run,
        settings.model_dump(mode="json"),
        run_config,
        source.path,
        source.ground_truth(),
        reported_seed,
        analyses,
    )
    finish_update(run)
    return written

"""The image runs without Prefect (MNIST, CelebA): store → β-VAE → encode → Î → Table 2 → report.

Each data set has its own ingest (IDX files or scikit-learn's digits; aligned JPEGs or procedural
images); the learning and report steps are shared. Each step is a plain function of the run
folder and JSON-native settings that opens the frame store once; :func:`run_images` sequences
them, holding the update marker (:mod:`pipeline.store.runlock`) from the training to the report as the
DEAP run does. The ``mnist`` and ``celeba`` flows pass the same steps wrapped as Prefect tasks
(:class:`ImageSteps`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.analysis.stability import SeedFactors
from pipeline.errors import InputError
from pipeline.models.encoding import encode_store
from pipeline.models.learn import checkpoint_model_id, seed_latent_set, train_split_vae
from pipeline.models.presets import CELEBA_IMAGE_SHAPE, MNIST_IMAGE_SHAPE, ImagePreset, image_preset
from pipeline.models.state import load_vae
from pipeline.report.assemble import ReportedRun
from pipeline.report.images import build_image_report, image_seed_factors
from pipeline.runs.deap import LOG, choose_reported_seed
from pipeline.sources.celeba import ALIGNED_CROP, PARTITION_FILE, check_celeba_folder, iter_celeba
from pipeline.sources.mnist import (
    EMBEDDED_DIGITS,
    digits_as_mnist,
    find_mnist_files,
    iter_mnist_folder,
    read_idx_header,
)
from pipeline.sources.procedural import EMBEDDED_PROCEDURAL, FACTORS, ProceduralSpec, iter_procedural_images
from pipeline.store.ingest_eeg import open_store
from pipeline.store.ingest_images import (
    ImageStoreConfig,
    frames_for,
    image_split,
    image_store_spec,
    ingest_image_batches,
)
from pipeline.store.run_folder import RunFolder
from pipeline.store.runlock import begin_update, finish_update

MNIST_VAL_FRACTION = 0.1
# Images read per batch, and how often the count is logged, by reader.
_IDX_BATCH, _JPEG_BATCH, _PROCEDURAL_BATCH = 4096, 256, 512
_MNIST_PROGRESS_EVERY, _CELEBA_PROGRESS_EVERY = 10_000, 5_000
_SEEDED_PERMUTATION = "seeded permutation, 0.8 train / 0.1 val / 0.1 test, exact counts"


def progress_logger(log, label: str, every: int):
    """An ingest ``progress`` callback that logs the counts every ``every`` images read."""
    state = {"logged": 0}

    def report(counts: dict) -> None:
        if counts["n_read"] - state["logged"] >= every:
            state["logged"] = counts["n_read"]
            log.info("%s: %d image(s) read, %d newly stored", label, counts["n_read"], counts["n_written"])

    return report


# MNIST ------------------------------------------------------------------------------------------


def mnist_store_config(embedded: bool, seed: int) -> ImageStoreConfig:
    """How the MNIST reader (or the embedded digits) makes pixels and splits them."""
    if embedded:
        preprocessing = "scikit-learn digits: 8x8 values / 16, bilinear zoom to 20x20, centred in 28x28"
        split_rule = _SEEDED_PERMUTATION
    else:
        preprocessing = "IDX unsigned bytes / 255"
        split_rule = (
            f"training file: seeded permutation, {MNIST_VAL_FRACTION:g} of it validation; test file: test"
        )
    return ImageStoreConfig(
        dataset="mnist",
        image_shape=MNIST_IMAGE_SHAPE,
        preprocessing=preprocessing,
        split_rule=split_rule,
        split_seed=seed,
    )


def ingest_mnist(run: RunFolder, data_dir: str | None, preset: dict, log=LOG) -> dict:
    """Store MNIST's IDX images (headers checked first) or the embedded digits, within the preset's caps."""
    settings = ImagePreset.model_validate(preset)
    seed = settings.train.seed
    if data_dir is None:
        store = open_store(
            run.location, image_store_spec(mnist_store_config(True, seed), "images", EMBEDDED_DIGITS)
        )
        batches = [digits_as_mnist(seed)]
    else:
        # A folder may hold a subset of MNIST, so the manifest's image counts are not required;
        # every file's presence and IDX header are checked before any work.
        for path in find_mnist_files(data_dir).values():
            read_idx_header(path)
        folder = str(Path(data_dir).resolve())
        store = open_store(run.location, image_store_spec(mnist_store_config(False, seed), "idx", folder))
        batches = iter_mnist_folder(
            data_dir, batch_size=_IDX_BATCH, val_fraction=MNIST_VAL_FRACTION, seed=seed
        )
    progress = progress_logger(log, "MNIST", _MNIST_PROGRESS_EVERY)
    result = ingest_image_batches(store, batches, settings.caps, progress)
    store.consolidate()
    taken = sum(result.taken.values())
    log.info("MNIST: %d image(s) taken %s, %d newly stored", taken, result.taken, result.n_written)
    return result.to_dict()


# CelebA -----------------------------------------------------------------------------------------


def celeba_store_config(procedural: bool, seed: int) -> ImageStoreConfig:
    """How the CelebA reader (or the procedural generator) makes pixels and splits them."""
    side = CELEBA_IMAGE_SHAPE[1]
    if procedural:
        # The generator's ranges and edge are part of the description, so a store of images drawn
        # by another version of the generator is refused instead of mixed with these.
        factors = "; ".join(
            f"{f.name} [{f.low:.3g}, {f.high:.3g}] or {f.fixed:.3g}" for f in FACTORS.values()
        )
        preprocessing = (
            f"procedural ellipses rendered at {side}x{side} RGB in [0, 1]: {factors}; "
            f"edge scale {ProceduralSpec().edge_px:g} px"
        )
        split_rule = _SEEDED_PERMUTATION
    else:
        preprocessing = (
            f"centred {ALIGNED_CROP}x{ALIGNED_CROP} crop (largest centred square if not 178x218), "
            f"bilinear to {side}x{side}, / 255"
        )
        split_rule = f"{PARTITION_FILE} when present, else a seeded hash of the file name, 0.8 / 0.1 / 0.1"
    return ImageStoreConfig(
        dataset="celeba",
        image_shape=CELEBA_IMAGE_SHAPE,
        preprocessing=preprocessing,
        split_rule=split_rule,
        split_seed=seed,
    )


def procedural_spec(settings: ImagePreset) -> ProceduralSpec:
    """The embedded stand-in for CelebA at the preset's size: k = 4 independent factors."""
    return ProceduralSpec(
        seed=settings.train.seed, n_images=settings.embedded_images, size=CELEBA_IMAGE_SHAPE[1]
    )


def ingest_celeba(run: RunFolder, data_dir: str | None, preset: dict, log=LOG) -> dict:
    """Store CelebA's JPEGs (an unreadable one is named and skipped) or the procedural images."""
    settings = ImagePreset.model_validate(preset)
    seed = settings.train.seed
    skipped: list[dict] = []
    if data_dir is None:
        spec = procedural_spec(settings)
        store_spec = image_store_spec(
            celeba_store_config(True, seed),
            "synthetic",
            EMBEDDED_PROCEDURAL,
            extra_attrs={"ground_truth": spec.ground_truth()},
        )
        store = open_store(run.location, store_spec)
        batches = iter_procedural_images(spec, batch_size=_PROCEDURAL_BATCH)
    else:
        check_celeba_folder(data_dir, expect_complete=False)
        folder = str(Path(data_dir).resolve())
        store = open_store(run.location, image_store_spec(celeba_store_config(False, seed), "images", folder))
        side = CELEBA_IMAGE_SHAPE[1]
        batches = iter_celeba(data_dir, batch_size=_JPEG_BATCH, size=side, seed=seed, skipped=skipped)
    progress = progress_logger(log, "CelebA", _CELEBA_PROGRESS_EVERY)
    result = ingest_image_batches(store, batches, settings.caps, progress, skipped)
    for entry in result.skipped:
        log.warning("skipped unreadable image %s: %s", entry["name"], entry["reason"])
    store.consolidate()
    log.info(
        "CelebA: %d image(s) taken %s, %d newly stored, %d skipped",
        sum(result.taken.values()), result.taken, result.n_written, len(result.skipped),
    )  # fmt: skip
    return result.to_dict()


@dataclass(frozen=True)
class ImageDataset:
    """What differs between the image data sets: the ingest, and how the source is described."""

    name: str
    ingest: Callable[..., dict]
    embedded_kind: str
    embedded_path: str
    folder_kind: str
    reports_skipped: bool

    def settings(self, preset: str | ImagePreset, seed: int, data_dir: str | None) -> ImagePreset:
        """The named preset with the run's seed, or the settings as given (with their own seeds)."""
        if isinstance(preset, ImagePreset):
            if preset.dataset != self.name:
                raise InputError("preset", f"holds {preset.dataset} settings; this run is {self.name}")
            return preset
        return image_preset(self.name, preset, seed, embedded=data_dir is None)

    def source(self, data_dir: str | None, ingested: dict) -> dict:
        """The report's ``source``: what was read, from where, how many images of each part."""
        if data_dir is None:
            kind, path = self.embedded_kind, self.embedded_path
        else:
            kind, path = self.folder_kind, str(Path(data_dir).resolve())
        skipped = {"skipped": ingested["skipped"]} if self.reports_skipped else {}
        return {"kind": kind, "path": path, "taken": ingested["taken"], **skipped}

    def ground_truth(self, settings: ImagePreset, data_dir: str | None) -> dict | None:
        """The procedural images' known factors (CelebA without a data folder); None otherwise."""
        if self.name == "celeba" and data_dir is None:
            return procedural_spec(settings).ground_truth()
        return None


def image_settings(dataset: str, preset: str | ImagePreset, seed: int, data_dir: str | None) -> ImagePreset:
    """The settings of an image run of ``dataset``: the named preset with the run's seed (for the
    data folder, or the embedded data without one), or an ``ImagePreset`` of that data set as given."""
    if dataset not in IMAGE_DATASETS:
        raise InputError("dataset", f"{dataset!r} is not one of {sorted(IMAGE_DATASETS)}")
    return IMAGE_DATASETS[dataset].settings(preset, seed, data_dir)


IMAGE_DATASETS = {
    "mnist": ImageDataset("mnist", ingest_mnist, "images", EMBEDDED_DIGITS, "idx", reports_skipped=False),
    "celeba": ImageDataset(
        "celeba", ingest_celeba, "synthetic", EMBEDDED_PROCEDURAL, "images", reports_skipped=True
    ),
}


# Learning and report steps: each opens the store once -------------------------------------------


def with_model_seed(settings: ImagePreset, model_seed: int) -> ImagePreset:
    """``settings`` with the β-VAE trained from seed ``model_seed`` (split and data unchanged)."""
    return settings.replace(train=settings.train.replace(seed=int(model_seed)))


def _latent_group(settings: ImagePreset, reference_seed: int | None) -> str:
    seed = settings.train.seed
    return seed_latent_set(seed, seed if reference_seed is None else reference_seed)


def train_image_vae(
    run: RunFolder, preset: dict, resume: bool, reference_seed: int | None = None, log=LOG, show=None
) -> dict:
    """Train the β-VAE on the training images (validation images for early stopping).

    With ``reference_seed`` the model is one seed (``preset``'s) of an ensemble: a training state
    of this seed on the same split is continued (reused when finished) whatever ``resume`` says.
    """
    settings = ImagePreset.model_validate(preset)
    store = run.open_store()
    split = image_split(store, settings.caps)
    frames = frames_for(
        store, sorted({*split.train.tolist(), *split.val.tolist()}), settings.memory_budget_bytes
    )
    train_config = settings.train_config_for(int(split.train.size))
    checkpoints = run.seed_vae_dir(settings.train.seed, reference_seed)
    trained = []

    def report_epoch(record: dict) -> None:
        trained.append(record)
        val = "n/a" if record["val_loss"] is None else f"{record['val_loss']:.2f}"
        log.info(
            "VAE epoch %d/%d: loss %.2f (reconstruction %.2f, KL %.2f), validation %s, %.0f s",
            record["epoch"], train_config.epochs, record["train_loss"], record["reconstruction"],
            record["kl"], val, record["seconds"],
        )  # fmt: skip

    result = train_split_vae(
        frames, split, settings.vae, train_config, checkpoints,
        resume=resume, reuse=reference_seed is not None, progress=report_epoch, steps=show,
    )  # fmt: skip
    if reference_seed is not None and not trained:
        log.info("seed %d: reused, trained earlier (%d epochs)", settings.train.seed, len(result.history))
    return {
        "n_train": int(split.train.size),
        "n_val": int(split.val.size),
        "max_epochs": train_config.epochs,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
    }


def encode_images(
    run: RunFolder, preset: dict, reference_seed: int | None = None, log=LOG, show=None
) -> dict:
    """Write μ and log σ² of every image of the split with the best β-VAE (of ``preset``'s seed,
    into its own latent group, when ``reference_seed`` makes it one seed of an ensemble)."""
    settings = ImagePreset.model_validate(preset)
    store = run.open_store(writable=True)
    split = image_split(store, settings.caps)
    rows = sorted({*split.train.tolist(), *split.val.tolist(), *split.test.tolist()})
    checkpoints = run.seed_vae_dir(settings.train.seed, reference_seed)
    n_encoded = encode_store(
        store,
        load_vae(checkpoints, "best"),
        checkpoint_model_id(checkpoints),
        rows,
        frames=frames_for(store, rows, settings.memory_budget_bytes),
        batch_size=settings.encode_batch_size,
        progress=show,
        group=_latent_group(settings, reference_seed),
        unit="images",
    )
    log.info("encoded %d image(s) with the best β-VAE", n_encoded)
    return {"n_encoded": n_encoded}


def analyse_image_seed(run: RunFolder, preset: dict, reference_seed: int, log=LOG) -> dict:
    """Î and the signed effects of one seed's influential factors (JSON-native)."""
    settings = ImagePreset.model_validate(preset)
    model = load_vae(run.seed_vae_dir(settings.train.seed, reference_seed), "best")
    group = _latent_group(settings, reference_seed)
    analysis = image_seed_factors(run.open_store(), model, settings, group, reference_seed)
    log.info(
        "seed %d: %d influential factor(s) %s",
        settings.train.seed,
        len(analysis.indices),
        analysis.indices.tolist(),
    )
    return analysis.to_dict()


def write_image_report(
    run: RunFolder,
    preset: dict,
    run_config: dict,
    source: dict,
    training: dict,
    ground_truth: dict | None,
    reference_seed: int | None = None,
    seed_analyses: list[dict] | None = None,
    log=LOG,
) -> dict:
    """Î on the test images, Table 2, traversal montages of the top factors; report.json and report.html.

    ``preset``'s seed is the model reported; with ``seed_analyses`` it is one seed of an ensemble
    whose reference seed is ``reference_seed``. Returns the report's summary (JSON-small).
    """
    settings = ImagePreset.model_validate(preset)
    reported = ReportedRun(
        run.location,
        run.open_store(),
        load_vae(run.seed_vae_dir(settings.train.seed, reference_seed), "best"),
        run_config,
        group=_latent_group(settings, reference_seed),
        seed_analyses=None if seed_analyses is None else [SeedFactors.from_dict(a) for a in seed_analyses],
        ground_truth=ground_truth,
    )
    report = build_image_report(reported, settings, source, training=training, reference_seed=reference_seed)
    cutoff = report["information_cutoff"]
    log.info(
        "report: %d of %d factor(s) influential; top %d hold %.0f %% of Î, MSE %+.1f %% against all factors",
        report["mi"]["n_influential"], len(report["mi"]["per_factor_nats"]), cutoff["n_factors"],
        100 * cutoff["share"], 100 * cutoff["relative_increase"],
    )  # fmt: skip
    return image_report_summary(run, report)


def image_report_summary(run: RunFolder, report: dict) -> dict:
    """What an image run returns: where its report is and its headline figures."""
    stability = ("n_seeds", "reported_seed", "most_representative_seed", "similarity_to_consensus")
    return {
        "report_json": str(run.report_json),
        "report_html": str(run.report_html),
        "n_factors": len(report["mi"]["per_factor_nats"]),
        "n_influential": report["mi"]["n_influential"],
        "total_mi_nats": report["mi"]["total_nats"],
        "information_cutoff": report["information_cutoff"],
        "topk": report["topk"],
        "ground_truth_check": report.get("ground_truth_check"),
        "skipped": report["source"].get("skipped", []),
        "stability": {key: report["stability"][key] for key in stability},
        "seeds_found": [
            factor["stability"]["seeds_found"] for factor in report["factors"] if factor["stability"]
        ],
    }


# The sequence -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSteps:
    """The steps of an image run after its data set's ingest. The defaults are the plain functions
    above; the flows pass the same steps wrapped as Prefect tasks."""

    train_vae: Callable[..., dict] = train_image_vae
    encode: Callable[..., dict] = encode_images
    analyse_seed: Callable[..., dict] = analyse_image_seed
    choose_reported_seed: Callable[..., int] = choose_reported_seed
    write_report: Callable[..., dict] = write_image_report


PLAIN_IMAGE_STEPS = ImageSteps()


def _learn_seeds(
    run: RunFolder, settings: ImagePreset, resume: bool, n_seeds: int, steps: ImageSteps
) -> tuple[ImagePreset, dict, int | None, list[dict] | None]:
    """Train and encode one β-VAE, or one per model seed (the run's seed and the next ones, one
    after another, their factors compared); returns the settings and training of the seed to
    report, the reference seed and every seed's analysis (None for one seed)."""
    if n_seeds == 1:
        training = steps.train_vae(run, settings.model_dump(mode="json"), resume)
        steps.encode(run, settings.model_dump(mode="json"))
        return settings, training, None, None
    reference = settings.train.seed
    trainings, analyses = {}, []
    for model_seed in range(reference, reference + n_seeds):
        seeded = with_model_seed(settings, model_seed).model_dump(mode="json")
        trainings[model_seed] = steps.train_vae(run, seeded, resume, reference)
        steps.encode(run, seeded, reference)
        analyses.append(steps.analyse_seed(run, seeded, reference))
    reported = steps.choose_reported_seed(analyses)
    return with_model_seed(settings, reported), trainings[reported], reference, analyses


def run_images(
    run: RunFolder | str,
    settings: ImagePreset,
    data_dir: str | None = None,
    *,
    resume: bool = False,
    n_seeds: int = 1,
    ingest: Callable[..., dict] | None = None,
    steps: ImageSteps = PLAIN_IMAGE_STEPS,
) -> dict:
    """An image data set (``settings.dataset``) through the stages of the paper into the run folder ``run``.

    Without ``data_dir`` MNIST runs on the 1797 handwritten digits bundled with scikit-learn
    and CelebA on procedural images with k = 4 known factors (:func:`image_settings` chooses the
    settings for either). ``resume`` continues β-VAE training from its last checkpoint; stored
    images and latents of the same model are never recomputed. ``n_seeds`` > 1 trains one β-VAE
    per model seed and reports the most representative seed. ``ingest`` replaces the data set's
    own ingest (the flows make it a task). Returns the report's summary.
    """
    run = RunFolder(run)
    chosen = IMAGE_DATASETS[settings.dataset]
    ingested = (ingest or chosen.ingest)(run, data_dir, settings.model_dump(mode="json"))
    run_config = {
        "preset": settings.model_dump(mode="json"),
        "seed": settings.train.seed,
        "resume": resume,
        "data_dir": data_dir,
    }
    # Until the report is written, a killed run leaves a marker saying what was left undone.
    begin_update(run, settings.model_dump(mode="json"), "training")
    reported, training, reference, analyses = _learn_seeds(run, settings, resume, n_seeds, steps)
    begin_update(run, settings.model_dump(mode="json"), "report")
    written = steps.write_report(
        run,
        reported.model_dump(mode="json"),
        run_config,
        chosen.source(data_dir, ingested),
        training,
        chosen.ground_truth(settings, data_dir),
        reference,
        analyses,
    )
    finish_update(run)
    return written

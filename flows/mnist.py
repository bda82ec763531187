"""MNIST flow: IDX files (or scikit-learn's digits) → store → β-VAE → encode → Î → Table 2 → report.

The learning and report tasks here serve every image data set; :mod:`flows.celeba` wires the
same tasks behind its own ingest.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.deap import choose_reported_seed
from flows.progress import progress_display
from pipeline.image_ingest import (
    ImageStoreConfig,
    frames_for,
    image_split,
    image_store_spec,
    ingest_image_batches,
)
from pipeline.image_presets import MNIST_IMAGE_SHAPE, ImagePreset, image_preset
from pipeline.image_report import build_image_report, image_seed_factors
from pipeline.ingest import open_store, store_path
from pipeline.learn import checkpoint_model_id, seed_latent_set, train_split_vae
from pipeline.models.encoding import encode_store
from pipeline.models.state import load_vae
from pipeline.sources.mnist import (
    EMBEDDED_DIGITS,
    digits_as_mnist,
    find_mnist_files,
    iter_mnist_folder,
    read_idx_header,
)
from pipeline.stability import SeedFactors
from pipeline.store import FrameStore

MNIST_VAL_FRACTION = 0.1
_IDX_BATCH = 4096
_PROGRESS_EVERY_IMAGES = 10_000


def mnist_store_config(embedded: bool, seed: int) -> ImageStoreConfig:
    """How the MNIST reader (or the embedded digits) makes pixels and splits them."""
    if embedded:
        return ImageStoreConfig(
            dataset="mnist",
            image_shape=MNIST_IMAGE_SHAPE,
            preprocessing="scikit-learn digits: 8x8 values / 16, bilinear zoom to 20x20, centred in 28x28",
            split_rule="seeded permutation, 0.8 train / 0.1 val / 0.1 test, exact counts",
            split_seed=seed,
        )
    return ImageStoreConfig(
        dataset="mnist",
        image_shape=MNIST_IMAGE_SHAPE,
        preprocessing="IDX unsigned bytes / 255",
        split_rule=f"training file: seeded permutation, {MNIST_VAL_FRACTION:g} of it validation; "
        "test file: test",
        split_seed=seed,
    )


def progress_logger(logger, label: str, every: int = _PROGRESS_EVERY_IMAGES):
    """An ingest ``progress`` callback that logs the counts every ``every`` images read."""
    state = {"logged": 0}

    def report(counts: dict) -> None:
        if counts["n_read"] - state["logged"] >= every:
            state["logged"] = counts["n_read"]
            logger.info("%s: %d image(s) read, %d newly stored", label, counts["n_read"], counts["n_written"])

    return report


@task
def ingest_mnist(out_dir: str, data_dir: str | None, preset: dict) -> dict:
    """Store MNIST's IDX images (headers checked first) or the embedded digits, within the preset's caps."""
    settings = ImagePreset.from_dict(preset)
    seed = settings.train.seed
    logger = get_run_logger()
    if data_dir is None:
        store = open_store(
            out_dir, image_store_spec(mnist_store_config(True, seed), "images", EMBEDDED_DIGITS)
        )
        batches = [digits_as_mnist(seed)]
    else:
        # A folder may hold a subset of MNIST, so the manifest's image counts are not required;
        # every file's presence and IDX header are checked before any work.
        for path in find_mnist_files(data_dir).values():
            read_idx_header(path)
        store = open_store(
            out_dir, image_store_spec(mnist_store_config(False, seed), "idx", str(Path(data_dir).resolve()))
        )
        batches = iter_mnist_folder(
            data_dir, batch_size=_IDX_BATCH, val_fraction=MNIST_VAL_FRACTION, seed=seed
        )
    result = ingest_image_batches(store, batches, settings.caps, progress_logger(logger, "MNIST"))
    store.consolidate()
    logger.info(
        "MNIST: %d image(s) taken %s, %d newly stored",
        sum(result.taken.values()),
        result.taken,
        result.n_written,
    )
    return result.to_dict()


def _checkpoint_dir(out_dir: str, model_seed: int | None = None, reference_seed: int | None = None) -> Path:
    """The β-VAE of the run's seed is in ``checkpoints/vae``, that of another seed of an ensemble
    (``--seeds``) in ``checkpoints/vae_seed<k>``."""
    if reference_seed is None or model_seed == reference_seed:
        return Path(out_dir) / "checkpoints" / "vae"
    return Path(out_dir) / "checkpoints" / f"vae_seed{model_seed}"


def with_model_seed(settings: ImagePreset, model_seed: int) -> ImagePreset:
    """``settings`` with the β-VAE trained from seed ``model_seed`` (split and data unchanged)."""
    return replace(settings, train=replace(settings.train, seed=int(model_seed)))


@task
def train_image_vae(out_dir: str, preset: dict, resume: bool, reference_seed: int | None = None) -> dict:
    """Train the β-VAE on the training images (validation images for early stopping).

    With ``reference_seed`` the model is one seed (``preset``'s) of an ensemble: a training state
    of this seed on the same split is continued (reused when finished) whatever ``resume`` says.
    """
    settings = ImagePreset.from_dict(preset)
    logger = get_run_logger()
    store = FrameStore.open(store_path(out_dir))
    split = image_split(store, settings.caps)
    rows = sorted({*split.train.tolist(), *split.val.tolist()})
    frames = frames_for(store, rows, settings.memory_budget_bytes)
    train_config = settings.train_config_for(int(split.train.size))
    checkpoints = _checkpoint_dir(out_dir, settings.train.seed, reference_seed)
    trained = []

    def report_epoch(record: dict) -> None:
        trained.append(record)
        val = "n/a" if record["val_loss"] is None else f"{record['val_loss']:.2f}"
        logger.info(
            "VAE epoch %d/%d: loss %.2f (reconstruction %.2f, KL %.2f), validation %s, %.0f s",
            record["epoch"], train_config.epochs, record["train_loss"], record["reconstruction"],
            record["kl"], val, record["seconds"],
        )  # fmt: skip

    with progress_display(logger.info) as show:
        result = train_split_vae(
            frames, split, settings.vae, train_config, checkpoints,
            resume=resume, reuse=reference_seed is not None, progress=report_epoch, steps=show,
        )  # fmt: skip
    if reference_seed is not None and not trained:
        logger.info("seed %d: reused, trained earlier (%d epochs)", settings.train.seed, len(result.history))
    return {
        "n_train": int(split.train.size),
        "n_val": int(split.val.size),
        "max_epochs": train_config.epochs,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
    }


@task
def encode_images(out_dir: str, preset: dict, reference_seed: int | None = None) -> dict:
    """Write μ and log σ² of every image of the split with the best β-VAE (of ``preset``'s seed,
    into its own latent group, when ``reference_seed`` makes it one seed of an ensemble)."""
    settings = ImagePreset.from_dict(preset)
    store = FrameStore.open(store_path(out_dir), writable=True)
    split = image_split(store, settings.caps)
    rows = sorted({*split.train.tolist(), *split.val.tolist(), *split.test.tolist()})
    checkpoints = _checkpoint_dir(out_dir, settings.train.seed, reference_seed)
    logger = get_run_logger()
    with progress_display(logger.info) as show:
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
    logger.info("encoded %d image(s) with the best β-VAE", n_encoded)
    return {"n_encoded": n_encoded}


def _latent_group(settings: ImagePreset, reference_seed: int | None) -> str:
    return seed_latent_set(
        settings.train.seed, settings.train.seed if reference_seed is None else reference_seed
    )


@task
def analyse_image_seed(out_dir: str, preset: dict, reference_seed: int) -> dict:
    """Î and the signed effects of one seed's influential factors (JSON-native)."""
    settings = ImagePreset.from_dict(preset)
    store = FrameStore.open(store_path(out_dir))
    model = load_vae(_checkpoint_dir(out_dir, settings.train.seed, reference_seed), "best")
    analysis = image_seed_factors(
        store, model, settings, _latent_group(settings, reference_seed), reference_seed
    )
    get_run_logger().info(
        "seed %d: %d influential factor(s) %s",
        settings.train.seed,
        len(analysis.indices),
        analysis.indices.tolist(),
    )
    return analysis.to_dict()


@task
def write_image_report(
    out_dir: str,
    preset: dict,
    run_config: dict,
    source: dict,
    training: dict,
    ground_truth: dict | None,
    reference_seed: int | None = None,
    seed_analyses: list[dict] | None = None,
) -> dict:
    """Î on the test images, Table 2, traversal montages of the top factors; report.json and report.html.

    ``preset``'s seed is the model reported; with ``seed_analyses`` it is one seed of an ensemble
    whose reference seed is ``reference_seed``.
    """
    settings = ImagePreset.from_dict(preset)
    store = FrameStore.open(store_path(out_dir))
    report = build_image_report(
        out_dir,
        store,
        load_vae(_checkpoint_dir(out_dir, settings.train.seed, reference_seed), "best"),
        settings,
        run_config,
        source,
        training=training,
        ground_truth=ground_truth,
        group=_latent_group(settings, reference_seed),
        seed_analyses=None if seed_analyses is None else [SeedFactors.from_dict(a) for a in seed_analyses],
        reference_seed=reference_seed,
    )
    cutoff = report["information_cutoff"]
    get_run_logger().info(
        "report: %d of %d factor(s) influential; top %d hold %.0f %% of Î, MSE %+.1f %% against all factors",
        report["mi"]["n_influential"], len(report["mi"]["per_factor_nats"]), cutoff["n_factors"],
        100 * cutoff["share"], 100 * cutoff["relative_increase"],
    )  # fmt: skip
    return {
        "report_json": str(Path(out_dir) / "report.json"),
        "report_html": str(Path(out_dir) / "report.html"),
        "n_factors": len(report["mi"]["per_factor_nats"]),
        "n_influential": report["mi"]["n_influential"],
        "total_mi_nats": report["mi"]["total_nats"],
        "information_cutoff": cutoff,
        "topk": report["topk"],
        "ground_truth_check": report.get("ground_truth_check"),
        "skipped": report["source"].get("skipped", []),
        "stability": {
            key: report["stability"][key]
            for key in ("n_seeds", "reported_seed", "most_representative_seed", "similarity_to_consensus")
        },
        "seeds_found": [
            factor["stability"]["seeds_found"] for factor in report["factors"] if factor["stability"]
        ],
    }


def learn_and_report(
    out_dir: str,
    settings: ImagePreset,
    run_config: dict,
    source: dict,
    ground_truth: dict | None = None,
    resume: bool = False,
    n_seeds: int = 1,
) -> dict:
    """The stages every image flow shares once its store is written: β-VAE, encode, report.

    ``n_seeds`` > 1 trains one β-VAE per model seed (the run's seed and the next ones, one after
    another), compares their influential factors, and reports the most representative seed.
    """
    preset = settings.to_dict()
    if n_seeds == 1:
        training = train_image_vae(out_dir, preset, resume)
        encode_images(out_dir, preset)
        return write_image_report(out_dir, preset, run_config, source, training, ground_truth)
    reference = settings.train.seed
    trainings, analyses = {}, []
    for model_seed in range(reference, reference + n_seeds):
        seeded = with_model_seed(settings, model_seed).to_dict()
        trainings[model_seed] = train_image_vae(out_dir, seeded, resume, reference)
        encode_images(out_dir, seeded, reference)
        analyses.append(analyse_image_seed(out_dir, seeded, reference))
    reported = choose_reported_seed(analyses)
    seeded = with_model_seed(settings, reported).to_dict()
    return write_image_report(
        out_dir, seeded, run_config, source, trainings[reported], ground_truth, reference, analyses
    )


@flow(name="mnist")
def mnist(
    out_dir: str,
    data_dir: str | None = None,
    preset: str = "demo",
    seed: int = 0,
    resume: bool = False,
    n_seeds: int = 1,
) -> dict:
    """MNIST through the stages of the paper: store → β-VAE → encode → Î → Table 2 → report.

    Without ``data_dir`` it runs on the 1797 handwritten digits bundled with scikit-learn, laid
    out like MNIST. ``resume`` continues β-VAE training from its last checkpoint; stored
    images and latents of the same model are never recomputed.
    """
    settings = image_preset("mnist", preset, seed)
    ingest = ingest_mnist(out_dir, data_dir, settings.to_dict())
    source = {
        "kind": "images" if data_dir is None else "idx",
        "path": EMBEDDED_DIGITS if data_dir is None else str(Path(data_dir).resolve()),
        "taken": ingest["taken"],
    }
    run_config = {"preset": settings.to_dict(), "seed": seed, "resume": resume, "data_dir": data_dir}
    return learn_and_report(out_dir, settings, run_config, source, resume=resume, n_seeds=n_seeds)

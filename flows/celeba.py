"""CelebA flow: aligned JPEGs (or procedural images) → store → β-VAE → encode → Î → Table 2 → report.

The learning and report tasks are those of :mod:`flows.mnist`; only the ingest differs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.mnist import learn_and_report, progress_logger
from pipeline.image_ingest import ImageStoreConfig, image_store_spec, ingest_image_batches
from pipeline.image_presets import CELEBA_IMAGE_SHAPE, ImagePreset, image_preset
from pipeline.ingest import open_store
from pipeline.sources.celeba import ALIGNED_CROP, PARTITION_FILE, check_celeba_folder, iter_celeba
from pipeline.sources.procedural import (
    EMBEDDED_PROCEDURAL,
    FACTORS,
    ProceduralSpec,
    iter_procedural_images,
)

_JPEG_BATCH = 256
_PROCEDURAL_BATCH = 512
_PROGRESS_EVERY_IMAGES = 5_000


def celeba_store_config(procedural: bool, seed: int) -> ImageStoreConfig:
    """How the CelebA reader (or the procedural generator) makes pixels and splits them."""
    side = CELEBA_IMAGE_SHAPE[1]
    if procedural:
        # The generator's ranges and edge are part of the description, so a store of images drawn
        # by another version of the generator is refused instead of mixed with these.
        factors = "; ".join(
            f"{f.name} [{f.low:.3g}, {f.high:.3g}] or {f.fixed:.3g}" for f in FACTORS.values()
        )
        return ImageStoreConfig(
            dataset="celeba",
            image_shape=CELEBA_IMAGE_SHAPE,
            preprocessing=f"procedural ellipses rendered at {side}x{side} RGB in [0, 1]: {factors}; "
            f"edge scale {ProceduralSpec().edge_px:g} px",
            split_rule="seeded permutation, 0.8 train / 0.1 val / 0.1 test, exact counts",
            split_seed=seed,
        )
    return ImageStoreConfig(
        dataset="celeba",
        image_shape=CELEBA_IMAGE_SHAPE,
        preprocessing=f"centred {ALIGNED_CROP}x{ALIGNED_CROP} crop (largest centred square if not 178x218), "
        f"bilinear to {side}x{side}, / 255",
        split_rule=f"{PARTITION_FILE} when present, else a seeded hash of the file name, 0.8 / 0.1 / 0.1",
        split_seed=seed,
    )


def procedural_spec(settings: ImagePreset) -> ProceduralSpec:
    """The embedded stand-in for CelebA at the preset's size: k = 4 independent factors."""
    return ProceduralSpec(
        seed=settings.train.seed, n_images=settings.embedded_images, size=CELEBA_IMAGE_SHAPE[1]
    )


@task
def ingest_celeba(out_dir: str, data_dir: str | None, preset: dict) -> dict:
    """Store CelebA's JPEGs (an unreadable one is named and skipped) or the procedural images."""
    settings = ImagePreset.from_dict(preset)
    seed = settings.train.seed
    logger = get_run_logger()
    skipped = []
    if data_dir is None:
        spec = procedural_spec(settings)
        store = open_store(out_dir, image_store_spec(
            celeba_store_config(True, seed), "synthetic", EMBEDDED_PROCEDURAL,
            extra_attrs={"ground_truth": spec.ground_truth()},
        ))  # fmt: skip
        batches = iter_procedural_images(spec, batch_size=_PROCEDURAL_BATCH)
    else:
        check_celeba_folder(data_dir, expect_complete=False)
        store = open_store(
            out_dir,
            image_store_spec(celeba_store_config(False, seed), "images", str(Path(data_dir).resolve())),
        )
        batches = iter_celeba(
            data_dir, batch_size=_JPEG_BATCH, size=CELEBA_IMAGE_SHAPE[1], seed=seed, skipped=skipped
        )
    report = progress_logger(logger, "CelebA", _PROGRESS_EVERY_IMAGES)
    result = ingest_image_batches(store, batches, settings.caps, report, skipped)
    for entry in result.skipped:
        logger.warning("skipped unreadable image %s: %s", entry["name"], entry["reason"])
    store.consolidate()
    logger.info(
        "CelebA: %d image(s) taken %s, %d newly stored, %d skipped",
        sum(result.taken.values()),
        result.taken,
        result.n_written,
        len(result.skipped),
    )
    return result.to_dict()


@flow(name="celeba")
def celeba(
    out_dir: str,
    data_dir: str | None = None,
    preset: str = "demo",
    seed: int = 0,
    resume: bool = False,
    n_seeds: int = 1,
) -> dict:
    """CelebA through the stages of the paper: store → β-VAE → encode → Î → Table 2 → report.

    Without ``data_dir`` it runs on procedural 64x64 images with k = 4 known independent
    factors, and the report compares k with the number of factors Î finds influential. An
    image that cannot be decoded is named in the log and the report and left out; the rest
    are used.
    """
    settings = image_preset("celeba", preset, seed, embedded=data_dir is None)
    ingest = ingest_celeba(out_dir, data_dir, settings.to_dict())
    ground_truth = procedural_spec(settings).ground_truth() if data_dir is None else None
    source = {
        "kind": "synthetic" if data_dir is None else "images",
        "path": EMBEDDED_PROCEDURAL if data_dir is None else str(Path(data_dir).resolve()),
        "taken": ingest["taken"],
        "skipped": ingest["skipped"],
    }
    run_config = {"preset": settings.to_dict(), "seed": seed, "resume": resume, "data_dir": data_dir}
    return learn_and_report(
        out_dir, settings, run_config, source, ground_truth, resume=resume, n_seeds=n_seeds
    )

"""The learning and report steps every image flow shares, as Prefect tasks (:mod:`pipeline.runs.images`)."""

from __future__ import annotations

from prefect import get_run_logger, task

from flows.deap import choose_reported_seed
from flows.runners import logged_step
from pipeline.run_folder import RunFolder
from pipeline.runs import images as images_run
from pipeline.runs.images import ImageSteps


@task
def train_image_vae(run: RunFolder, preset: dict, resume: bool, reference_seed: int | None = None) -> dict:
    return logged_step(images_run.train_image_vae, run, preset, resume, reference_seed)


@task
def encode_images(run: RunFolder, preset: dict, reference_seed: int | None = None) -> dict:
    return logged_step(images_run.encode_images, run, preset, reference_seed)


@task
def analyse_image_seed(run: RunFolder, preset: dict, reference_seed: int) -> dict:
    return images_run.analyse_image_seed(run, preset, reference_seed, log=get_run_logger())


@task
def write_image_report(
    run: RunFolder,
    preset: dict,
    run_config: dict,
    source: dict,
    training: dict,
    ground_truth: dict | None,
    reference_seed: int | None = None,
    seed_analyses: list[dict] | None = None,
) -> dict:
    return images_run.write_image_report(
        run, preset, run_config, source, training, ground_truth, reference_seed, seed_analyses,
        log=get_run_logger(),
    )  # fmt: skip


IMAGE_TASK_STEPS = ImageSteps(
    train_vae=train_image_vae,
    encode=encode_images,
    analyse_seed=analyse_image_seed,
    choose_reported_seed=choose_reported_seed,
    write_report=write_image_report,
)

"""The image flows (``mnist``, ``celeba``): :func:`pipeline.runs.images.run_images` with its ingest
and steps as Prefect tasks and the run folder held from start to end."""

from __future__ import annotations

from prefect import Flow, flow, get_run_logger, task

from flows.deap import choose_reported_seed
from flows.runners import exclusive_run, logged_step
from pipeline.runs import images as images_run
from pipeline.runs.images import IMAGE_DATASETS, ImageSteps, run_images
from pipeline.store.run_folder import RunFolder


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


def image_flow(dataset: str, description: str) -> Flow:
    """The flow of one image data set of :data:`pipeline.runs.images.IMAGE_DATASETS`, named after it."""

    @task(name=f"ingest_{dataset}")
    def ingest(run: RunFolder, data_dir: str | None, preset: dict) -> dict:
        return IMAGE_DATASETS[dataset].ingest(run, data_dir, preset, log=get_run_logger())

    def run_dataset(
        out_dir: str,
        data_dir: str | None = None,
        preset: str = "demo",
        seed: int = 0,
        resume: bool = False,
        n_seeds: int = 1,
    ) -> dict:
        return run_images(
            out_dir, dataset, data_dir, preset, seed,
            resume=resume, n_seeds=n_seeds, ingest=ingest, steps=IMAGE_TASK_STEPS,
        )  # fmt: skip

    # The run lock records the flow's name for whoever waits for the folder.
    run_dataset.__name__ = run_dataset.__qualname__ = dataset
    run_dataset.__doc__ = description
    return flow(name=dataset)(exclusive_run(local_only=True)(run_dataset))

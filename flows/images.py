"""The image flows (``mnist``, ``celeba``): :func:`pipeline.runs.images.run_images` with its ingest
and steps as Prefect tasks and the run folder held from start to end."""

from prefect import Flow, flow

from flows.runners import as_tasks, exclusive_run, step_task
from pipeline.models.presets import ImagePreset
from pipeline.runs.images import IMAGE_DATASETS, PLAIN_IMAGE_STEPS, image_settings, run_images

# The steps of an image run as tasks; the data set's ingest is added per run.
IMAGE_TASK_STEPS = as_tasks(PLAIN_IMAGE_STEPS)


def image_flow(dataset: str, description: str) -> Flow:
    """The flow of one image data set of :data:`pipeline.runs.images.IMAGE_DATASETS`, named after it."""

    def run_dataset(
        out_dir: str,
        data_dir: str | None = None,
        preset: str | ImagePreset = "demo",
        seed: int = 0,
        resume: bool = False,
        n_seeds: int = 1,
    ) -> dict:
        settings = image_settings(dataset, preset, seed, data_dir)
        ingest = step_task(IMAGE_DATASETS[dataset].ingest, name=f"ingest_{dataset}")
        return run_images(
            out_dir, settings, data_dir, resume=resume, n_seeds=n_seeds, ingest=ingest, steps=IMAGE_TASK_STEPS
        )

    # The run lock records the flow's name for whoever waits for the folder.
    run_dataset.__name__ = run_dataset.__qualname__ = dataset
    run_dataset.__doc__ = description
    return flow(name=dataset)(exclusive_run(local_only=True)(run_dataset))

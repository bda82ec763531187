"""CelebA flow: aligned JPEGs (or procedural images) → store → β-VAE → encode → Î → Table 2 → report.

The run is :func:`pipeline.runs.images.run_images`, with its ingest and steps as tasks
(:mod:`flows.images`) and the run folder held from start to end.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.images import IMAGE_TASK_STEPS
from flows.runners import exclusive_run
from pipeline.run_folder import RunFolder
from pipeline.runs import images as images_run


@task
def ingest_celeba(run: RunFolder, data_dir: str | None, preset: dict) -> dict:
    """Store CelebA's JPEGs (an unreadable one is named and skipped) or the procedural images."""
    return images_run.ingest_celeba(run, data_dir, preset, log=get_run_logger())


@flow(name="celeba")
@exclusive_run(local_only=True)
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
    return images_run.run_images(
        out_dir, "celeba", data_dir, preset, seed,
        resume=resume, n_seeds=n_seeds, ingest=ingest_celeba, steps=IMAGE_TASK_STEPS,
    )  # fmt: skip

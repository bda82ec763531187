"""MNIST flow: IDX files (or scikit-learn's digits) → store → β-VAE → encode → Î → Table 2 → report.

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
def ingest_mnist(run: RunFolder, data_dir: str | None, preset: dict) -> dict:
    """Store MNIST's IDX images (headers checked first) or the embedded digits, within the preset's caps."""
    return images_run.ingest_mnist(run, data_dir, preset, log=get_run_logger())


@flow(name="mnist")
@exclusive_run(local_only=True)
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
    return images_run.run_images(
        out_dir, "mnist", data_dir, preset, seed,
        resume=resume, n_seeds=n_seeds, ingest=ingest_mnist, steps=IMAGE_TASK_STEPS,
    )  # fmt: skip

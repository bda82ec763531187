"""Î finds the intrinsic dimension: on procedural images with k independent factors, k ± 1 influential.

The images go through the stages of the CelebA flow (store → β-VAE → encode → Î on the test
images) at 32x32 (the paper's 32x32 RGB architecture) so that training fits a test's budget.

Measured with 10 latents, factors above 0.05 nats for k = 4 (x, y, radius, hue), 2000 images,
20 epochs. This file's settings (β = 0.15, seed 0): 3, with Î 2.75, 2.63, 2.06, then 0.015 and
below. Calibration runs at learning rate 2e-3: β = 0.15 gave 3 and 3 (seeds 0, 2), β = 0.25
gave 2, 3, 3 (seeds 0, 1, 2), β = 0.1 gave 4 and 8 (seeds 0, 1). Shorter runs spread Î over
more latents (1000 images, 10 epochs: 7), so the k = 4 check is marked slow (about 90 s on one
core) and the fast one checks k = 1: the background grey level gave Î 2.23 and 1.72 nats, then
0.03 and below (count 2).
"""

import numpy as np
import pytest
import torch

from pipeline.image_ingest import (
    ImageStoreConfig,
    encode_image_store,
    frames_for,
    image_split,
    ingest_image_batches,
    open_image_store,
)
from pipeline.learn import store_mi
from pipeline.mi import DEFAULT_THRESHOLD_NATS, influential_factors
from pipeline.models.vae import VAEConfig
from pipeline.sources.procedural import EMBEDDED_PROCEDURAL, ProceduralSpec, iter_procedural_images
from pipeline.train import TrainConfig, train_vae

SIZE = 32
N_LATENTS = 10


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def influential_count(
    tmp_path, spec: ProceduralSpec, vae: VAEConfig, train: TrainConfig
) -> tuple[int, np.ndarray]:
    """Run the stages on ``spec``'s images; the number of factors above the threshold and every Î."""
    config = ImageStoreConfig(
        dataset="celeba",
        image_shape=(3, spec.size, spec.size),
        preprocessing="procedural",
        split_rule="seeded permutation",
        split_seed=spec.seed,
    )
    store = open_image_store(tmp_path / "run", config, "synthetic", EMBEDDED_PROCEDURAL)
    ingest_image_batches(store, iter_procedural_images(spec, batch_size=500))
    split = image_split(store)
    rows = store.committed_rows()
    frames = frames_for(store, rows, memory_budget_bytes=1 << 30)
    result = train_vae(frames, split.train, split.val, vae, train, tmp_path / "vae")
    encode_image_store(store, result.model, "procedural-test", rows, frames)
    estimate = store_mi(store, split.test)
    return int(influential_factors(estimate, DEFAULT_THRESHOLD_NATS).size), estimate.per_factor_nats


# β below 1 weighs the unit-variance Gaussian likelihood up (like a pixel noise sd of √β ≈ 0.4),
# so the small ellipse's factors are worth encoding within a few thousand steps; β = 0.25 left
# factors unlearnt, β = 0.1 split them over extra latents (the numbers are in the module doc).
BETA = 0.15


def _vae() -> VAEConfig:
    return VAEConfig(input_shape=(3, SIZE, SIZE), n_latents=N_LATENTS, beta=BETA, likelihood="gaussian")


def _train(epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, patience=epochs, seed=seed, trials_per_read=500)


def test_one_true_factor_gives_one_influential_factor_and_the_other_latents_collapse(tmp_path):
    """Sanity version (about 20 s on one core): k = 1 (the background grey level), k ± 1 found."""
    spec = ProceduralSpec(seed=0, n_images=1000, size=SIZE, factors=("background",))
    count, per_factor = influential_count(tmp_path, spec, _vae(), _train(epochs=6, seed=0))
    ranked = np.sort(per_factor)[::-1]
    assert abs(count - spec.n_factors) <= 1, f"Î per factor {np.round(ranked, 3)}"
    assert ranked[0] > 1.0  # the factor found carries real information
    assert ranked[2:].sum() < 0.05 * ranked.sum()  # the latents beyond k + 1 carry next to nothing


@pytest.mark.slow
def test_the_number_of_influential_factors_is_the_intrinsic_dimension_within_one(tmp_path):
    """The paper's claim on 4 independent factors (x, y, radius, hue): k ± 1 above 0.05 nats."""
    spec = ProceduralSpec(seed=0, n_images=2000, size=SIZE)
    count, per_factor = influential_count(tmp_path, spec, _vae(), _train(epochs=20, seed=0))
    assert spec.n_factors == 4
    assert abs(count - spec.n_factors) <= 1, f"Î per factor {np.round(np.sort(per_factor)[::-1], 3)}"

"""Î finds the intrinsic dimension: on procedural images with k independent factors, k ± 1 influential.

The images go through the stages of the CelebA flow (store → β-VAE → encode → Î on the test
images).

The k = 4 check (x, y, radius, hue) runs the demo's own settings on its 64x64 images, on each
seed of the demo's calibration: 4 factors above 0.05 nats on seeds 0, 1 and 2, the fourth at
1.66 nats or more and the fifth at 0.007 or less (the numbers and the settings that failed are
in ``pipeline.models.presets``). It is marked slow; seeds 1 and 2 are also marked calibration
and run only with ``-m calibration``.

The fast check (about 20 s on one core) runs k = 1, the background grey level, at 32x32 (the
paper's 32x32 RGB architecture) with 10 latents, β = 0.15 and 6 epochs of 1000 images.
"""

import numpy as np
import pytest
import torch

from pipeline.analysis.mi import DEFAULT_THRESHOLD_NATS, influential_factors
from pipeline.models.configs import TrainConfig
from pipeline.models.encoding import encode_store
from pipeline.models.learn import store_mi
from pipeline.models.presets import CELEBA_IMAGE_SHAPE, image_preset
from pipeline.models.training import train_vae
from pipeline.models.vae import VAEConfig
from pipeline.sources.procedural import EMBEDDED_PROCEDURAL, ProceduralSpec, iter_procedural_images
from pipeline.store.ingest_eeg import open_store
from pipeline.store.ingest_images import (
    ImageStoreConfig,
    frames_for,
    image_split,
    image_store_spec,
    ingest_image_batches,
)

SIZE = 32
N_LATENTS = 10
# The seeds of the demo's calibration (pipeline.models.presets); the claim must hold for each.
# Seed 0 runs with the suite; the other calibration seeds take about 2 minutes each and run on
# request (``pytest -m calibration``), to keep the suite within 10 minutes on 2 cores.
CALIBRATION_SEEDS = (
    0,
    pytest.param(1, marks=pytest.mark.calibration),
    pytest.param(2, marks=pytest.mark.calibration),
)


@pytest.fixture
def one_thread():
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
    store = open_store(tmp_path / "run", image_store_spec(config, "synthetic", EMBEDDED_PROCEDURAL))
    ingest_image_batches(store, iter_procedural_images(spec, batch_size=500))
    split = image_split(store)
    rows = store.committed_rows()
    frames = frames_for(store, rows, memory_budget_bytes=1 << 30)
    result = train_vae(frames, split.train, split.val, vae, train, tmp_path / "vae")
    encode_store(store, result.model, "procedural-test", rows, frames=frames, batch_size=512)
    estimate = store_mi(store, split.test)
    return int(influential_factors(estimate, DEFAULT_THRESHOLD_NATS).size), estimate.per_factor_nats


# β below 1 weighs the unit-variance Gaussian likelihood up (like a pixel noise sd of √β ≈ 0.4),
# so the background grey level is worth encoding within the test's 600 steps.
BETA = 0.15


def _vae() -> VAEConfig:
    return VAEConfig(input_shape=(3, SIZE, SIZE), n_latents=N_LATENTS, beta=BETA, likelihood="gaussian")


def _train(epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, patience=epochs, seed=seed, trials_per_read=500)


def test_one_true_factor_gives_one_influential_factor_and_the_other_latents_collapse(tmp_path, one_thread):
    """Sanity version (about 20 s on one core): k = 1 (the background grey level), k ± 1 found."""
    spec = ProceduralSpec(seed=0, n_images=1000, size=SIZE, factors=("background",))
    count, per_factor = influential_count(tmp_path, spec, _vae(), _train(epochs=6, seed=0))
    ranked = np.sort(per_factor)[::-1]
    assert abs(count - spec.n_factors) <= 1, f"Î per factor {np.round(ranked, 3)}"
    assert ranked[0] > 1.0  # the factor found carries real information
    assert ranked[2:].sum() < 0.05 * ranked.sum()  # the latents beyond k + 1 carry next to nothing


@pytest.mark.slow
@pytest.mark.parametrize("seed", CALIBRATION_SEEDS)
def test_the_demo_finds_the_intrinsic_dimension_within_one(tmp_path, seed):
    """The paper's claim where users see it: ``eegmi celeba``'s demo settings on its 64x64 images.

    Slow (about 2 minutes per seed on 2 idle cores): it trains the demo preset's β-VAE for its
    30 epochs, because the claim is about what the demo reports, and shorter runs are not. It
    uses torch's threads as ``eegmi celeba`` does (the calibration ran on one thread).
    """
    settings = image_preset("celeba", "demo", seed=seed, embedded=True)
    spec = ProceduralSpec(seed=seed, n_images=settings.embedded_images, size=CELEBA_IMAGE_SHAPE[1])
    train = settings.train_config_for(round(spec.n_images * spec.split_fractions[0]))
    count, per_factor = influential_count(tmp_path, spec, settings.vae, train)
    assert spec.n_factors == 4 and train.epochs == 30
    assert abs(count - spec.n_factors) <= 1, f"Î per factor {np.round(np.sort(per_factor)[::-1], 3)}"

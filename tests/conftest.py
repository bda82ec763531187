"""Test session set-up: an isolated, offline Prefect home and a single temporary Prefect server."""

from __future__ import annotations

import os
import tempfile

import pytest

# Prefect reads its settings at import time, so these must be set before any test imports it.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="eegmi-prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for every flow test of the session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_deap_preset(name: str = "demo", seed: int = 0):
    """A preset small enough for tests: a few epochs of an 8-factor VAE."""
    from pipeline.factors import FactorRules
    from pipeline.learn import LearnConfig
    from pipeline.models.vae import VAEConfig
    from pipeline.presets import DeapPreset
    from pipeline.train import ClassifierConfig, TrainConfig

    return DeapPreset(
        name="test",
        synthetic_subjects=3,
        learn=LearnConfig(
            vae=VAEConfig(input_shape=(3, 32, 32), n_latents=8, beta=4.0),
            train=TrainConfig(epochs=3, batch_size=128, lr=2e-3, patience=3, seed=seed, device="cpu"),
            classifier=ClassifierConfig(
                hidden=16, epochs=5, batch_size=16, patience=5, seed=seed, device="cpu"
            ),
            split_seed=seed,
        ),
        rules=FactorRules(n_permutations=200, n_seed_frames=4, min_reported=4),
    )


@pytest.fixture(scope="session")
def small_deap_run(prefect_harness, tmp_path_factory):
    """One small end-to-end ``deap`` run on the synthetic DEAP, shared by the tests that read its output."""
    import flows.deap

    out_dir = tmp_path_factory.mktemp("small-deap-run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flows.deap, "deap_preset", tiny_deap_preset)
        summary = flows.deap.deap(out_dir=str(out_dir), synthetic_subjects=3)
    return out_dir, summary

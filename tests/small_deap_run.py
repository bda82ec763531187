"""A small synthetic DEAP run of the whole ``deap`` flow, shared by the flow, notebook and browser tests."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from pipeline.analysis.factors import FactorRules
from pipeline.models.configs import ClassifierConfig, TrainConfig
from pipeline.models.learn import LearnConfig
from pipeline.models.presets import DEAP_FRAME_SHAPE, DeapPreset, with_betas
from pipeline.models.vae import VAEConfig
from pipeline.sources.synthetic_spec import scenario_spec

N_SUBJECTS = 3
TRIALS_PER_SUBJECT = 8
N_LATENTS = 4
SEED = 3


def tiny_preset(
    name: str, seed: int = 0, protocol: str | None = None, betas: tuple[float, ...] | None = None
) -> DeapPreset:
    """A preset that runs in seconds: few latents, one VAE epoch, a small LSTM, and at least one reported
    factor. 200 permutations keep a link possible: with all 4 factors tested the smallest q-value is
    4/201 = 0.02, below the 0.05 false discovery rate (50 would make it 0.078: nothing could be linked)."""
    preset = DeapPreset(
        name=f"tiny-{name}",
        synthetic_subjects=N_SUBJECTS,
        learn=LearnConfig(
            # β = 1 and a high learning rate: one epoch then gives influential factors to test and draw.
            vae=VAEConfig(input_shape=DEAP_FRAME_SHAPE, n_latents=N_LATENTS, beta=1.0),
            train=TrainConfig(epochs=1, batch_size=64, lr=3e-3, seed=seed, trials_per_read=8, device="cpu"),
            classifier=ClassifierConfig(hidden=8, epochs=3, batch_size=8, seed=seed, device="cpu"),
            split_seed=seed,
        ),
        rules=FactorRules(min_reported=1, n_permutations=200, n_seed_frames=4),
        protocol=protocol or "trial",
    )
    return with_betas(preset, betas) if betas else preset


def run_small_deap_flow(out_dir: Path, **options) -> tuple[Path, dict, dict]:
    """Run the flow on 3 synthetic subjects into ``out_dir``; returns (out_dir, flow result, report).

    ``options`` go to the flow (e.g. ``protocol="both"``, ``betas=[2.0, 4.0]``).
    """
    import flows.deap
    import pipeline.runs.deap
    import pipeline.runs.preprocess

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pipeline.runs.deap, "deap_preset", tiny_preset)
            # Fewer trials per subject than the synthetic DEAP's 40; the flow has no setting for it.
            patch.setattr(
                pipeline.runs.preprocess, "scenario_spec", partial(scenario_spec, n_trials=TRIALS_PER_SUBJECT)
            )
            result = flows.deap.deap(
                out_dir=str(out_dir), preset="demo", seed=SEED, synthetic_subjects=N_SUBJECTS, **options
            )
    finally:
        torch.set_num_threads(threads)
    report = json.loads((out_dir / "report.json").read_text())
    return out_dir, result, report

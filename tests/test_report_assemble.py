"""The report skeleton both builders share, the EEG factor figures and the numpy decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.analysis.splits import Split
from pipeline.analysis.stability import MATCH_THRESHOLD, SeedFactors
from pipeline.errors import InputError
from pipeline.models.decoding import latent_decoder
from pipeline.models.vae import BetaVAE
from pipeline.report.assemble import assemble_report, seed_stability, split_sizes
from pipeline.report.figures import PNG_SIGNATURE
from pipeline.report.traversals import eeg_factor_figures
from pipeline.sources.trials import DEAP_CHANNELS

BANDS = ("alpha", "beta", "gamma")


def _seed(number: int, effects: np.ndarray, indices: list[int]) -> SeedFactors:
    return SeedFactors(
        seed=number, indices=np.array(indices), effects=effects, mi_nats=np.linspace(1.0, 0.5, len(indices))
    )


def test_seed_stability_counts_a_factor_found_again_and_one_found_once():
    rng = np.random.default_rng(0)
    effects = rng.normal(size=(2, 3, 32))
    # Seed 8 learns the first factor again (sign flipped, other index) and a new one instead of the second.
    other = np.stack([-effects[0] + 0.05 * rng.normal(size=(3, 32)), rng.normal(size=(3, 32))])
    seeds = [_seed(7, effects, [3, 5]), _seed(8, other, [1, 6])]
    factors = [{"index": 3, "influential": True}, {"index": 5, "influential": True}]
    stability = seed_stability(factors, seeds, 7, "rule text", block_jaccard=0.5)
    assert stability["n_seeds"] == 2 and stability["seeds"] == [7, 8]
    assert stability["reference_seed"] == 7 and stability["reported_seed"] == 7
    assert stability["majority"] == 2
    assert stability["match_rule"] == "rule text" and stability["match_threshold"] == MATCH_THRESHOLD
    # The data set's extra rules sit between the match rule and the consensus.
    keys = list(stability)
    assert keys.index("match_threshold") < keys.index("block_jaccard") < keys.index("consensus")
    assert len(stability["consensus"]) == 3  # two reference factors and the one seed 8 adds
    assert factors[0]["stability"]["seeds_found"] == 2
    assert factors[0]["stability"]["matched"] == {"7": 3, "8": 1}
    assert factors[1]["stability"]["seeds_found"] == 1


def test_assembled_report_keeps_the_contract_order_and_leaves_out_absent_optional_keys():
    split = Split(train=np.arange(5), val=np.arange(5, 7), test=np.arange(7, 10), protocol="image", seed=0)
    report = assemble_report(
        "mnist",
        {"kind": "idx"},
        {"seed": 1},
        {"total_nats": 1.0},
        [],
        {"mse": "units"},
        {"information_cutoff": {"n_factors": 2}, "split_sizes": split_sizes(split)},
        [],
        {"n_seeds": 1},
        {"store": "s"},
        analyses={"emotion_relevance": {"tested": []}},
        optional={"training": None, "ground_truth": {"n_factors": 3}},
    )
    assert list(report) == [
        "dataset", "source", "config", "mi", "topk", "topk_units", "information_cutoff", "split_sizes",
        "factors", "stability", "emotion_relevance", "provenance", "ground_truth",
    ]  # fmt: skip
    assert report["split_sizes"] == {"train": 5, "val": 2, "test": 3}


def test_eeg_factor_figures_draw_the_traversed_factors_only_and_report_progress():
    rng = np.random.default_rng(1)
    values = np.linspace(-3.0, 3.0, 5)

    class Traversal:
        change = rng.uniform(size=(3, 32))
        frames = rng.normal(size=(5, 3, 8, 8))

    factors = [
        {"index": 4, "blocks": [{"band": "alpha", "electrodes": ["O1", "Oz"]}]},
        {"index": 9, "blocks": []},  # below the threshold: not traversed, not drawn
    ]
    steps = []
    figures = eeg_factor_figures(
        factors, {4: Traversal()}, values, DEAP_CHANNELS, BANDS, lambda *step: steps.append(step)
    )
    assert list(figures) == [4]
    assert set(figures[4]) == {"topomap", "traversal"}
    assert all(png.startswith(PNG_SIGNATURE) for png in figures[4].values())
    assert steps[-1] == ("figures (factors)", 1, 1)


def test_latent_decoder_is_the_models_decoder_and_refuses_anything_else():
    torch.manual_seed(0)
    model = BetaVAE((1, 28, 28), 4).eval()
    latents = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    decode = latent_decoder(model)
    with torch.no_grad():
        expected = model.decode(torch.from_numpy(latents)).numpy()
    np.testing.assert_array_equal(decode(latents), expected)
    # A strided view decodes as its contiguous copy.
    np.testing.assert_array_equal(decode(np.repeat(latents, 2, axis=0)[::2]), expected)
    assert decode(latents).shape == (6, 1, 28, 28)
    with pytest.raises(InputError, match="BetaVAE"):
        latent_decoder(torch.nn.Linear(4, 4))

"""Matching factors across seeds by their signed effect maps (pipeline.analysis.stability)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis.stability import (
    MATCH_THRESHOLD,
    SeedFactors,
    absolute_cosine,
    annotate_factors,
    block_seeds_found,
    consensus_factors,
    consensus_of,
    match_factors,
    representative_seed,
)
from pipeline.errors import InputError

N_BANDS, N_ELECTRODES = 3, 32


def _maps(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, N_BANDS, N_ELECTRODES))


def _seed(number: int, effects: np.ndarray, indices=None, linked=None, blocks=None) -> SeedFactors:
    n = len(effects)
    return SeedFactors(
        seed=number,
        indices=np.arange(n) if indices is None else np.asarray(indices),
        effects=effects,
        mi_nats=np.linspace(1.0, 0.1, n),
        linked=np.zeros(n, dtype=bool) if linked is None else np.asarray(linked),
        blocks=[[] for _ in range(n)] if blocks is None else blocks,
    )


def test_a_permutation_with_sign_flips_is_matched_exactly():
    rng = np.random.default_rng(0)
    reference = _maps(rng, 6)
    permutation = np.array([3, 0, 5, 1, 4, 2])  # other[k] is reference[permutation[k]]
    signs = np.array([-1, 1, -1, -1, 1, 1])[:, None, None]
    # Another seed learns the same factors in another order, some with z_j -> -z_j, with small changes.
    other = signs * reference[permutation] + 0.05 * _maps(rng, 6)
    pairs = match_factors(reference, other)
    assert sorted((ref, pos) for ref, pos, _ in pairs) == sorted((int(permutation[k]), k) for k in range(6))
    assert all(similarity > 0.95 for _, _, similarity in pairs)

    seeds = [
        _seed(0, reference, indices=[10, 11, 12, 13, 14, 15]),
        _seed(1, other, indices=[20, 21, 22, 23, 24, 25]),
    ]
    consensus = consensus_factors(seeds)
    assert len(consensus) == 6
    assert all(factor["seeds_found"] == 2 for factor in consensus)
    for k, ref in enumerate(permutation):
        assert consensus[ref]["members"] == {0: 10 + int(ref), 1: 20 + k}


def test_a_factor_without_counterpart_is_found_in_one_seed():
    rng = np.random.default_rng(1)
    shared = _maps(rng, 4)
    lonely_reference, lonely_other = _maps(rng, 1), _maps(rng, 1)
    seeds = [
        _seed(0, np.concatenate([shared, lonely_reference])),
        _seed(1, np.concatenate([-shared[::-1], lonely_other])),
        _seed(2, np.concatenate([shared[[1, 0, 3, 2]], _maps(rng, 1)])),
    ]
    consensus = consensus_factors(seeds)
    # 4 shared factors found in all 3 seeds; the reference's random map found in 1; and the
    # other seeds' random maps each become their own consensus factor, found in 1.
    assert [factor["seeds_found"] for factor in consensus] == [3, 3, 3, 3, 1, 1, 1]
    assert consensus[4]["members"] == {0: 4}
    assert consensus_of(consensus, 1, 4)["seeds_found"] == 1
    assert consensus_of(consensus, 2, 4)["seeds_found"] == 1


def test_a_map_below_the_threshold_does_not_match_even_when_it_is_the_best_available():
    rng = np.random.default_rng(2)
    reference = _maps(rng, 1)[0].ravel()
    noise = rng.normal(size=reference.size)
    noise -= (noise @ reference) / (reference @ reference) * reference  # orthogonal to the reference
    # |cos| = 0.6: the two maps share a component, but it is not the same factor.
    partial = 0.6 * reference / np.linalg.norm(reference) + 0.8 * noise / np.linalg.norm(noise)
    assert absolute_cosine(reference[None], partial[None])[0, 0] == pytest.approx(0.6)
    assert match_factors(reference[None], partial[None]) == []
    assert match_factors(reference[None], partial[None], threshold=0.55) != []


def test_two_candidates_for_one_factor_give_one_match():
    """Hungarian assignment is one-to-one: a second copy of a factor does not inflate its count."""
    rng = np.random.default_rng(3)
    reference = _maps(rng, 2)
    other = np.stack([reference[0], 0.98 * reference[0] + 0.05 * _maps(rng, 1)[0], reference[1]])
    seeds = [_seed(0, reference), _seed(1, other)]
    consensus = consensus_factors(seeds)
    assert [factor["seeds_found"] for factor in consensus] == [2, 2, 1]


def test_random_maps_stay_far_below_the_threshold():
    """The threshold's justification: unrelated maps of 3 bands x 32 electrodes have |cos| near 0.1."""
    rng = np.random.default_rng(4)
    similarity = absolute_cosine(_maps(rng, 200), _maps(rng, 200))
    assert similarity.max() < MATCH_THRESHOLD - 0.2
    # The cosine of two unrelated maps has standard deviation 1/sqrt(D): 0.10 for D = 96.
    assert np.sqrt(np.mean(similarity**2)) == pytest.approx(1 / np.sqrt(N_BANDS * N_ELECTRODES), rel=0.1)


def test_blocks_count_seeds_with_a_block_of_the_same_band_and_jaccard_at_least_one_half():
    rng = np.random.default_rng(5)
    effect = _maps(rng, 1)
    block = {"band": "gamma", "electrodes": ["C4", "T8", "P4", "P8"]}
    seeds = [
        _seed(0, effect, blocks=[[block]]),
        _seed(1, effect, blocks=[[{"band": "gamma", "electrodes": ["C4", "T8", "P4"]}]]),  # Jaccard 0.75
        _seed(2, effect, blocks=[[{"band": "alpha", "electrodes": ["C4", "T8", "P4", "P8"]}]]),  # other band
        _seed(3, effect, blocks=[[{"band": "gamma", "electrodes": ["C4", "T8", "CP2"]}]]),  # Jaccard 0.4
    ]
    assert consensus_factors(seeds)[0]["seeds_found"] == 4
    assert block_seeds_found(block, seeds) == 2


def test_a_block_counts_in_a_seed_that_shows_it_on_another_factor_than_the_matched_one():
    """Seed 1's factor that matches seed 0's carries only an alpha block; the gamma block sits on
    another of its factors. The block counts in both seeds (the matched factor alone gives 1)."""
    rng = np.random.default_rng(7)
    effects = _maps(rng, 2)
    block = {"band": "gamma", "electrodes": ["C4", "T8", "P4", "P8"]}
    seeds = [
        _seed(0, effects[:1], blocks=[[block]]),
        _seed(1, effects, blocks=[[{"band": "alpha", "electrodes": ["Fp1", "AF3"]}], [block]]),
    ]
    assert block_seeds_found(block, seeds) == 2
    assert block_seeds_found({"band": "beta", "electrodes": ["C4", "T8"]}, seeds) == 0


def test_a_block_counts_as_linked_only_in_seeds_where_an_emotion_linked_factor_shows_it():
    rng = np.random.default_rng(8)
    effects = _maps(rng, 2)
    block = {"band": "gamma", "electrodes": ["C4", "T8", "P4", "P8"]}
    other = {"band": "beta", "electrodes": ["O1", "Oz", "O2"]}
    seeds = [
        _seed(0, effects, linked=[True, False], blocks=[[block], [other]]),
        _seed(1, effects, linked=[False, True], blocks=[[block], [other]]),  # the block's factor not linked
        _seed(2, effects, linked=[False, True], blocks=[[other], [block, other]]),  # on the linked one
    ]
    assert block_seeds_found(block, seeds) == 3
    assert block_seeds_found(block, seeds, linked_only=True) == 2
    assert block_seeds_found(other, seeds, linked_only=True) == 2


def test_the_representative_seed_is_the_one_closest_to_the_consensus():
    rng = np.random.default_rng(6)
    truth = _maps(rng, 3)
    seeds = [
        _seed(0, truth + 0.3 * _maps(rng, 3)),
        _seed(1, truth + 0.05 * _maps(rng, 3)),  # the cleanest copy
        _seed(2, truth + 0.3 * _maps(rng, 3)),
        _seed(3, np.concatenate([truth[:1], _maps(rng, 2)])),  # misses two stable factors
    ]
    chosen, scores = representative_seed(seeds, consensus_factors(seeds))
    assert chosen == 1
    assert scores[3] < min(scores[0], scores[2])


def test_annotated_report_factors_carry_their_counts():
    rng = np.random.default_rng(7)
    effects = _maps(rng, 2)
    blocks = [[{"band": "gamma", "electrodes": ["C4", "T8"]}], [{"band": "alpha", "electrodes": ["Fp1"]}]]
    seeds = [
        _seed(0, effects, indices=[4, 7], linked=[True, False], blocks=blocks),
        _seed(1, -effects[::-1], indices=[2, 5], linked=[False, True], blocks=blocks[::-1]),
        _seed(2, _maps(rng, 1), indices=[1], linked=[True], blocks=[[]]),
    ]
    consensus = consensus_factors(seeds)
    factors = [
        {"index": 4, "influential": True, "blocks": [{"band": "gamma", "electrodes": ["C4", "T8"]}]},
        {"index": 7, "influential": True, "blocks": [{"band": "alpha", "electrodes": ["Fp1"]}]},
        {"index": 9, "influential": False, "blocks": []},
    ]
    annotate_factors(factors, seeds, consensus, seed=0)
    assert factors[0]["stability"]["seeds_found"] == 2
    assert factors[0]["stability"]["seeds_linked"] == 2  # linked in seed 0 (z4) and seed 1 (z5)
    assert factors[0]["stability"]["matched"] == {"0": 4, "1": 5}
    assert factors[0]["blocks"][0]["seeds_found"] == 2
    assert factors[1]["stability"]["seeds_linked"] == 0
    assert factors[2]["stability"] is None


def test_mismatched_inputs_are_refused():
    with pytest.raises(InputError, match="2 factors"):
        SeedFactors(seed=0, indices=np.arange(2), effects=np.zeros((3, 4)), mi_nats=np.zeros(2))
    rng = np.random.default_rng(8)
    with pytest.raises(InputError, match="repeat"):
        consensus_factors([_seed(0, _maps(rng, 1)), _seed(0, _maps(rng, 1))])
    with pytest.raises(InputError, match="threshold"):
        match_factors(_maps(rng, 1), _maps(rng, 1), threshold=0.0)


def test_seed_factors_survive_json():
    rng = np.random.default_rng(9)
    seed = _seed(3, _maps(rng, 2), indices=[5, 1], linked=[True, False])
    again = SeedFactors.from_dict(seed.to_dict())
    assert again.seed == 3 and again.indices.tolist() == [5, 1] and again.linked.tolist() == [True, False]
    np.testing.assert_array_equal(again.effects, seed.effects)
    empty = SeedFactors.from_dict(_seed(4, np.zeros((0, N_BANDS, N_ELECTRODES))).to_dict())
    assert len(empty.indices) == 0 and consensus_factors([seed, empty])[0]["seeds_found"] == 1

"""Which factors come back when the β-VAE is trained again with another seed.

Which factors a VAE learns depends on its random seed about as much as on the model, so a run
can train N β-VAEs (model seeds S … S+N−1, one split and normalisation) and report how often
each factor and each electrode block is found again.

Factors are matched by what they do, not by their index: a factor's *effect* is its signed
change map (the decoded output at z_j = +3 minus that at z_j = −3, averaged over the traversal's
seed frames; for EEG sampled per band at the electrodes, for images the whole mean change
image). Each seed's influential factors are matched to the reference seed's (seed S) by
Hungarian assignment on the absolute cosine similarity of their effects, so a factor whose sign
flipped (z_j ↦ −z_j is the same factor) still matches; a pair matches only when its similarity
is at least :data:`MATCH_THRESHOLD`. Every reference factor, and every factor of another seed
that matched none, is one *consensus factor*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.analysis.blocks import block_jaccard
from pipeline.errors import InputError

# |cos| ≥ 0.7: the matched effect's projection carries at least half (0.7² = 0.49) of its
# squared norm. Unrelated maps are far below it: the cosine of two random maps of D values has
# a standard deviation of 1/√D (0.10 for DEAP's 3 bands × 32 electrodes, less for images), so
# 0.7 is about seven standard deviations of chance (tests/test_stability.py).
MATCH_THRESHOLD = 0.7
# A block is found again in a seed when one of its influential factors has a block of the same
# band over mostly the same electrodes: |A ∩ B| / |A ∪ B| ≥ 0.5 (the planted-block check uses
# the same overlap).
BLOCK_JACCARD = 0.5


@dataclass(frozen=True)
class SeedFactors:
    """The influential factors of one seed's β-VAE, as the matching needs them: n factors, each
    with its index, signed effect map and Î, in this seed's ranking order."""

    # The model seed.
    seed: int
    # int (n,): the factors' indices in this seed's latent space.
    indices: np.ndarray
    # (n, ...): each factor's signed effect map, any shape per factor (flattened for the matching).
    effects: np.ndarray
    # (n,): each factor's Î(X;Z_j).
    mi_nats: np.ndarray
    # bool (n,): emotion-linked (EEG only; None for images).
    linked: np.ndarray | None = None
    # Each factor's electrode blocks (``band``, ``electrodes``; EEG only).
    blocks: list[list[dict]] | None = None

    def __post_init__(self) -> None:
        n = len(self.indices)
        if np.asarray(self.effects).shape[:1] != (n,) or np.asarray(self.mi_nats).shape != (n,):
            raise InputError(
                f"seed {self.seed}",
                f"{n} factors but effects of shape {np.shape(self.effects)} and Î of shape "
                f"{np.shape(self.mi_nats)}",
            )
        if self.linked is not None and np.asarray(self.linked).shape != (n,):
            raise InputError(f"seed {self.seed}", f"{n} factors but linked of shape {np.shape(self.linked)}")
        if self.blocks is not None and len(self.blocks) != n:
            raise InputError(f"seed {self.seed}", f"{n} factors but {len(self.blocks)} block lists")

    def position(self, index: int) -> int:
        """Where factor ``index`` is in this seed's lists."""
        found = np.flatnonzero(np.asarray(self.indices) == index)
        if found.size == 0:
            raise InputError(f"seed {self.seed}", f"factor {index} is not one of its influential factors")
        return int(found[0])

    def to_dict(self) -> dict:
        return {
            "seed": int(self.seed),
            "indices": [int(i) for i in self.indices],
            "effects": np.asarray(self.effects, dtype=np.float64).tolist(),
            "mi_nats": [float(v) for v in self.mi_nats],
            "linked": None if self.linked is None else [bool(v) for v in self.linked],
            "blocks": self.blocks,
        }

    @classmethod
    def from_dict(cls, values: dict) -> SeedFactors:
        n = len(values["indices"])
        effects = np.asarray(values["effects"], dtype=np.float64)
        return cls(
            seed=int(values["seed"]),
            indices=np.asarray(values["indices"], dtype=np.int64),
            effects=effects if n else effects.reshape(0, 1),
            mi_nats=np.asarray(values["mi_nats"], dtype=np.float64),
            linked=None if values.get("linked") is None else np.asarray(values["linked"], dtype=bool),
            blocks=values.get("blocks"),
        )


def _unit_rows(effects: np.ndarray) -> np.ndarray:
    flat = np.asarray(effects, dtype=np.float64).reshape(len(effects), -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    # A flat map (no effect) has no direction: it is similar to nothing.
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)


def absolute_cosine(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """|cos| between every effect of ``first`` (n, ...) and of ``second`` (m, ...): shape (n, m)."""
    a, b = _unit_rows(first), _unit_rows(second)
    if a.shape[1:] != b.shape[1:] and a.size and b.size:
        raise InputError("effects", f"maps of {a.shape[1]} and {b.shape[1]} values cannot be compared")
    return np.abs(a @ b.T)


def match_factors(
    reference: np.ndarray, other: np.ndarray, threshold: float = MATCH_THRESHOLD
) -> list[tuple[int, int, float]]:
    """Pairs (reference position, other position, |cos|) of the best one-to-one matching.

    Hungarian assignment maximises the summed |cos| over all pairs; a pair below ``threshold``
    is dropped (those factors have no counterpart).
    """
    if not 0 < threshold <= 1:
        raise InputError("threshold", f"{threshold!r}; expected a number in (0, 1]")
    if len(reference) == 0 or len(other) == 0:
        return []
    similarity = absolute_cosine(reference, other)
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return [
        (int(r), int(c), float(similarity[r, c]))
        for r, c in zip(rows, cols, strict=True)
        if similarity[r, c] >= threshold
    ]


def consensus_factors(seeds: Sequence[SeedFactors], threshold: float = MATCH_THRESHOLD) -> list[dict]:
    """Consensus factors of the seeds, ``seeds[0]`` being the reference.

    Returns
    -------
    list of dict
        One per reference factor (in its ranking order), then one per factor of another seed that
        matched no reference factor. Each has ``members`` ({seed: factor index}), ``similarity``
        ({seed: |cos| to the reference factor}), ``seeds_found``, ``median_mi_nats``,
        ``seeds_linked`` (None without emotion links) and ``effect``: the mean of the members'
        unit effect maps, each signed to agree with the first member's, scaled to unit norm.
    """
    if not seeds:
        raise InputError("seeds", "no seed to match")
    if len({s.seed for s in seeds}) != len(seeds):
        raise InputError("seeds", f"seed numbers repeat: {[s.seed for s in seeds]}")
    reference = seeds[0]
    groups: list[dict[int, int]] = [{0: position} for position in range(len(reference.indices))]
    similarity: list[dict[int, float]] = [{0: 1.0} for _ in groups]
    for k, seed in enumerate(seeds[1:], start=1):
        matched = set()
        for ref_position, position, value in match_factors(reference.effects, seed.effects, threshold):
            groups[ref_position][k] = position
            similarity[ref_position][k] = value
            matched.add(position)
        for position in range(len(seed.indices)):
            if position not in matched:
                groups.append({k: position})
                similarity.append({k: 1.0})
    return [_consensus_record(seeds, members, similarity[g]) for g, members in enumerate(groups)]


def _consensus_record(seeds: Sequence[SeedFactors], members: dict[int, int], similarity: dict) -> dict:
    units = [_unit_rows(seeds[k].effects[[p]])[0] for k, p in members.items()]
    first = units[0]
    aligned = [unit if unit @ first >= 0 else -unit for unit in units]
    mean = np.mean(aligned, axis=0)
    norm = np.linalg.norm(mean)
    linked = [seeds[k].linked for k in members]
    return {
        "members": {seeds[k].seed: int(seeds[k].indices[p]) for k, p in members.items()},
        "similarity": {seeds[k].seed: value for k, value in similarity.items()},
        "seeds_found": len(members),
        "median_mi_nats": float(np.median([seeds[k].mi_nats[p] for k, p in members.items()])),
        "seeds_linked": (
            None
            if any(values is None for values in linked)
            else int(sum(bool(seeds[k].linked[p]) for k, p in members.items()))
        ),
        "effect": mean / norm if norm > 0 else mean,
    }


def block_seeds_found(
    block: dict, seeds: Sequence[SeedFactors], jaccard: float = BLOCK_JACCARD, linked_only: bool = False
) -> int:
    """In how many seeds any influential factor (with ``linked_only``, any emotion-linked one) has
    a block of ``block``'s band with Jaccard ≥ ``jaccard`` over the electrodes.

    Any factor, not only the matched one: a seed that spread the effect over two near-duplicate
    factors, or mixed it with another effect, still shows the block, and that is what a reader
    of "found in k of N seeds" asks about (the factor's own count says whether the factorisation
    came back).
    """
    count = 0
    for seed in seeds:
        if seed.blocks is None:
            raise InputError(f"seed {seed.seed}", "has no electrode blocks to compare")
        if linked_only and seed.linked is None:
            raise InputError(f"seed {seed.seed}", "has no emotion links to compare")
        if any(
            other["band"] == block["band"]
            and block_jaccard(other["electrodes"], block["electrodes"]) >= jaccard
            for position, factor_blocks in enumerate(seed.blocks)
            if not linked_only or seed.linked[position]
            for other in factor_blocks
        ):
            count += 1
    return count


def majority(n_seeds: int) -> int:
    """The smallest count that is more than half of ``n_seeds``."""
    return n_seeds // 2 + 1


def representative_seed(
    seeds: Sequence[SeedFactors], consensus: Sequence[dict]
) -> tuple[int, dict[int, float]]:
    """The seed whose matched factors are on average most similar to the consensus.

    Each seed scores the mean, over the consensus factors found in a majority of seeds, of the
    |cos| between its member's effect and the consensus effect (0 where it has no member, so a
    seed that misses a stable factor scores lower). Ties go to the earlier seed (the reference
    first). Returns the seed and every seed's score.
    """
    stable = [c for c in consensus if c["seeds_found"] >= majority(len(seeds))]
    scores = {}
    for seed in seeds:
        values = []
        for factor in stable:
            if seed.seed in factor["members"]:
                effect = seed.effects[seed.position(factor["members"][seed.seed])]
                values.append(float(absolute_cosine(effect[None], factor["effect"][None])[0, 0]))
            else:
                values.append(0.0)
        scores[seed.seed] = float(np.mean(values)) if values else 0.0
    best = max(range(len(seeds)), key=lambda k: (scores[seeds[k].seed], -k))
    return seeds[best].seed, scores


def consensus_of(consensus: Sequence[dict], seed: int, index: int) -> dict:
    """The consensus factor that holds factor ``index`` of ``seed``."""
    for factor in consensus:
        if factor["members"].get(seed) == index:
            return factor
    raise InputError(f"seed {seed}", f"factor {index} belongs to no consensus factor")


def consensus_summary(consensus: Sequence[dict]) -> list[dict]:
    """JSON-native consensus factors (their effect maps left out)."""
    return [
        {
            "members": {str(seed): index for seed, index in factor["members"].items()},
            "similarity": {str(seed): round(value, 4) for seed, value in factor["similarity"].items()},
            "seeds_found": factor["seeds_found"],
            "median_mi_nats": factor["median_mi_nats"],
            "seeds_linked": factor["seeds_linked"],
        }
        for factor in consensus
    ]


def annotate_factors(
    factors: list[dict], seeds: Sequence[SeedFactors], consensus: Sequence[dict], seed: int
) -> None:
    """Add ``stability`` to each of ``seed``'s report factors and ``seeds_found`` to their blocks.

    An influential factor gets ``stability`` {``seeds_found``, ``seeds_linked`` (EEG),
    ``median_mi_nats``, ``matched`` ({seed: factor index})}; a factor below the influential
    threshold is not matched (``stability`` None). Each block of an influential factor gets
    ``seeds_found`` and (EEG) ``seeds_linked``: in how many seeds an influential, respectively an
    emotion-linked, factor shows it (see :func:`block_seeds_found`).
    """
    for factor in factors:
        if not factor.get("influential", True):
            factor["stability"] = None
            continue
        match = consensus_of(consensus, seed, int(factor["index"]))
        factor["stability"] = {
            "seeds_found": match["seeds_found"],
            **({} if match["seeds_linked"] is None else {"seeds_linked": match["seeds_linked"]}),
            "median_mi_nats": match["median_mi_nats"],
            "matched": {str(number): index for number, index in match["members"].items()},
        }
        for block in factor.get("blocks", []):
            block["seeds_found"] = block_seeds_found(block, seeds)
            if match["seeds_linked"] is not None:
                block["seeds_linked"] = block_seeds_found(block, seeds, linked_only=True)

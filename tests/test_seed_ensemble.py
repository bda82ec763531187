"""``eegmi deap --seeds N``: each seed's model and latents in their own place, seeds already trained
are reused by a rerun with another N, and the report says how often each factor and block came back."""

from __future__ import annotations

import pytest
from small_deap_run import SEED, run_small_deap_flow, tiny_preset

from pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.models.learn import (
    can_continue_training,
    checkpoint_model_id,
    seed_latent_set,
    train_store_vae,
    with_model_seed,
)
from pipeline.store.frames import FrameStore
from pipeline.store.run_folder import store_path


def _state(directory):
    """The training state's bytes and modification time: unchanged when no epoch was trained."""
    path = directory / "last.json"
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def two_then_three_seeds(prefect_harness, tmp_path_factory):
    """Run the flow with 2 seeds, then again into the same folder with 3."""
    out_dir = tmp_path_factory.mktemp("seeds") / "run"
    checkpoints = out_dir / "checkpoints"
    _, _, first = run_small_deap_flow(out_dir, n_seeds=2)
    before = {
        "states": {name: _state(checkpoints / name) for name in ("vae", f"vae_seed{SEED + 1}")},
        "model_ids": {
            name: checkpoint_model_id(checkpoints / name) for name in ("vae", f"vae_seed{SEED + 1}")
        },
    }
    _, result, second = run_small_deap_flow(out_dir, n_seeds=3)
    return out_dir, first, before, result, second


def test_a_rerun_with_more_seeds_reuses_the_seeds_already_trained(two_then_three_seeds):
    out_dir, first, before, _, second = two_then_three_seeds
    checkpoints = out_dir / "checkpoints"
    assert first["stability"]["seeds"] == [SEED, SEED + 1]
    assert second["stability"]["seeds"] == [SEED, SEED + 1, SEED + 2]
    for name, state in before["states"].items():
        assert _state(checkpoints / name) == state, f"{name} was trained again"
        assert checkpoint_model_id(checkpoints / name) == before["model_ids"][name]
    assert (checkpoints / f"vae_seed{SEED + 2}" / "last.json").exists()
    # Each seed has its own latents, written by its own model.
    store = FrameStore.open(store_path(str(out_dir)))
    n_trials = len(store.committed_rows())
    for seed in (SEED, SEED + 1, SEED + 2):
        group = seed_latent_set(seed, SEED)
        directory = checkpoints / ("vae" if seed == SEED else f"vae_seed{seed}")
        assert store.latent_model_id_of(group) == checkpoint_model_id(directory)
        assert len(store.latent_rows(group)) == n_trials
    assert len({store.latent_model_id_of(seed_latent_set(s, SEED)) for s in (SEED, SEED + 1, SEED + 2)}) == 3


def test_the_report_says_how_often_each_factor_and_block_came_back(two_then_three_seeds):
    out_dir, _, _, result, report = two_then_three_seeds
    stability = report["stability"]
    assert stability["n_seeds"] == 3 and stability["majority"] == 2
    assert stability["reported_seed"] == stability["most_representative_seed"] in stability["seeds"]
    assert result["stability"]["reported_seed"] == stability["reported_seed"]
    # The report's model is the reported seed's: its Î is that seed's.
    reported = stability["reported_seed"]
    consensus = stability["consensus"]
    for factor in report["factors"]:
        if not factor["influential"]:
            assert factor["stability"] is None
            continue
        found = factor["stability"]
        assert found["matched"][str(reported)] == factor["index"]
        assert found["seeds_found"] == len(found["matched"])
        assert 0 <= found["seeds_linked"] <= found["seeds_found"]
        member = next(c for c in consensus if c["members"].get(str(reported)) == factor["index"])
        assert member["seeds_found"] == found["seeds_found"]
        for block in factor["blocks"]:
            assert 1 <= block["seeds_found"] <= stability["n_seeds"]
            assert 0 <= block["seeds_linked"] <= block["seeds_found"]
    # Every influential factor of every seed belongs to exactly one consensus factor.
    members = [(seed, index) for c in consensus for seed, index in c["members"].items()]
    assert len(members) == len(set(members))
    html = (out_dir / "report.html").read_text()
    assert 'id="seed-stability"' in html and f"seed {reported}" in html
    n_found = sum(f["stability"] is not None for f in report["factors"])
    assert html.count("of 3\n          seeds") == n_found


def test_one_seed_is_todays_run_with_counts_of_one(small_deap_run):
    out_dir, _, report = small_deap_run
    assert report["stability"]["n_seeds"] == 1 and report["stability"]["seeds"] == [SEED]
    for factor in report["factors"]:
        if factor["influential"]:
            assert factor["stability"]["seeds_found"] == 1
            assert factor["stability"]["seeds_linked"] == int(factor["emotion"]["linked"])
            assert all(block["seeds_found"] == 1 for block in factor["blocks"])
    assert not list((out_dir / "checkpoints").glob("vae_seed*"))
    store = FrameStore.open(store_path(str(out_dir)))
    assert store.latent_model_id_of(seed_latent_set(SEED + 1, SEED)) is None
    html = (out_dir / "report.html").read_text()
    assert 'id="seed-stability"' not in html and "seeds</dt>" not in html
    assert 'id="one-seed"' in html and "--seeds 3" in html


def test_a_seed_killed_midway_continues_and_another_split_trains_afresh(two_then_three_seeds, tmp_path):
    out_dir = two_then_three_seeds[0]
    store = FrameStore.open(store_path(str(out_dir)))
    learn = with_model_seed(tiny_preset("demo", SEED).learn, SEED + 7)
    directory = tmp_path / "vae_seed"
    first = train_store_vae(store, learn, directory)
    # One epoch of a two-epoch run is what a kill after the first epoch leaves.
    longer = learn.replace(train=learn.train.replace(epochs=2))
    assert can_continue_training(store, longer, directory)
    assert not can_continue_training(store, with_model_seed(longer, SEED + 8), directory)
    resumed = train_store_vae(store, longer, directory, resume=True)
    assert len(resumed.history) == 2 and resumed.history[0] == first.history[0]
    tensors, metadata = load_checkpoint(directory, "last")
    assert metadata["epoch"] == 2
    # A state trained on other rows (another split) is not continued.
    save_checkpoint(directory, "last", tensors, {**metadata, "train_rows": metadata["train_rows"][1:]})
    assert not can_continue_training(store, longer, directory)

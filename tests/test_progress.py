"""Progress inside long steps: what the pipeline reports (pipeline.progress) and how flows render it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.progress import LogProgress, epoch_progress, progress_display
from pipeline.analysis.relevance import factor_label_information
from pipeline.models.configs import TrainConfig
from pipeline.models.training import train_vae
from pipeline.models.vae import VAEConfig
from pipeline.progress import counted


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_log_lines_come_every_few_seconds_with_count_rate_and_time_left():
    clock, lines = FakeClock(), []
    show = LogProgress(lines.append, every=5.0, clock=clock)
    show("VAE epoch 1/3 (steps)", 0, 100)
    for done in range(1, 101):
        clock.now += 0.25  # 4 steps per second
        show("VAE epoch 1/3 (steps)", done, 100)
    assert lines == [
        "VAE epoch 1/3 (steps): 20/100 (20 %), 4/s, about 0:20 left",
        "VAE epoch 1/3 (steps): 40/100 (40 %), 4/s, about 0:15 left",
        "VAE epoch 1/3 (steps): 60/100 (60 %), 4/s, about 0:10 left",
        "VAE epoch 1/3 (steps): 80/100 (80 %), 4/s, about 0:05 left",
        "VAE epoch 1/3 (steps): 100/100 done in 0:25",
    ]


def test_a_stage_shorter_than_the_interval_logs_nothing_and_stages_are_timed_apart():
    clock, lines = FakeClock(), []
    show = LogProgress(lines.append, every=5.0, clock=clock)
    show("encoding (trials)", 0, 10)
    clock.now += 3.0
    show("encoding (trials)", 10, 10)
    show("LSTM (epochs)", 1, 80)  # a new stage starts its own clock
    clock.now += 6.0
    show("LSTM (epochs)", 4, 80)
    assert lines == ["LSTM (epochs): 4/80 (5 %), 0.667/s, about 1:54 left"]


def test_epoch_records_become_counts_and_the_log_renderer_is_chosen_off_a_terminal():
    lines = []
    with progress_display(lines.append, terminal=False) as show:
        assert isinstance(show, LogProgress)
        counts = []
        epoch_progress(lambda *args: counts.append(args), "LSTM (epochs)", 80)({"epoch": 7, "loss": 1.0})
    assert counts == [("LSTM (epochs)", 7, 80)]


def test_counted_reports_each_item_and_an_early_end_as_its_own_total():
    calls = []
    items = list(counted(iter("abc"), lambda *args: calls.append(args), "factors", 5))
    assert items == ["a", "b", "c"]
    assert calls == [
        ("factors", 0, 5),
        ("factors", 1, 5),
        ("factors", 2, 5),
        ("factors", 3, 5),
        ("factors", 3, 3),
    ]


def test_vae_training_reports_every_step_of_every_epoch(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(5, 7, 3, 32, 32)).astype(np.float32)
    config = TrainConfig(epochs=2, batch_size=8, patience=5, trials_per_read=2, device="cpu")
    calls = []
    train_vae(
        frames,
        np.arange(4),
        np.array([4]),
        VAEConfig((3, 32, 32), n_latents=4),
        config,
        tmp_path,
        steps=lambda *args: calls.append(args),
    )
    # 4 trials × 7 frames = 28 frames: batches of 8, 8, 8 and 4.
    expected = [(f"VAE epoch {epoch}/2 (steps)", done, 4) for epoch in (1, 2) for done in range(1, 5)]
    assert calls == expected


def test_permutation_tests_report_their_labelings_and_the_result_does_not_depend_on_it():
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(60, 10, 3))
    classes = np.repeat([0, 1, 2, 3], 15)
    calls = []
    with_progress = factor_label_information(
        mu, classes, n_permutations=1200, seed=3, progress=lambda *args: calls.append(args)
    )
    without = factor_label_information(mu, classes, n_permutations=1200, seed=3)
    np.testing.assert_array_equal(with_progress.p_values, without.p_values)
    np.testing.assert_array_equal(with_progress.information_nats, without.information_nats)
    stage = "permutation tests (labelings)"
    # 1200 shuffles, in batches of 500.
    assert calls == [(stage, 0, 1200), (stage, 500, 1200), (stage, 1000, 1200), (stage, 1200, 1200)]

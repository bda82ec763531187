"""The whole ``deap`` flow on a small synthetic DEAP: report.json holds every contract key, with numbers
that agree with the store, the split and each other; report.html is written next to it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pipeline.factors import FactorRules
from pipeline.ingest import store_path
from pipeline.learn import LearnConfig
from pipeline.mi import DEFAULT_TOPK_PERCENTS
from pipeline.models.vae import VAEConfig
from pipeline.presets import DEAP_FRAME_SHAPE, DeapPreset
from pipeline.report.html import format_sig3
from pipeline.sources.synthetic import SyntheticDeapSpec
from pipeline.store import FrameStore
from pipeline.train import ClassifierConfig, TrainConfig

N_SUBJECTS = 3
TRIALS_PER_SUBJECT = 8
N_LATENTS = 4
SEED = 3
FRAMES_PER_TRIAL = 63


@dataclass(frozen=True)
class SmallSyntheticSpec(SyntheticDeapSpec):
    """The synthetic DEAP with fewer trials per subject; the flow has no setting for it."""

    n_trials: int = TRIALS_PER_SUBJECT


def tiny_preset(name: str, seed: int = 0) -> DeapPreset:
    """A preset that runs in seconds: few latents, one VAE epoch, a small LSTM, few permutations, and
    figures for the influential factors only (at least one), since each factor's maps take a while."""
    return DeapPreset(
        name=f"tiny-{name}",
        synthetic_subjects=N_SUBJECTS,
        learn=LearnConfig(
            vae=VAEConfig(input_shape=DEAP_FRAME_SHAPE, n_latents=N_LATENTS, beta=4.0),
            train=TrainConfig(epochs=1, batch_size=64, seed=seed, trials_per_read=8, device="cpu"),
            classifier=ClassifierConfig(hidden=8, epochs=3, batch_size=8, seed=seed, device="cpu"),
            split_seed=seed,
        ),
        rules=FactorRules(min_reported=1, n_permutations=50, n_seed_frames=4),
    )


@pytest.fixture(scope="module")
def flow_run(prefect_harness, tmp_path_factory):
    """One run of the flow on 3 synthetic subjects; returns (out_dir, flow result, report)."""
    import flows.deap

    out_dir = tmp_path_factory.mktemp("deap-run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flows.deap, "deap_preset", tiny_preset)
        patch.setattr(flows.deap, "SyntheticDeapSpec", SmallSyntheticSpec)
        result = flows.deap.deap(
            out_dir=str(out_dir), preset="demo", seed=SEED, synthetic_subjects=N_SUBJECTS
        )
    torch.set_num_threads(threads)
    report = json.loads((out_dir / "report.json").read_text())
    return out_dir, result, report


def test_report_names_the_data_and_the_run_settings(flow_run):
    out_dir, _, report = flow_run
    n_trials = N_SUBJECTS * TRIALS_PER_SUBJECT
    assert report["dataset"] == "deap"
    assert report["source"]["kind"] == "synthetic"
    assert report["source"]["n_trials"] == n_trials
    assert report["source"]["n_frames"] == FRAMES_PER_TRIAL * n_trials
    assert report["config"]["seed"] == SEED
    assert report["config"]["preset"] == tiny_preset("demo", SEED).to_dict()
    assert report["provenance"]["store"] == store_path(str(out_dir))
    for key in ("package_version", "created"):
        assert report["provenance"][key]
    store = FrameStore.open(store_path(str(out_dir)))
    assert len(store.committed_rows()) == n_trials


def test_mi_section_ranks_every_factor_and_sums_to_the_total(flow_run):
    mi = flow_run[2]["mi"]
    per_factor = np.array(mi["per_factor_nats"])
    assert per_factor.shape == (N_LATENTS,)
    assert np.all(per_factor >= 0)
    assert sorted(mi["ranking"]) == list(range(N_LATENTS))
    assert np.all(np.diff(per_factor[mi["ranking"]]) <= 0)
    assert mi["total_nats"] == pytest.approx(per_factor.sum(), rel=1e-9)
    assert np.all(np.array(mi["kl_prior_nats"]) >= per_factor - 1e-9)


def test_topk_rows_follow_the_papers_percents_with_finite_errors_and_accuracies(flow_run):
    report = flow_run[2]
    rows = report["topk"]
    assert [row["percent"] for row in rows] == list(DEFAULT_TOPK_PERCENTS)
    assert [row["n_factors"] for row in rows] == [
        math.ceil(p * N_LATENTS / 100) for p in DEFAULT_TOPK_PERCENTS
    ]
    assert rows[0]["total_mi_nats"] == pytest.approx(report["mi"]["total_nats"])
    assert rows[-1]["total_mi_nats"] == 0.0
    assert np.all(np.diff([row["total_mi_nats"] for row in rows]) <= 0)
    for row in rows:
        assert math.isfinite(row["mse"]) and row["mse"] > 0
        assert 0.0 <= row["accuracy"] <= 1.0
    assert rows[0]["accuracy"] == pytest.approx(report["classification"]["test_accuracy"])


def test_classification_counts_every_test_trial_once(flow_run):
    out_dir, result, report = flow_run
    classification = report["classification"]
    split = FrameStore.open(store_path(str(out_dir))).attrs["split"]
    confusion = np.array(classification["confusion"])
    assert classification["protocol"] == "trial"
    assert confusion.shape == (4, 4)
    assert confusion.sum() == len(split["test"])
    assert classification["test_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    # Chance is the majority class share of the test trials.
    assert classification["chance_accuracy"] == pytest.approx(confusion.sum(axis=1).max() / confusion.sum())
    assert result["test_accuracy"] == classification["test_accuracy"]


def test_factors_follow_the_ranking_and_the_html_report_is_written(flow_run):
    out_dir, result, report = flow_run
    factors = report["factors"]
    ranking = report["mi"]["ranking"]
    per_factor = np.array(report["mi"]["per_factor_nats"])
    # Every influential factor is reported, and at least min_reported = 1, most informative first.
    n_influential = int(np.count_nonzero(per_factor > report["mi"]["influential_threshold_nats"]))
    assert len(factors) == max(n_influential, 1)
    assert [factor["index"] for factor in factors] == ranking[: len(factors)]
    assert [factor["influential"] for factor in factors] == [
        bool(per_factor[factor["index"]] > report["mi"]["influential_threshold_nats"]) for factor in factors
    ]
    assert [factor["rank"] for factor in factors] == list(range(1, len(factors) + 1))
    for factor in factors:
        assert factor["mi_nats"] == pytest.approx(report["mi"]["per_factor_nats"][factor["index"]])
        assert 0.0 <= factor["emotion"]["p_value"] <= 1.0
        assert isinstance(factor["emotion"]["linked"], bool)
        for block in factor["blocks"]:
            assert block["band"] in ("alpha", "beta", "gamma")
    html = (out_dir / "report.html").read_text()
    assert result["report_html"] == str(out_dir / "report.html")
    assert html.lstrip().lower().startswith("<!doctype html")
    accuracy = format_sig3(report["classification"]["test_accuracy"])
    assert f'<tr><th>Test accuracy</th><td class="num">{accuracy}</td></tr>' in html


@pytest.mark.timeout(300)
def test_inspect_report_notebook_executes_on_the_run(flow_run, monkeypatch):
    """notebooks/inspect_report.ipynb runs top to bottom on a real run folder."""
    import nbformat
    from nbclient import NotebookClient

    out_dir, _, report = flow_run
    monkeypatch.setenv("EEGMI_RUN", str(out_dir))
    notebook = nbformat.read("notebooks/inspect_report.ipynb", as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3").execute()
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not any(o.output_type == "error" for o in cell.outputs) for cell in code_cells)
    printed = "".join(o.text for cell in code_cells for o in cell.outputs if o.output_type == "stream")
    top = report["mi"]["ranking"][0]
    assert f"z{top}" in printed and f"{report['mi']['total_nats']:.3f}" in printed
    images = [o for cell in code_cells for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the factor's topomap, its traversal, the re-thresholded topomap

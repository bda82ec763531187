"""The whole ``deap`` flow on a small synthetic DEAP: report.json holds every contract key, with numbers
that agree with the store, the split and each other; report.html is written next to it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from small_deap_run import N_LATENTS, N_SUBJECTS, SEED, TRIALS_PER_SUBJECT, tiny_preset

import pipeline
from pipeline.analysis.classification import wilson_interval
from pipeline.analysis.mi import DEFAULT_TOPK_PERCENTS
from pipeline.analysis.splits import emotion_classes
from pipeline.analysis.sweep import choose_beta
from pipeline.models.learn import checkpoint_model_id
from pipeline.models.state import load_vae
from pipeline.report.formatting import format_sig3
from pipeline.store.frames import FrameStore
from pipeline.store.run_folder import store_path

FRAMES_PER_TRIAL = 63


def test_report_names_the_data_and_the_run_settings(small_deap_run):
    out_dir, _, report = small_deap_run
    n_trials = N_SUBJECTS * TRIALS_PER_SUBJECT
    assert report["dataset"] == "deap"
    assert report["source"]["kind"] == "synthetic"
    assert report["source"]["scenario"] == report["ground_truth"]["scenario"] == "planted"
    assert report["source"]["path"] == f"synthetic://deap?scenario=planted&subjects={N_SUBJECTS}&seed={SEED}"
    assert report["source"]["n_trials"] == n_trials
    assert report["source"]["n_frames"] == FRAMES_PER_TRIAL * n_trials
    assert report["config"]["seed"] == SEED
    assert report["config"]["preset"] == tiny_preset("demo", SEED).model_dump(mode="json")
    assert report["provenance"]["store"] == store_path(str(out_dir))
    for key in ("package_version", "created"):
        assert report["provenance"][key]
    store = FrameStore.open(store_path(str(out_dir)))
    assert len(store.committed_rows()) == n_trials


@pytest.mark.parametrize("run", ["small_deap_run", "small_deap_run_both"])
def test_the_written_report_follows_the_shipped_schema(run, request):
    report = request.getfixturevalue(run)[2]  # as read from the run's report.json
    schema_file = Path(pipeline.__file__).parent / "report" / "report.schema.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    jsonschema.validate(report, schema, cls=jsonschema.Draft202012Validator)
    assert next(iter(report)) == "schema_version"
    assert report["schema_version"] == schema["properties"]["schema_version"]["const"]


def test_mi_section_ranks_every_factor_and_sums_to_the_total(small_deap_run):
    mi = small_deap_run[2]["mi"]
    per_factor = np.array(mi["per_factor_nats"])
    assert per_factor.shape == (N_LATENTS,)
    assert np.all(per_factor >= 0)
    assert sorted(mi["ranking"]) == list(range(N_LATENTS))
    assert np.all(np.diff(per_factor[mi["ranking"]]) <= 0)
    assert mi["total_nats"] == pytest.approx(per_factor.sum(), rel=1e-9)
    assert np.all(np.array(mi["kl_prior_nats"]) >= per_factor - 1e-9)


def test_topk_rows_follow_the_papers_percents_with_finite_errors_and_accuracies(small_deap_run):
    report = small_deap_run[2]
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


def test_classification_counts_every_test_trial_once(small_deap_run):
    out_dir, result, report = small_deap_run
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


def test_factors_follow_the_ranking_and_the_html_report_is_written(small_deap_run):
    out_dir, result, report = small_deap_run
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
        assert factor["mi_test_nats"] == pytest.approx(report["mi"]["per_factor_test_nats"][factor["index"]])
        emotion = factor["emotion"]
        assert isinstance(emotion["linked"], bool) and isinstance(emotion["subject_driven"], bool)
        if not factor["influential"]:
            # A dead factor says nothing: no blocks, no emotion statistics.
            assert factor["blocks"] == [] and not emotion["linked"]
            assert emotion["relevance"] is emotion["subject_share"] is None
            assert (
                emotion["within_subject"]
                == emotion["pooled"]
                == {"relevance": None, "p_value": None, "q_value": None}
            )
            continue
        assert emotion["relevance"] == emotion["within_subject"]["relevance"] >= 0.0
        for analysis in (emotion["within_subject"], emotion["pooled"]):
            assert 0.0 < analysis["p_value"] <= analysis["q_value"] <= 1.0
        assert 0.0 <= emotion["subject_share"] <= 1.0
        for block in factor["blocks"]:
            assert block["band"] in ("alpha", "beta", "gamma")
            assert isinstance(block["emotion_linked"], bool)
            assert block["emotion_linked"] <= emotion["linked"]
    html = (out_dir / "report.html").read_text()
    assert result["report_html"] == str(out_dir / "report.html")
    assert html.lstrip().lower().startswith("<!doctype html")
    accuracy = format_sig3(report["classification"]["test_accuracy"])
    assert f'<tr><th>Test accuracy</th><td class="num">{accuracy}</td></tr>' in html


@pytest.mark.timeout(300)
def test_inspect_report_notebook_executes_on_the_run(small_deap_run, monkeypatch):
    """notebooks/inspect_report.ipynb runs top to bottom on a real run folder."""
    import nbformat
    from nbclient import NotebookClient

    out_dir, _, report = small_deap_run
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


def test_accuracy_comes_with_its_interval_baselines_and_permutation_p(small_deap_run):
    out_dir, result, report = small_deap_run
    classification = report["classification"]
    store = FrameStore.open(store_path(str(out_dir)))
    split = store.attrs["split"]
    confusion = np.array(classification["confusion"])
    correct, n = int(np.trace(confusion)), int(confusion.sum())
    assert classification["accuracy_ci95"] == pytest.approx(list(wilson_interval(correct, n)))
    committed = store.committed_rows().tolist()
    classes = emotion_classes(store.labels)
    train_classes = classes[[committed.index(row) for row in split["train"]]]
    majority = np.bincount(train_classes, minlength=4).argmax()
    assert classification["majority_accuracy"] == pytest.approx(confusion[majority].sum() / n)
    assert 1 / (classification["n_permutations"] + 1) <= classification["permutation_p_value"] <= 1.0
    assert classification["distinguishable_from_chance"] == (classification["permutation_p_value"] < 0.05)
    assert "by_protocol" not in classification
    verdict = (
        "NOT distinguishable" if not classification["distinguishable_from_chance"] else "distinguishable"
    )
    assert verdict in result["classification"]["trial"]["verdict"]
    html = (out_dir / "report.html").read_text()
    headline = html[html.index('id="headline-accuracy"') :][:900]
    assert verdict in " ".join(headline.split())


def test_variance_explained_by_the_influential_factors_matches_the_reconstruction_errors(small_deap_run):
    explained = small_deap_run[2]["influential_variance_explained"]
    assert explained["fraction"] == pytest.approx(1 - explained["mse_influential"] / explained["mse_none"])
    assert explained["fraction"] <= 1.0 and explained["mse_none"] > 0
    rows = {row["percent"]: row for row in small_deap_run[2]["topk"]}
    assert explained["mse_none"] == pytest.approx(rows[0]["mse"])


def test_both_protocols_run_side_by_side_and_the_subject_protocol_never_sees_its_test_subjects(
    small_deap_run_both,
):
    out_dir, result, report = small_deap_run_both
    classification = report["classification"]
    by_protocol = classification["by_protocol"]
    assert set(by_protocol) == {"trial", "subject"} == set(result["classification"])
    assert classification["protocol"] == "trial"
    assert classification["test_accuracy"] == by_protocol["trial"]["test_accuracy"]
    store = FrameStore.open(store_path(str(out_dir)))
    assert store.attrs["split"]["protocol"] == "trial"
    subject_slot = store.attrs["protocols"]["subject"]
    subject_of_row = dict(zip(store.committed_rows().tolist(), store.subject.tolist(), strict=True))
    parts = {
        part: {subject_of_row[row] for row in subject_slot["split"][part]}
        for part in ("train", "val", "test")
    }
    assert parts["test"] and parts["test"].isdisjoint(parts["train"] | parts["val"])
    assert by_protocol["subject"]["n_test_subjects"] == len(parts["test"])
    assert by_protocol["subject"]["n_test_trials"] == len(subject_slot["split"]["test"])
    fitted_on = subject_slot["normalisation"]["fitted_on"]
    assert fitted_on["protocol"] == "subject" and fitted_on["n_trials"] == len(subject_slot["split"]["train"])
    # Each protocol's latents come from its own β-VAE, in its own group.
    subject_vae = out_dir / "checkpoints" / "subject" / "vae"
    assert store.latent_model_id_of("latents_subject") == checkpoint_model_id(subject_vae)
    assert store.latent_model_id == checkpoint_model_id(out_dir / "checkpoints" / "vae")
    assert store.latent_model_id_of("latents_subject") != store.latent_model_id
    np.testing.assert_array_equal(store.latent_rows("latents_subject"), store.committed_rows())
    html = (out_dir / "report.html").read_text()
    assert "split by trial</th>" in html and "split by subject</th>" in html


def test_a_beta_sweep_keeps_the_model_its_rule_chooses(small_deap_run_both):
    out_dir, result, report = small_deap_run_both
    sweep = report["beta_sweep"]
    assert [row["beta"] for row in sweep["candidates"]] == [2.0, 4.0]
    assert sweep["chosen_beta"] == choose_beta(sweep["candidates"])
    assert result["beta_sweep"]["chosen_beta"] == sweep["chosen_beta"]
    kept = out_dir / "checkpoints" / "vae"
    assert load_vae(kept).beta == sweep["chosen_beta"]
    assert report["config"]["preset"]["learn"]["vae"]["beta"] == sweep["chosen_beta"]
    # Only the kept model's latents are stored; the candidates stay as checkpoints.
    store = FrameStore.open(store_path(str(out_dir)))
    assert store.latent_model_id == checkpoint_model_id(kept)
    candidate = out_dir / "checkpoints" / "sweep" / f"beta-{sweep['chosen_beta']:g}"
    assert checkpoint_model_id(candidate) == checkpoint_model_id(kept)
    assert load_vae(out_dir / "checkpoints" / "subject" / "vae").beta == sweep["chosen_beta"]
    html = (out_dir / "report.html").read_text()
    assert 'id="beta-sweep-table"' in html and "<strong>kept</strong>" in html

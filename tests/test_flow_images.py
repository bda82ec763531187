"""The image flows end to end through the CLI (eegmi mnist, eegmi celeba) and their report stages."""

import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

import pipeline
from flows.cli import EXIT_BAD_INPUT, EXIT_OK, main
from pipeline.analysis.mi import DEFAULT_TOPK_PERCENTS, estimate_mi
from pipeline.errors import InputError
from pipeline.models.state import load_vae
from pipeline.report import ReportAssets, render_report_html
from pipeline.report.figures import PNG_SIGNATURE
from pipeline.report.images import information_cutoff
from pipeline.report.traversals import traversal_montage
from pipeline.sources.celeba import IMAGE_FOLDER, PARTITION_FILE
from pipeline.sources.images import SPLIT_TEST
from pipeline.sources.mnist import MNIST_FILES, digits_as_mnist, write_idx
from pipeline.store.frames import FrameStore

CORRUPT = "000005.jpg"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def digits_idx_folder(tmp_path):
    """scikit-learn's digits as MNIST IDX files: 60 training and 30 test images."""
    digits = digits_as_mnist()
    pixels = np.round(digits.images[:, 0] * 255).astype(np.uint8)
    labels = digits.labels[:, 0].astype(np.uint8)
    folder = tmp_path / "idx"
    folder.mkdir()
    write_idx(folder / (MNIST_FILES["train_images"] + ".gz"), pixels[:60])
    write_idx(folder / MNIST_FILES["train_labels"], labels[:60])
    write_idx(folder / MNIST_FILES["test_images"], pixels[60:90])
    write_idx(folder / MNIST_FILES["test_labels"], labels[60:90])
    return folder


def _read_report(out):
    """The run's report.json, checked against the shipped schema file with a plain validator."""
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    schema_file = Path(pipeline.__file__).parent / "report" / "report.schema.json"
    jsonschema.validate(report, json.loads(schema_file.read_text(encoding="utf-8")))
    return report


@pytest.mark.usefixtures("prefect_harness")
def test_mnist_flow_writes_table_2_and_montages_and_a_rerun_adds_nothing(tmp_path, digits_idx_folder, capsys):
    out = tmp_path / "run"
    assert main(["mnist", "--data-dir", str(digits_idx_folder), "--out", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    report = _read_report(out)
    mi = report["mi"]
    per_factor = np.array(mi["per_factor_nats"])
    assert report["dataset"] == "mnist" and report["source"]["kind"] == "idx"
    assert report["source"]["taken"] == {"train": 54, "val": 6, "test": 30}
    assert per_factor.size == 128 and mi["estimated_on"] == "30 test images"
    assert f"Î: {mi['n_influential']} of 128 factor(s) influential" in printed
    assert mi["n_influential"] == np.count_nonzero(per_factor > mi["influential_threshold_nats"])

    # Î, Table 2's errors and its 0 % row, recomputed from the store and the checkpoint.
    store = FrameStore.open(out / "frames.zarr")
    test_rows = store.committed_rows()[store.split == SPLIT_TEST]
    assert sorted(store.source[store.split == SPLIT_TEST]) == [MNIST_FILES["test_images"]] * 30
    np.testing.assert_allclose(
        per_factor, estimate_mi(*store.read_latents(test_rows)).per_factor_nats, rtol=1e-9
    )
    model = load_vae(out / "checkpoints" / "vae")
    images = torch.from_numpy(store.read_frames(test_rows)[:, 0])
    with torch.no_grad():
        mse_all = float(((model.reconstruct(images) - images) ** 2).mean())
        mse_none = float(((model.decode(torch.zeros(1, 128)) - images) ** 2).mean())
    topk = {row["percent"]: row for row in report["topk"]}
    assert tuple(topk) == DEFAULT_TOPK_PERCENTS
    assert topk[100]["mse"] == pytest.approx(mse_all, rel=1e-4) and topk[0]["mse"] == pytest.approx(
        mse_none, rel=1e-4
    )
    assert topk[100]["total_mi_nats"] == pytest.approx(mi["total_nats"]) and topk[0]["total_mi_nats"] == 0
    for row in report["topk"]:
        assert row["accuracy"] is None and row["sse_per_image"] == pytest.approx(row["mse"] * 784)

    cutoff = report["information_cutoff"]
    cumulative = np.cumsum(np.sort(per_factor)[::-1])
    k = cutoff["n_factors"]
    assert cumulative[k - 1] >= 0.99 * mi["total_nats"] * (1 - 1e-9)
    assert k == 1 or cumulative[k - 2] < 0.99 * mi["total_nats"]
    assert cutoff["mse_all_factors"] == pytest.approx(mse_all, rel=1e-4)
    assert cutoff["within_tolerance"] == (cutoff["mse"] <= 1.05 * cutoff["mse_all_factors"])

    factors = report["factors"]
    assert [f["index"] for f in factors] == mi["ranking"][:10]
    assert [f["rank"] for f in factors] == list(range(1, 11))
    html = (out / "report.html").read_text(encoding="utf-8")
    for factor in factors:
        figure = out / "figures" / f"factor_{factor['index']:03d}_traversal.png"
        assert figure.read_bytes().startswith(PNG_SIGNATURE)
        assert f'id="factor-{factor["index"]}"' in html

    latents_before = store.read_latents(store.committed_rows())[0]
    assert main(["mnist", "--data-dir", str(digits_idx_folder), "--out", str(out), "--resume"]) == EXIT_OK
    store = FrameStore.open(out / "frames.zarr")
    assert len(store.committed_rows()) == 90
    np.testing.assert_array_equal(store.read_latents(store.committed_rows())[0], latents_before)
    assert _read_report(out)["mi"]["per_factor_nats"] == mi["per_factor_nats"]


@pytest.mark.usefixtures("prefect_harness")
def test_mnist_with_two_seeds_matches_their_factors_and_reuses_a_trained_seed(
    tmp_path, digits_idx_folder, capsys
):
    out = tmp_path / "run"
    arguments = [
        "mnist",
        "--data-dir",
        str(digits_idx_folder),
        "--out",
        str(out),
        "--seeds",
        "2",
        "--seed",
        "4",
    ]
    assert main(arguments) == EXIT_OK
    printed = capsys.readouterr().out
    report = _read_report(out)
    stability = report["stability"]
    assert stability["n_seeds"] == 2 and stability["seeds"] == [4, 5]
    reported = stability["reported_seed"]
    assert f"the report is seed {reported}'s" in printed
    store = FrameStore.open(out / "frames.zarr")
    test_rows = store.committed_rows()[store.split == SPLIT_TEST]
    group = "latents" if reported == 4 else "latents_seed5"
    # The report's Î is the reported seed's, from its own latents.
    np.testing.assert_allclose(
        report["mi"]["per_factor_nats"],
        estimate_mi(*store.read_latents(test_rows, group=group)).per_factor_nats,
        rtol=1e-9,
    )
    assert store.latent_model_id_of("latents") != store.latent_model_id_of("latents_seed5")
    for factor in report["factors"]:
        if factor["influential"]:
            assert 1 <= factor["stability"]["seeds_found"] <= 2
            assert "seeds_linked" not in factor["stability"]
            assert factor["stability"]["matched"][str(reported)] == factor["index"]
        else:
            assert factor["stability"] is None
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="seed-stability"' in html
    assert html.count("of 2\n          seeds") == sum(f["stability"] is not None for f in report["factors"])
    # A rerun reuses both trained seeds: their training states are not written again.
    states = {
        name: (out / "checkpoints" / name / "last.json").stat().st_mtime_ns for name in ("vae", "vae_seed5")
    }
    assert main(arguments) == EXIT_OK
    assert {name: (out / "checkpoints" / name / "last.json").stat().st_mtime_ns for name in states} == states
    assert _read_report(out)["mi"]["per_factor_nats"] == report["mi"]["per_factor_nats"]


def _try_the_folder(out) -> list[str]:
    """What another process is told when it asks for the run folder ``out`` (waiting at most 0.3 s)."""
    helper = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pipeline.store.runlock import run_lock\n"
            "try:\n    with run_lock(sys.argv[1], timeout=0.3): print('free')\n"
            "except Exception as err: print(type(err).__name__, err)",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return helper.stdout.splitlines()


@pytest.mark.usefixtures("prefect_harness")
def test_an_image_run_holds_its_folder_and_marks_its_update_until_the_report(
    tmp_path, digits_idx_folder, monkeypatch
):
    """While ``eegmi mnist`` runs, a second run into its folder is refused with one line naming it; the
    update marker says "training" while the β-VAE trains and "report" while the report is written,
    and is gone once the report is."""
    import flows.images
    from pipeline.runs import images as images_run
    from pipeline.store.runlock import pending_update

    out = tmp_path / "run"
    seen = {}

    def ingest_while_another_run_asks(run, data_dir, preset, log):
        seen["other run"] = _try_the_folder(out)
        return images_run.ingest_mnist(run, data_dir, preset, log)

    def noting_the_marker(stage, step):
        def run_step(run, *args, **kwargs):
            seen[stage] = pending_update(run).stage
            return step(run, *args, **kwargs)

        return run_step

    steps = images_run.PLAIN_IMAGE_STEPS
    mnist = images_run.IMAGE_DATASETS["mnist"]
    monkeypatch.setitem(
        images_run.IMAGE_DATASETS, "mnist", replace(mnist, ingest=ingest_while_another_run_asks)
    )
    monkeypatch.setattr(
        flows.images,
        "IMAGE_TASK_STEPS",
        replace(
            steps,
            train_vae=noting_the_marker("train", steps.train_vae),
            write_report=noting_the_marker("report", steps.write_report),
        ),
    )
    assert main(["mnist", "--data-dir", str(digits_idx_folder), "--out", str(out)]) == EXIT_OK
    assert len(seen["other run"]) == 1
    assert seen["other run"][0].startswith(f"RunFolderBusy {out}: run mnist (pid {os.getpid()} on ")
    assert seen["other run"][0].endswith("is using this run folder; waited 0.3 s. Try again when it is done")
    assert (seen["train"], seen["report"]) == ("training", "report")
    assert pending_update(out) is None and (out / "report.json").is_file()
    assert _try_the_folder(out) == ["free"]


def test_an_image_run_killed_before_its_report_leaves_the_marker(tmp_path, digits_idx_folder):
    """The Prefect-free image run: a failure in training leaves the marker at "training" with the
    run's settings, and writes no report."""
    from pipeline.runs import images as images_run
    from pipeline.store.runlock import pending_update

    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    steps = replace(images_run.PLAIN_IMAGE_STEPS, train_vae=killed)
    settings = images_run.image_settings("mnist", "demo", 7, str(digits_idx_folder))
    with pytest.raises(KeyboardInterrupt):
        images_run.run_images(out, settings, str(digits_idx_folder), steps=steps)
    pending = pending_update(out)
    assert pending.stage == "training"
    assert pending.settings["dataset"] == "mnist" and pending.settings["train"]["seed"] == 7
    assert not (out / "report.json").exists()
    assert len(FrameStore.open(out / "frames.zarr").committed_rows()) == 90


@pytest.mark.usefixtures("prefect_harness")
def test_mnist_flow_names_a_bad_idx_file_and_exits_2(tmp_path, digits_idx_folder, capsys):
    bad = digits_idx_folder / MNIST_FILES["test_images"]
    bad.write_bytes(b"\x12\x34\x08\x03" + bad.read_bytes()[4:])
    assert (
        main(["mnist", "--data-dir", str(digits_idx_folder), "--out", str(tmp_path / "run")])
        == EXIT_BAD_INPUT
    )
    error = capsys.readouterr().err
    assert f"{bad}: bad magic number" in error


def _write_face(path, i):
    """A 178x218 image: a square whose colour and position change with i, on grey."""
    pixels = np.full((218, 178, 3), 90, dtype=np.uint8)
    top, left = 40 + 6 * (i % 7), 20 + 9 * (i % 5)
    pixels[top : top + 70, left : left + 70] = (25 * i % 256, 200 - 10 * i, 60 + 12 * i)
    Image.fromarray(pixels).save(path, quality=92)


@pytest.mark.usefixtures("prefect_harness")
def test_celeba_flow_names_and_skips_a_corrupt_jpeg_and_stores_the_rest(tmp_path, capsys):
    root = tmp_path / "celeba"
    (root / IMAGE_FOLDER).mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 13)]
    for i, name in enumerate(names, start=1):
        _write_face(root / IMAGE_FOLDER / name, i)
    corrupt = root / IMAGE_FOLDER / CORRUPT
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    parts = [0] * 8 + [1] * 2 + [2] * 2
    (root / PARTITION_FILE).write_text("".join(f"{n} {p}\n" for n, p in zip(names, parts, strict=True)))
    out = tmp_path / "run"

    assert main(["celeba", "--data-dir", str(root), "--out", str(out)]) == EXIT_OK
    captured = capsys.readouterr()
    assert f"skipped unreadable image {CORRUPT}" in captured.err
    store = FrameStore.open(out / "frames.zarr")
    assert sorted(store.source.tolist()) == [name for name in names if name != CORRUPT]
    assert store.frame_shape == (1, 3, 64, 64)
    report = _read_report(out)
    assert [entry["name"] for entry in report["source"]["skipped"]] == [CORRUPT]
    assert report["dataset"] == "celeba" and report["source"]["kind"] == "images"
    assert report["source"]["n_images"] == 11 and report["split_sizes"] == {"train": 7, "val": 2, "test": 2}
    assert len(report["mi"]["per_factor_nats"]) == 32 and report["config"]["preset"]["vae"]["likelihood"] == (
        "gaussian-mixture"
    )
    assert "ground_truth" not in report
    html = (out / "report.html").read_text(encoding="utf-8")
    assert len(html) > 10_000 and "Influential factors and their traversals — CelebA" in html
    assert "electrode" not in html.lower() and "emotion" not in html.lower()


def test_information_cutoff_keeps_the_fewest_factors_holding_99_percent():
    # Factor j's posterior mean spreads with standard deviation a_j, its posterior sd is 0.1.
    rng = np.random.default_rng(0)
    spreads = np.array([0.0, 3.0, 0.0, 1.0, 0.02, 0.3])
    mu = rng.standard_normal((20_000, 6)) * spreads
    estimate = estimate_mi(mu, np.full_like(mu, np.log(0.01)))
    ranked = estimate.per_factor_nats[estimate.ranking]
    share_of_top_3 = ranked[:3].sum() / ranked.sum()
    assert (
        list(estimate.ranking[:3]) == [1, 3, 5]
        and share_of_top_3 > 0.99
        and ranked[:2].sum() < 0.99 * ranked.sum()
    )

    def mse_of(keep):  # the error grows with the information left out
        return 1.0 + float(estimate.per_factor_nats[~keep].sum())

    cutoff = information_cutoff(estimate, mse_of)
    assert cutoff["n_factors"] == 3 and cutoff["mi_nats"] == pytest.approx(ranked[:3].sum())
    assert cutoff["mse_all_factors"] == 1.0 and cutoff["relative_increase"] == pytest.approx(ranked[3:].sum())
    assert cutoff["within_tolerance"] == (ranked[3:].sum() <= 0.05)
    strict = information_cutoff(estimate, mse_of, share=1.0, tolerance=0.0)
    # All of Î sits in the four factors whose posterior means move; the two constant ones add nothing.
    assert np.count_nonzero(estimate.per_factor_nats) == 4
    assert strict["n_factors"] == 4 and strict["relative_increase"] == 0.0 and strict["within_tolerance"]


def test_traversal_montage_draws_one_row_per_seed_and_checks_its_input():
    grey = np.random.default_rng(1).random((7, 3, 1, 28, 28))
    colour = np.random.default_rng(2).random((5, 4, 3, 64, 64)) * 1.2  # overshoot is clipped
    small = Image.open(io.BytesIO(traversal_montage(grey, np.linspace(-3, 3, 7))))
    large = Image.open(io.BytesIO(traversal_montage(colour, np.linspace(-2, 2, 5), ["a", "b", "c", "d"])))
    assert small.width > small.height and large.height > small.height
    with pytest.raises(InputError, match="expected \\(n_values, n_seeds, 1 or 3, H, W\\)"):
        traversal_montage(grey[:, :, :, :, :, None], np.linspace(-3, 3, 7))
    with pytest.raises(InputError, match="values: has shape \\(6,\\)"):
        traversal_montage(grey, np.linspace(-3, 3, 6))
    with pytest.raises(InputError, match="row_labels: has 2 labels for 3 seed images"):
        traversal_montage(grey, np.linspace(-3, 3, 7), ["x", "y"])


def _page(dataset: str, source_kind: str, **extra) -> str:
    """The HTML of a small report of ``dataset`` with one factor card showing a traversal."""
    mi = np.array([2.5, 1.5, 0.01, 0.0])
    report = {
        "dataset": dataset,
        "source": {"kind": source_kind, "path": "somewhere", "n_trials": 400, "n_frames": 400},
        "config": {"seed": 0},
        "mi": {"per_factor_nats": mi, "variance": [1.0, 0.8, 0.01, 0.0], "kl_prior_nats": mi + 0.1,
               "total_nats": mi.sum(), "ranking": [0, 1, 2, 3], "n_influential": 2,
               "influential_threshold_nats": 0.05},
        "factors": [{"index": 0, "rank": 1, "mi_nats": 2.5, "variance": 1.0}],
        "provenance": {"package_version": "0.1.0", "store": "run/frames.zarr", "created": "2024-05-01"},
        **extra,
    }  # fmt: skip
    png = PNG_SIGNATURE + b"figure"
    return render_report_html(report, ReportAssets(mi_variance=png, factors={0: {"traversal": png}}))


@pytest.mark.parametrize(
    ("dataset", "source_kind", "heading"),
    [("mnist", "idx", "MNIST"), ("celeba", "images", "CelebA"), ("celeba", "synthetic", "CelebA")],
)
def test_an_image_report_speaks_of_images_and_traversals_never_of_electrodes_or_emotion(
    dataset, source_kind, heading
):
    check = {"n_true_factors": 4, "n_influential": 2, "within_one": False}
    extra = {"ground_truth_check": check} if source_kind == "synthetic" else {}
    page = _page(dataset, source_kind, **extra)
    words = " ".join(page.split())  # the template wraps its lines; compare text with single spaces
    assert "electrode" not in words.lower() and "emotion" not in words.lower()
    assert "decoded frames" not in words.lower()
    assert f"<h1>Influential factors and their traversals — {heading}</h1>" in words
    assert "<tr><th>Images</th><td>400</td></tr>" in words
    assert "Decoded images while z<sub>0</sub> alone is varied" in words
    assert '2</div> <div class="label">influential factors (Î above 0.0500 nats)' in words
    if source_kind == "synthetic":
        assert "Procedural images — not CelebA" in words
        assert "true generative factors (found 2: NOT within k ± 1)" in words
    else:
        assert 'id="synthetic-banner"' not in words and "true generative factors" not in words

    # The same report read as DEAP keeps the EEG wording.
    deap = _page("deap", "synthetic")
    assert "emotion-linked electrode blocks — DEAP" in deap and "Synthetic data — not a recording" in deap
    assert "electrode" in deap.lower() and "<tr><th>Frames</th><td>400</td></tr>" in deap
    assert "influential factors (Î above" not in deap

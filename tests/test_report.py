"""report.json writing, the self-contained HTML report and its figures."""

from __future__ import annotations

import base64
import copy
import html
import json
import os
import re
import stat
import struct
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import markupsafe
import numpy as np
import pytest

import pipeline.report
from pipeline.errors import InputError
from pipeline.report import (
    REPORT_SCHEMA_VERSION,
    ReportAssets,
    confusion_figure,
    mi_variance_figure,
    render_report_html,
    topk_figure,
    topomap_figure,
    traversal_strip,
    validate_report,
    write_report,
)
from pipeline.report.figures import PNG_SIGNATURE
from pipeline.report.formatting import format_sig3
from pipeline.sources.trials import DEAP_CHANNELS

N_FACTORS = 16
BANDS = ("alpha", "beta", "gamma")
CLASS_NAMES = ["HVHA", "HVLA", "LVHA", "LVLA"]
SCRIPT_PAYLOAD = "<script>alert(1)</script>"
ATTRIBUTE_PAYLOAD = '"><img src=x onerror=alert(1)>'
REPORT_SCHEMA_FILE = Path(pipeline.report.__file__).with_name("report.schema.json")
REPORTED_BLOCKS = {
    # factor rank -> blocks (band, electrodes, strength)
    0: [("gamma", ["C4", "T8", "P4", "P8"], 0.83), ("beta", ["F3", "FC5"], 0.41)],
    1: [("alpha", ["O1", "Oz", "O2"], 0.62)],
    2: [],
}


def make_fake_report(kind: str = "synthetic", seed: int = 0) -> dict:
    """A DEAP-like report with numpy values where a pipeline would produce them."""
    rng = np.random.default_rng(seed)
    # A few informative factors and many nearly unused ones, as a trained β-VAE gives.
    mi = np.concatenate([rng.uniform(1.0, 6.0, 5), rng.uniform(0.0, 0.05, N_FACTORS - 5)])
    mi = rng.permutation(mi).astype(np.float32)
    ranking = np.argsort(-mi, kind="stable")
    kl_prior = mi + rng.uniform(0.0, 0.5, N_FACTORS).astype(np.float32)
    cumulative = np.concatenate([[0.0], np.cumsum(mi[ranking])])
    topk = []
    for percent in (100, 50, 25, 10, 5, 0):
        kept = round(N_FACTORS * percent / 100)
        topk.append(
            {
                "percent": percent,
                "n_factors": kept,
                "total_mi_nats": cumulative[kept],
                "mse": np.float64(0.02 + 0.5 * (1 - cumulative[kept] / cumulative[-1])),
                "accuracy": 0.25 + 0.3 * cumulative[kept] / cumulative[-1],
            }
        )
    confusion = rng.integers(2, 12, size=(4, 4)) + np.diag(rng.integers(8, 20, size=4))
    factors = []
    for rank, blocks in REPORTED_BLOCKS.items():
        j = int(ranking[rank])
        factors.append(
            {
                "index": np.int64(j),
                "rank": rank + 1,
                "mi_nats": mi[j],
                "variance": np.float32(rng.uniform(0.1, 1)),
                "emotion": {
                    "relevance": float(rng.uniform(0, 1)),
                    "p_value": [0.003, 0.02, 0.4][rank],
                    "linked": np.bool_(rank < 2),
                },
                "blocks": [
                    {"band": band, "electrodes": electrodes, "strength": strength}
                    for band, electrodes, strength in blocks
                ],
            }
        )
    return {
        "dataset": "deap",
        "source": {
            "kind": kind,
            "path": "/data/deap/s01.dat" if kind != "synthetic" else "synthetic://seed-0",
            "n_trials": 40,
            "n_frames": 40 * 63,
        },
        "config": {
            "seed": 0,
            "bands": {"alpha": [8, 13], "beta": [13, 30], "gamma": [30, 45]},
            "vae": {"latent_dim": N_FACTORS, "beta": 4.0, "epochs": 30, "learning_rate": 3e-4},
            "split": {"protocol": "subject", "test_subjects": [31, 32]},
        },
        "mi": {
            "per_factor_nats": mi,
            "variance": rng.uniform(0.05, 1.5, N_FACTORS),
            "kl_prior_nats": kl_prior,
            "total_nats": float(mi.sum()),
            "ranking": ranking,
        },
        "topk": topk,
        "classification": {
            "protocol": "subject",
            "test_accuracy": np.trace(confusion) / confusion.sum(),
            "chance_accuracy": 0.25,
            "confusion": confusion,
            "class_names": CLASS_NAMES,
        },
        "factors": factors,
        "provenance": {
            "package_version": "0.1.0",
            "store": "/out/frames.zarr",
            "created": "2024-05-01T12:00:00+00:00",
            "config_hash": "ab12cd34",
        },
    }


def make_fake_assets(report: dict, seed: int = 0) -> ReportAssets:
    """The figures of ``report``, drawn from small generated arrays."""
    rng = np.random.default_rng(seed)
    mi = report["mi"]
    factor_figures = {}
    for factor in report["factors"]:
        highlight: dict[str, list[str]] = {}
        for block in factor["blocks"]:
            highlight.setdefault(block["band"], []).extend(block["electrodes"])
        values = np.linspace(-3.0, 3.0, 5)
        direction = rng.normal(size=(1, 3, 32, 32))
        frames = rng.normal(size=(1, 3, 32, 32)) + values[:, None, None, None] * direction
        factor_figures[int(factor["index"])] = {
            "topomap": topomap_figure(rng.normal(size=(3, 32)), DEAP_CHANNELS, BANDS, highlight=highlight),
            "traversal": traversal_strip(frames, values, BANDS),
        }
    return ReportAssets(
        mi_variance=mi_variance_figure(
            mi["per_factor_nats"], mi["variance"], mi["ranking"], threshold_nats=0.1
        ),
        topk=topk_figure(report["topk"]),
        confusion=confusion_figure(report["classification"]["confusion"], CLASS_NAMES),
        factors=factor_figures,
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data.startswith(PNG_SIGNATURE)
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


class _PageParser(HTMLParser):
    """Collects image sources, factor-card ids and electrode-block names of a page."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.card_ids: list[str] = []
        self.block_texts: list[str] = []
        self._in_block = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "img":
            self.images.append(attributes["src"])
        if "factor-card" in classes:
            self.card_ids.append(attributes["id"])
        if tag == "span" and "block-name" in classes:
            self._in_block = 1

    def handle_endtag(self, tag):
        if tag == "span" and self._in_block:
            self._in_block = 0

    def handle_data(self, data):
        if self._in_block:
            self.block_texts.append(data)


def parse_page(page: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(page)
    return parser


@pytest.fixture(scope="module")
def report() -> dict:
    return make_fake_report()


@pytest.fixture(scope="module")
def assets(report) -> ReportAssets:
    return make_fake_assets(report)


@pytest.fixture(scope="module")
def page(report, assets) -> str:
    return render_report_html(report, assets)


# --------------------------------------------------------------------------- report.json


def test_json_round_trip_keeps_every_contract_key(tmp_path, report, assets):
    paths = write_report(tmp_path, report, assets)
    loaded = json.loads(paths["report.json"].read_text(encoding="utf-8"))

    assert set(loaded) >= {
        "dataset",
        "source",
        "config",
        "mi",
        "topk",
        "classification",
        "factors",
        "provenance",
    }
    assert set(loaded["source"]) >= {"kind", "path", "n_trials", "n_frames"}
    assert set(loaded["mi"]) >= {"per_factor_nats", "variance", "kl_prior_nats", "total_nats", "ranking"}
    assert set(loaded["provenance"]) >= {"package_version", "store", "created"}
    assert set(loaded["classification"]) >= {"protocol", "test_accuracy", "chance_accuracy", "confusion"}
    np.testing.assert_allclose(loaded["mi"]["per_factor_nats"], report["mi"]["per_factor_nats"], rtol=1e-6)
    assert loaded["mi"]["ranking"] == report["mi"]["ranking"].tolist()
    assert loaded["classification"]["confusion"] == report["classification"]["confusion"].tolist()
    assert [f["index"] for f in loaded["factors"]] == [int(f["index"]) for f in report["factors"]]
    assert [f["emotion"]["linked"] for f in loaded["factors"]] == [True, True, False]
    assert loaded["factors"][0]["blocks"][0] == {
        "band": "gamma",
        "electrodes": ["C4", "T8", "P4", "P8"],
        "strength": 0.83,
    }
    assert loaded["config"]["vae"]["learning_rate"] == 3e-4
    # The written JSON is itself a valid report: a reader can render it again.
    validate_report(loaded)
    assert render_report_html(loaded, assets) == render_report_html(report, assets)


def test_written_files_are_whole_and_named_by_index(tmp_path, report, assets):
    paths = write_report(tmp_path / "out", report, assets)

    indices = [int(f["index"]) for f in report["factors"]]
    expected = {
        "report.json",
        "report.html",
        "figures/mi_variance.png",
        "figures/topk.png",
        "figures/confusion.png",
    }
    expected |= {f"figures/factor_{j:03d}_{kind}.png" for j in indices for kind in ("topomap", "traversal")}
    assert set(paths) == expected
    assert paths["figures/mi_variance.png"].read_bytes() == assets.mi_variance
    topomap = paths[f"figures/factor_{indices[0]:03d}_topomap.png"]
    assert topomap.read_bytes() == assets.factors[indices[0]]["topomap"]
    out = tmp_path / "out"
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == expected  # no temporary files left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(paths["report.html"].stat().st_mode) == 0o666 & ~umask  # readable like any file


def test_out_dir_that_is_a_file_is_rejected(tmp_path, report, assets):
    occupied = tmp_path / "report"
    occupied.write_text("not a directory")
    with pytest.raises(InputError, match="not a directory"):
        write_report(occupied, report, assets)
    assert occupied.read_text() == "not a directory"


def test_non_finite_value_becomes_null(tmp_path, report, assets):
    with_nan = copy.deepcopy(report)
    with_nan["factors"][2]["emotion"]["p_value"] = np.nan
    paths = write_report(tmp_path, with_nan, assets)

    assert json.loads(paths["report.json"].read_text())["factors"][2]["emotion"]["p_value"] is None


def test_failed_write_leaves_previous_report_intact(tmp_path, report, assets, monkeypatch):
    paths = write_report(tmp_path, report, assets)
    before = paths["report.json"].read_bytes()
    changed = copy.deepcopy(report)
    changed["source"]["n_trials"] = 41

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pipeline.report.writer.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_report(tmp_path, changed, assets)

    assert paths["report.json"].read_bytes() == before
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "path",
    [
        "dataset",
        "config",
        "source",
        "source.kind",
        "source.path",
        "source.n_trials",
        "source.n_frames",
        "mi.per_factor_nats",
        "mi.variance",
        "mi.kl_prior_nats",
        "mi.total_nats",
        "mi.ranking",
        "provenance.package_version",
        "provenance.store",
        "provenance.created",
        "factors[0].blocks[0].electrodes",
        "classification.confusion",
        "topk[1].accuracy",
    ],
)
def test_missing_contract_key_is_named(tmp_path, report, assets, path):
    broken = copy.deepcopy(report)
    *parents, last = re.findall(r"[^.\[\]]+", path)
    node = broken
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    del node[last]

    with pytest.raises(InputError, match=re.escape(f"'{path}'")):
        write_report(tmp_path, broken, assets)
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["mi"].update(ranking=np.arange(N_FACTORS)[::-1] % 5), "not a permutation"),
        (lambda r: r["mi"].update(variance=np.ones(N_FACTORS - 1)), "'mi.variance' has 15 values"),
        (lambda r: r["mi"]["per_factor_nats"].__setitem__(3, -0.5), "mi.per_factor_nats\\[3\\]"),
        (lambda r: r["classification"].update(confusion=[[1, 2], [3]]), "square"),
        (lambda r: r["classification"].update(protocol="random"), "classification.protocol"),
        (lambda r: r["factors"][0].update(index=N_FACTORS), "factors\\[0\\].index"),
        (lambda r: r["source"].update(kind="csv"), "source.kind"),
        (lambda r: r.update(dataset="cifar"), "'dataset'"),
        (lambda r: r["config"].update(callback={1, 2}), "config.callback"),
    ],
)
def test_malformed_report_is_rejected(report, assets, mutate, message):
    broken = copy.deepcopy(report)
    mutate(broken)
    with pytest.raises(InputError, match=message):
        render_report_html(broken, assets)


# --------------------------------------------------------------------------- the shipped schema


def _shipped_schema() -> dict:
    schema = json.loads(REPORT_SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_written_reports_record_the_schema_version_and_pass_the_shipped_schema(tmp_path, report, assets):
    schema = _shipped_schema()
    deap_json = write_report(tmp_path / "deap", report, assets)["report.json"]
    image_assets = ReportAssets(mi_variance=assets.mi_variance, topk=assets.topk)
    image_json = write_report(tmp_path / "mnist", make_image_report(), image_assets)["report.json"]

    version = schema["properties"]["schema_version"]["const"]
    assert schema["$id"] == f"urn:eegmi:schema:report:{version}" and version == REPORT_SCHEMA_VERSION
    for path in (deap_json, image_json):
        written = json.loads(path.read_text(encoding="utf-8"))
        assert next(iter(written)) == "schema_version" and written["schema_version"] == version
        jsonschema.validate(written, schema, cls=jsonschema.Draft202012Validator)


def test_the_schema_tells_deap_sources_from_image_sources(tmp_path, report, assets):
    schema = _shipped_schema()
    deap = json.loads(write_report(tmp_path, report, assets)["report.json"].read_text(encoding="utf-8"))
    recorded = {**deap, "source": {**deap["source"], "kind": "deap-python"}}
    jsonschema.validate(recorded, schema)
    with pytest.raises(jsonschema.ValidationError, match="'deap-python' is not one of"):
        jsonschema.validate({**recorded, "dataset": "mnist"}, schema)
    as_idx = {**deap, "source": {**deap["source"], "kind": "idx"}}
    jsonschema.validate({**as_idx, "dataset": "mnist"}, schema)
    with pytest.raises(jsonschema.ValidationError, match="'idx' is not one of"):
        jsonschema.validate(as_idx, schema)
    # Synthetic data exist for both: the synthetic DEAP and the procedural stand-in for CelebA.
    jsonschema.validate({**deap, "dataset": "celeba"}, schema)


def test_keys_the_schema_does_not_list_are_allowed_and_stability_is_checked(tmp_path, report, assets):
    schema = _shipped_schema()
    extended = copy.deepcopy(report)
    extended["stability"] = {
        "n_seeds": 3,
        "seeds": [0, 1, 2],
        "majority": 2,
        "reference_seed": 0,
        "reported_seed": 1,
        "match_rule": "Hungarian assignment on |cosine| of the effect maps",
        "block_rule": "a block of the same band with electrode Jaccard >= 0.5",
        "method_note": "a key the schema does not list",
    }
    extended["factors"][0]["stability"] = {"seeds_found": 3, "seeds_linked": 2, "median_mi_nats": 0.5}
    for factor in extended["factors"][1:]:  # factors below the influential threshold are not matched
        factor["influential"] = False
        factor["stability"] = None
    extended["factors"][0]["blocks"][0]["seeds_found"] = 2
    extended["factors"][1]["emotion"]["pooled"] = {"relevance": 0.2}
    extended["a_later_section"] = {"anything": [1, "two", None]}
    written = json.loads(write_report(tmp_path, extended, assets)["report.json"].read_text(encoding="utf-8"))
    jsonschema.validate(written, schema)
    assert written["stability"]["n_seeds"] == 3 and written["a_later_section"]["anything"] == [1, "two", None]

    for edit, problem in [
        (lambda r: r["stability"].update(n_seeds=0), "'stability.n_seeds' is 0; expected a value >= 1"),
        (
            lambda r: r["factors"][0]["stability"].update(seeds_linked=1.5),
            "'factors[0].stability.seeds_linked' is 1.5; expected a whole number",
        ),
        (
            lambda r: r["factors"][0]["stability"].update(seeds_found=4),
            "'factors[0].stability.seeds_found' is 4; expected 1..3",
        ),
        (
            lambda r: r["factors"][0]["blocks"][0].update(seeds_found=0),
            "'factors[0].blocks[0].seeds_found' is 0; expected 1..3",
        ),
        (
            lambda r: r["factors"][0]["blocks"][0].update(seeds_found=4),
            "'factors[0].blocks[0].seeds_found' is 4; expected 1..3",
        ),
        (
            lambda r: r["factors"][0].update(stability=None),
            "'factors[0].stability' is missing for an influential factor",
        ),
    ]:
        broken = copy.deepcopy(extended)
        edit(broken)
        with pytest.raises(InputError) as caught:
            write_report(tmp_path / "broken", broken, assets)
        assert str(caught.value) == f"{tmp_path / 'broken' / 'report.json'}: {problem}"
        assert not (tmp_path / "broken" / "report.json").exists()


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        # Python's json reads NaN, which JSON itself cannot hold: a number must be finite.
        (
            lambda r: r["mi"].update(total_nats=float("nan")),
            "'mi.total_nats' is NaN; expected a finite number",
        ),
        (
            lambda r: r["mi"]["variance"].__setitem__(2, None),
            "'mi.variance[2]' is null; expected a finite number",
        ),
        (lambda r: r["source"].update(n_trials="40"), "'source.n_trials' is '40'; expected a whole number"),
        (lambda r: r.update(source=[]), "'source' is a list of 0 item(s); expected an object"),
        (
            lambda r: r["factors"][1]["emotion"].pop("linked"),
            "missing key 'factors[1].emotion.linked' required by the report contract",
        ),
        (
            lambda r: r["source"].update(kind="idx"),
            "'source.kind' is 'idx'; expected one of ['synthetic', 'deap-python', 'deap-matlab', 'raw']",
        ),
        (
            lambda r: r.update(schema_version=REPORT_SCHEMA_VERSION + 1),
            f"'schema_version' is {REPORT_SCHEMA_VERSION + 1}; expected {REPORT_SCHEMA_VERSION}",
        ),
        (
            lambda r: r["classification"].update(accuracy_ci95=[0.4, 0.3]),
            "'classification.accuracy_ci95' has its low bound above its high one",
        ),
        (
            lambda r: r["classification"].update(class_names=["HV", "LV"]),
            "'classification.class_names' has 2 names; the confusion matrix has 4 classes",
        ),
    ],
    ids=["nan", "null", "string", "list", "nested-key", "deap-source", "version", "interval", "class-names"],
)
def test_a_broken_report_file_is_named_with_its_key_in_one_line(tmp_path, report, assets, edit, problem):
    path = write_report(tmp_path, report, assets)["report.json"]
    broken = json.loads(path.read_text(encoding="utf-8"))
    edit(broken)
    with pytest.raises(InputError) as caught:
        validate_report(broken, path)
    assert str(caught.value) == f"{path}: {problem}"


# --------------------------------------------------------------------------- report.html


def test_html_has_one_card_per_factor_with_its_blocks(page, report):
    parsed = parse_page(page)

    assert parsed.card_ids == [f"factor-{int(f['index'])}" for f in report["factors"]]
    assert parsed.block_texts == ["C4-T8-P4-P8 (gamma)", "F3-FC5 (beta)", "O1-Oz-O2 (alpha)"]
    assert "C4-T8-P4-P8 (gamma)</span>, strength 0.830" in page
    assert page.count('class="badge linked"') == 2
    assert page.count('class="badge not-linked"') == 1
    top = report["factors"][0]
    assert f"rank 1 of {N_FACTORS}" in page
    assert f"{format_sig3(float(top['mi_nats']))} nats" in page


def test_html_tables_show_topk_and_classification(page, report):
    accuracy = report["classification"]["test_accuracy"]
    assert f'<td class="num">{format_sig3(float(accuracy))}</td>' in page
    for row in report["topk"]:
        assert f'<th class="num">{row["percent"]} %</th>' in page
        assert f'<td class="num">{format_sig3(float(row["total_mi_nats"]))}</td>' in page
    # The config is flattened into dotted keys with exact values.
    assert "<th>vae.learning_rate</th>" in page and ">0.0003<" in page
    assert "<th>split.test_subjects</th>" in page and ">[31, 32]<" in page


def test_synthetic_source_gets_a_banner_and_recordings_do_not(report, assets, page):
    assert "Synthetic data — not a recording" in page
    recorded = copy.deepcopy(report)
    recorded["source"]["kind"] = "deap-python"
    recorded_page = render_report_html(recorded, assets)
    assert "Synthetic data" not in recorded_page
    assert 'id="synthetic-banner"' not in recorded_page


def test_embedded_images_are_the_assets_as_png(page, assets):
    sources = parse_page(page).images
    decoded = [base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True) for src in sources]

    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert all(data.startswith(PNG_SIGNATURE) for data in decoded)
    expected = [assets.mi_variance, assets.topk, assets.confusion]
    expected += [figs[kind] for figs in assets.factors.values() for kind in ("topomap", "traversal")]
    assert sorted(decoded) == sorted(expected)
    assert len(page) < 3_000_000


def test_page_is_self_contained(page):
    lowered = page.lower()
    for forbidden in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert forbidden not in lowered


@pytest.mark.parametrize("payload", [SCRIPT_PAYLOAD, ATTRIBUTE_PAYLOAD])
def test_strings_from_files_are_escaped(report, assets, payload):
    hostile = copy.deepcopy(report)
    hostile["source"]["path"] = f"/data/{payload}.dat"
    hostile["factors"][0]["blocks"][0]["electrodes"][1] = payload
    hostile["factors"][1]["blocks"][0]["band"] = payload
    hostile["config"]["note"] = payload
    hostile["config"][payload] = 1
    hostile["provenance"]["store"] = payload
    hostile["provenance"]["operator"] = payload

    page = render_report_html(hostile, assets)

    assert payload not in page
    assert "<script" not in page.lower()
    assert "onerror=alert(1)>" not in page
    escaped = str(markupsafe.escape(payload))
    assert page.count(escaped) >= 7
    assert f"C4-{escaped}-P4-P8 (gamma)" in page


def make_image_report() -> dict:
    """An MNIST-like report: no classifier, factors without emotion or scalp blocks."""
    rng = np.random.default_rng(1)
    mi = rng.uniform(0, 3, 8)
    return {
        "dataset": "mnist",
        "source": {"kind": "idx", "path": "train-images-idx3-ubyte", "n_trials": 60000, "n_frames": 60000},
        "config": {"vae": {"latent_dim": 8}},
        "mi": {
            "per_factor_nats": mi,
            "variance": rng.uniform(0, 1, 8),
            "kl_prior_nats": mi + 0.1,
            "total_nats": mi.sum(),
            "ranking": np.argsort(-mi),
        },
        "topk": [
            {
                "percent": p,
                "n_factors": round(8 * p / 100),
                "total_mi_nats": float(mi.sum()) * p / 100,
                "mse": 0.1,
                "accuracy": None,
            }
            for p in (100, 50, 0)
        ],
        "factors": [{"index": int(np.argmax(mi)), "rank": 1, "mi_nats": mi.max(), "variance": 0.5}],
        "provenance": {"package_version": "0.1.0", "store": "mnist.zarr", "created": "2024-05-01"},
    }


def test_image_dataset_report_omits_eeg_sections(assets):
    image_report = make_image_report()
    mi = image_report["mi"]["per_factor_nats"]
    image_assets = ReportAssets(mi_variance=assets.mi_variance, topk=assets.topk)

    page = render_report_html(image_report, image_assets)

    assert "MNIST" in page
    assert 'id="classification"' not in page and "Test accuracy" not in page
    assert 'class="badge' not in page  # no emotion field, no emotion badge
    assert "Synthetic data" not in page
    assert parse_page(page).card_ids == [f"factor-{int(np.argmax(mi))}"]
    assert 'id="topk-table"' in page and "Reconstruction MSE" in page


def test_assets_must_match_the_report(report, assets):
    stray = ReportAssets(mi_variance=assets.mi_variance, factors={N_FACTORS + 3: {}})
    with pytest.raises(InputError, match="does not list"):
        render_report_html(report, stray)
    with pytest.raises(InputError, match="not PNG"):
        ReportAssets(mi_variance=b"GIF89a")
    with pytest.raises(InputError, match="unknown figure"):
        ReportAssets(mi_variance=assets.mi_variance, factors={0: {"../evil": assets.mi_variance}})


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.83, "0.830"),
        (24.3, "24.3"),
        (5.6, "5.60"),
        (0.000123456, "0.000123"),
        (1e-7, "1.00e-07"),
        (123456789.0, "1.23e+08"),
        (0.0, "0"),
        (16, "16"),
        (None, "–"),
        (float("nan"), "–"),
        (-2.5, "-2.50"),
    ],
)
def test_numbers_are_shown_with_three_significant_digits(value, text):
    assert format_sig3(value) == text


# --------------------------------------------------------------------------- figures


def test_figures_are_png_of_sensible_size(report, assets):
    for data in [
        assets.mi_variance,
        assets.topk,
        assets.confusion,
        *[png for figs in assets.factors.values() for png in figs.values()],
    ]:
        width, height = png_size(data)
        assert 5_000 < len(data) < 600_000
        assert 150 < width < 1400 and 150 < height < 1000
    topomap_width, topomap_height = png_size(next(iter(assets.factors.values()))["topomap"])
    assert topomap_width > 2 * topomap_height  # three heads side by side


def test_traversal_strip_is_generic_in_channels():
    rng = np.random.default_rng(2)
    values = np.linspace(-2, 2, 4)
    gray = traversal_strip(rng.uniform(size=(4, 1, 28, 28)), values)
    rgb = traversal_strip(rng.uniform(size=(4, 3, 16, 16)), values, rgb=True)
    wide = traversal_strip(rng.uniform(size=(8, 1, 28, 28)), np.linspace(-2, 2, 8))

    assert png_size(wide)[0] > 1.6 * png_size(gray)[0]
    assert png_size(rgb)[1] < 0.8 * png_size(traversal_strip(rng.uniform(size=(4, 3, 16, 16)), values))[1]
    with pytest.raises(InputError, match="RGB strip needs 3"):
        traversal_strip(rng.uniform(size=(4, 1, 8, 8)), values, rgb=True)
    with pytest.raises(InputError, match="values"):
        traversal_strip(rng.uniform(size=(4, 1, 8, 8)), values[:3])


def test_figures_reject_bad_input():
    with pytest.raises(InputError, match="not in montage"):
        topomap_figure(np.zeros((1, 2)), ["C4", "XYZ"], ["gamma"])
    with pytest.raises(InputError, match="change"):
        topomap_figure(np.zeros((3, 31)), DEAP_CHANNELS, BANDS)
    with pytest.raises(InputError, match="highlight"):
        topomap_figure(np.zeros((3, 32)), DEAP_CHANNELS, BANDS, highlight={"delta": ["C4"]})
    with pytest.raises(InputError, match="ranking"):
        mi_variance_figure([1.0, 0.5], [0.1, 0.2], [0, 0])
    with pytest.raises(InputError, match="non-finite"):
        mi_variance_figure([1.0, np.nan], [0.1, 0.2], [0, 1])
    with pytest.raises(InputError, match="class_names"):
        confusion_figure(np.eye(3, dtype=int), CLASS_NAMES)
    with pytest.raises(InputError, match="topk\\[0\\]"):
        topk_figure([{"percent": 100}])


def _subject_aware_report(report: dict, n_subjects: int) -> dict:
    """The fake report's factors with the subject-aware emotion fields a DEAP run writes."""
    report = copy.deepcopy(report)
    linked, driven, dead = report["factors"]
    linked["emotion"].update(
        tested=True,
        within_subject={"relevance": 0.31, "p_value": 0.001, "q_value": 0.003},
        pooled={"relevance": 0.27, "p_value": 0.001, "q_value": 0.003},
        subject_share=0.12,
        subject_driven=False,
    )
    linked["blocks"][0].update(emotion_linked=True, p_value=0.001, q_value=0.004)
    driven["emotion"].update(
        linked=False,
        tested=True,
        within_subject={"relevance": 0.0, "p_value": 0.62, "q_value": 0.62},
        pooled={"relevance": 0.29, "p_value": 0.001, "q_value": 0.003},
        subject_share=0.91,
        subject_driven=True,
    )
    dead["emotion"] = {
        "tested": False,
        "relevance": None,
        "p_value": None,
        "q_value": None,
        "within_subject": {"relevance": None, "p_value": None, "q_value": None},
        "pooled": {"relevance": None, "p_value": None, "q_value": None},
        "subject_share": None,
        "subject_driven": False,
        "linked": False,
    }
    dead["blocks"] = []
    report["emotion_relevance"] = {"n_subjects": n_subjects, "within_equals_pooled": n_subjects == 1}
    return report


def test_factor_cards_show_within_subject_and_pooled_relevance_and_the_subject_driven_badge(report, assets):
    page = render_report_html(_subject_aware_report(report, n_subjects=6), assets)

    assert page.count('class="badge subject-driven"') == 1
    assert page.count('class="badge linked"') == 1 and page.count('class="badge not-linked"') == 1
    assert "<dt>relevance within subject</dt><dd>0.310 nats\n          (q 0.00300)</dd>" in page
    assert "<dt>pooled over subjects</dt><dd>0.290 nats" in page
    assert "<dt>subject share</dt><dd>0.910</dd>" in page
    assert "emotion-linked within subject\n            (q 0.00400)" in page
    # As a reader sees it: the verdict follows the block's strength after a space.
    assert re.search(r"strength [0-9.]+ — emotion-linked within subject \(q 0\.00400\)", _as_read(page))
    # The subject-driven factor's block was never tested; the dead factor says nothing at all.
    assert page.count("not emotion-related within subject") == 0
    assert page.count("Not influential (Î below the threshold)") == 1
    assert "One subject." not in page


def _as_read(page: str) -> str:
    """The page's text as a reader sees it: no tags, entities decoded, whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", page)))


def test_a_tested_factor_not_linked_to_emotion_says_why_by_the_runs_rules(report, assets):
    subject_aware = _subject_aware_report(report, n_subjects=6)
    subject_aware["config"]["rules"] = {"alpha": 0.05, "min_relevance_nats": 0.1}
    _, driven, _ = subject_aware["factors"]
    page = _as_read(render_report_html(subject_aware, assets))
    assert "Not linked to emotion: not significant within subject (q 0.620 > α 0.05)." in page
    # Significant within subject, but a trace: the card names the minimum it falls short of.
    driven["emotion"].update(within_subject={"relevance": 0.03, "p_value": 0.001, "q_value": 0.002})
    page = _as_read(render_report_html(subject_aware, assets))
    assert (
        "Not linked to emotion: significant within subject (q 0.00200), but it carries 0.0300 nats "
        "about the emotion classes, below the 0.1 nats an emotion-linked factor must carry." in page
    )
    # The linked factor and the untested one get no such line; nor does a report without rules.
    assert page.count("Not linked to emotion:") == 1
    del subject_aware["config"]["rules"]
    assert "Not linked to emotion:" not in render_report_html(subject_aware, assets)


def test_one_subject_report_says_within_subject_is_pooled(report, assets):
    page = render_report_html(_subject_aware_report(report, n_subjects=1), assets)
    assert "One subject.</b> These trials come from a single subject" in page

"""DEAP manifests: their content agrees with the readers and generator; folder checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

import pipeline
from pipeline.errors import InputError
from pipeline.sources.deap import N_DEAP_CHANNELS, PERIPHERAL_CHANNELS
from pipeline.sources.manifests import FolderCheck, check_folder, load_manifest
from pipeline.sources.synthetic import ground_truth
from pipeline.sources.synthetic_files import GROUND_TRUTH_FILE
from pipeline.sources.synthetic_spec import SyntheticDeapSpec
from pipeline.sources.trials import (
    BASELINE_SECONDS,
    DEAP_CHANNELS,
    LABEL_NAMES,
    LABEL_RANGE,
    N_SAMPLES,
    SFREQ,
)


@pytest.fixture(scope="module")
def deap_manifest() -> dict:
    return load_manifest("deap")


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


@pytest.mark.parametrize("name", ["deap", "deap-synthetic"])
def test_manifest_values_match_the_readers(name):
    manifest = load_manifest(name)
    assert manifest["channels"] == [*DEAP_CHANNELS, *PERIPHERAL_CHANNELS]
    assert manifest["n_eeg_channels"] == len(DEAP_CHANNELS)
    assert manifest["label_columns"] == list(LABEL_NAMES)
    assert tuple(manifest["label_range"]) == LABEL_RANGE
    assert manifest["sampling_rate_hz"] == SFREQ
    assert manifest["baseline_seconds"] == BASELINE_SECONDS
    assert manifest["arrays"]["data"]["shape"] == [40, N_DEAP_CHANNELS, N_SAMPLES]
    assert manifest["arrays"]["labels"]["shape"] == [40, len(LABEL_NAMES)]
    layouts = {layout["name"]: layout for layout in manifest["layouts"]}
    assert layouts["data_preprocessed_python"]["pattern"] == "s{01..32}.dat"
    assert layouts["data_preprocessed_matlab"]["pattern"] == "s{01..32}.mat"
    assert {layout["format"] for layout in manifest["layouts"]} == {"deap-python", "deap-matlab"}


def test_synthetic_manifest_matches_the_generator_defaults():
    generator = load_manifest("deap-synthetic")["generator"]
    spec = SyntheticDeapSpec()
    assert (generator["n_subjects"], generator["n_trials"], generator["seed"]) == (
        spec.n_subjects,
        spec.n_trials,
        spec.seed,
    )
    planted = [
        {key: effect[key] for key in ("label", "band", "electrodes", "log10_power_per_label_unit")}
        for effect in ground_truth(spec)["effects"]
    ]
    assert generator["planted"] == planted


def test_load_manifest_by_path_and_refusals(tmp_path, deap_manifest):
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(deap_manifest))
    assert load_manifest(path) == deap_manifest
    with pytest.raises(InputError, match=r"no such manifest; available: .*'deap'"):
        load_manifest("deap-missing")
    with pytest.raises(InputError, match="manifest file not found"):
        load_manifest(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("layouts: [unclosed\n")
    with pytest.raises(InputError, match="not a readable YAML file") as caught:
        load_manifest(broken)
    assert caught.value.where == str(broken)


def _variant(manifest: dict, edit) -> dict:
    changed = copy.deepcopy(manifest)
    edit(changed)
    return changed


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: m.pop("channels"), "missing key 'channels' required by the manifest schema"),
        (lambda m: m["layouts"][0].pop("count"), r"missing key 'layouts\[0\]\.count'"),
        (
            lambda m: m["layouts"][0].update(pattern="../s{01..32}.dat"),
            r"'layouts\[0\]\.pattern' is '\.\./s\{01\.\.32\}\.dat'; expected a plain file name \(no folder\)",
        ),
        (
            lambda m: m["layouts"][0].update(pattern="s01.dat"),
            r"is 's01\.dat'; expected .* like 's\{01\.\.32\}",
        ),
        (lambda m: m["layouts"][0].update(pattern="s{1..32}.dat"), "equal width"),
        (lambda m: m["layouts"][0].update(count=40), "count 40 disagrees"),
        (lambda m: m["layouts"][0].update(folder="../elsewhere"), "plain folder name"),
        (lambda m: m["layouts"][1].update(name="data_preprocessed_python"), "layout names repeat"),
        (lambda m: m["channels"].pop(), "must be 40 distinct names"),
        (
            lambda m: m["channels"].__setitem__(1, "Fp1"),
            "'channels' repeats an item; expected distinct items",
        ),
        (lambda m: m["arrays"]["labels"].update(shape=[40, 3]), "must list 3 names"),
        (
            lambda m: m["arrays"]["data"].update(shape=[40, 40]),
            r"'arrays\.data\.shape' has 2 item\(s\); expected exactly 3",
        ),
        (
            lambda m: m["arrays"]["labels"].update(shape=[40, 0]),
            r"'arrays\.labels\.shape\[1\]' is 0; expected a value >= 1",
        ),
        (lambda m: m.update(label_range=[9, 1]), "low < high"),
        (lambda m: m.update(sampling_rate_hz=0), "'sampling_rate_hz' is 0; expected a value > 0"),
        (lambda m: m.update(baseline_seconds="3 s"), "'baseline_seconds' is '3 s'; expected a finite number"),
    ],
    ids=[
        "no-channels",
        "no-count",
        "escape",
        "no-range",
        "width",
        "count",
        "subfolder",
        "repeat",
        "channels",
        "repeated-channel",
        "label-columns",
        "data-shape",
        "label-shape",
        "label-range",
        "rate",
        "baseline",
    ],
)
def test_invalid_manifests_are_refused(tmp_path, deap_manifest, edit, problem):
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(_variant(deap_manifest, edit)))
    with pytest.raises(InputError, match=problem) as caught:
        load_manifest(path)
    assert caught.value.where == str(path)


@pytest.mark.parametrize("name", ["deap", "deap-synthetic"])
def test_shipped_manifests_follow_the_shipped_schema(name):
    schema = json.loads(Path(pipeline.__file__).with_name("manifest.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(load_manifest(name), schema, cls=jsonschema.Draft202012Validator)


def test_a_manifest_that_is_not_a_mapping_is_named(tmp_path, deap_manifest):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump(deap_manifest["layouts"]))
    with pytest.raises(InputError) as caught:
        load_manifest(path)
    assert str(caught.value) == f"{path}: 'manifest' is a list of 2 item(s); expected an object"
    # A manifest given as a mapping is named by its data set.
    with pytest.raises(InputError) as caught:
        check_folder(tmp_path, _variant(deap_manifest, lambda m: m.update(n_eeg_channels=0)))
    assert str(caught.value) == "manifest deap: 'n_eeg_channels' is 0; expected a value >= 1"


def test_partial_folder_reports_missing_and_unexpected(tmp_path, deap_manifest):
    subjects = [1, 2, 3, 5, 8, 13, 21, 32]
    _touch(tmp_path, *(f"s{number:02d}.dat" for number in subjects))
    _touch(tmp_path, "notes.txt", "s33.dat", "s1.dat", "S04.DAT", "s06.dat.bak", ".hidden")
    (tmp_path / "s07.dat").mkdir()  # a folder with a subject file's name is not a subject file
    check = check_folder(tmp_path, deap_manifest)
    assert isinstance(check, FolderCheck)
    assert check.layout == "data_preprocessed_python"
    assert check.folder == tmp_path
    assert check.subjects == tuple(subjects)
    assert check.files == tuple(tmp_path / f"s{number:02d}.dat" for number in subjects)
    assert len(check.missing) == 32 - len(subjects)
    assert "s04.dat" in check.missing and "s07.dat" in check.missing and "s01.dat" not in check.missing
    assert check.unexpected == (
        ".hidden",
        "S04.DAT",
        "notes.txt",
        "s06.dat.bak",
        "s07.dat",
        "s1.dat",
        "s33.dat",
    )


def test_layout_with_most_files_wins_and_the_other_is_unexpected(tmp_path, deap_manifest):
    _touch(tmp_path, "s01.dat", "s01.mat", "s02.mat")
    check = check_folder(tmp_path, "deap")
    assert check.layout == "data_preprocessed_matlab"
    assert check.subjects == (1, 2)
    assert check.unexpected == ("s01.dat",)


def test_deap_root_folder_is_searched_for_layout_subfolders(tmp_path, deap_manifest):
    _touch(tmp_path / "data_preprocessed_python", *(f"s{number:02d}.dat" for number in range(1, 33)))
    _touch(tmp_path / "data_preprocessed_matlab", "s01.mat")
    _touch(tmp_path, "README.txt")
    check = check_folder(tmp_path, deap_manifest)
    assert check.layout == "data_preprocessed_python"
    assert check.folder == tmp_path / "data_preprocessed_python"
    assert len(check.files) == 32 and check.missing == () and check.unexpected == ()


def test_synthetic_companion_file_is_not_unexpected(tmp_path):
    _touch(tmp_path, "s01.dat", "s02.dat", GROUND_TRUTH_FILE)
    assert check_folder(tmp_path, "deap-synthetic").unexpected == ()
    assert check_folder(tmp_path, "deap").unexpected == (GROUND_TRUTH_FILE,)


def test_unusable_folders_name_the_folder(tmp_path, deap_manifest):
    with pytest.raises(InputError, match="folder does not exist") as caught:
        check_folder(tmp_path / "absent", deap_manifest)
    assert caught.value.where == str(tmp_path / "absent")
    with pytest.raises(InputError, match="is empty"):
        check_folder(tmp_path, deap_manifest)
    _touch(tmp_path, "subject1.dat", "s1.mat")
    with pytest.raises(
        InputError, match=r"holds no subject file of any layout; expected files named like s01\.dat"
    ):
        check_folder(tmp_path, deap_manifest)
    a_file = tmp_path / "s01.dat"
    a_file.write_bytes(b"")
    with pytest.raises(InputError, match="is not a folder"):
        check_folder(a_file, deap_manifest)

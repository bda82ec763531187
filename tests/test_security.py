"""No loader executes file content; names from files never become paths outside the run folder;
strings from files reach the HTML report escaped.

The crafted files carry a pickle payload that, if unpickled, would create a marker file: every
test checks the marker is still absent after the loader refused the file.
"""

from __future__ import annotations

import ast
import hashlib
import json
import pickle
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml
from test_ingest_recordings import tiny_preset, write_recording

from pipeline.errors import InputError
from pipeline.models.checkpoint import load_checkpoint
from pipeline.models.classifier import load_classifier
from pipeline.models.state import load_vae
from pipeline.sources.deap import read_source_file
from pipeline.sources.manifests import MANIFEST_DIR, load_manifest

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ("pipeline", "flows")


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('executed')",))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _craft_checkpoint(directory: Path, name: str, marker: Path) -> Path:
    """A checkpoint pointer whose tensor file is a torch pickle with a payload, digest and all."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = directory / f"{name}-{'0' * 32}.safetensors"
    torch.save({"model.weight": torch.zeros(2), "hook": Payload(marker)}, tensors)
    pointer = {
        "format": "eegmi-checkpoint",
        "version": 1,
        "tensors_file": tensors.name,
        "tensors_sha256": hashlib.sha256(tensors.read_bytes()).hexdigest(),
        "metadata": {"model_config": {"input_shape": [3, 32, 32], "n_latents": 2}, "kind": "emotion-lstm"},
    }
    (directory / f"{name}.json").write_text(json.dumps(pointer))
    # A loader that fell back to a conventional torch file would find one here too.
    torch.save(Payload(marker), directory / f"{name}.pt")
    return tensors


def test_a_crafted_checkpoint_is_refused_without_running_its_payload(tmp_path):
    marker = tmp_path / "executed"
    tensors = _craft_checkpoint(tmp_path / "checkpoints" / "vae", "best", marker)
    _craft_checkpoint(tmp_path / "checkpoints", "classifier", marker)

    with pytest.raises(InputError, match=r"is not a safetensors file") as refused:
        load_vae(tmp_path / "checkpoints" / "vae")
    assert refused.value.where == str(tensors)
    with pytest.raises(InputError, match=r"is not a safetensors file"):
        load_classifier(tmp_path / "checkpoints")
    assert not marker.exists()


def test_a_pointer_cannot_send_the_loader_outside_its_folder(tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"not read")
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for tensors_file in ("../elsewhere.safetensors", str(outside), "/etc/passwd"):
        pointer = {
            "format": "eegmi-checkpoint",
            "version": 1,
            "tensors_file": tensors_file,
            "tensors_sha256": "0" * 64,
            "metadata": {},
        }
        (directory / "best.json").write_text(json.dumps(pointer))
        with pytest.raises(InputError, match="names an invalid tensor file"):
            load_checkpoint(directory, "best")


def test_a_crafted_deap_pickle_is_refused_without_running_its_payload(tmp_path):
    marker = tmp_path / "executed"
    crafted = tmp_path / "s01.dat"
    crafted.write_bytes(pickle.dumps({"data": Payload(marker), "labels": [[5.0] * 4]}, protocol=2))
    # Protocol 2, as DEAP's Python 2 files, spells the builtins module "__builtin__".
    with pytest.raises(InputError, match=r"s01\.dat: refused to load global __builtin__\.exec"):
        read_source_file(crafted)
    assert not marker.exists()


def test_the_preprocess_flow_names_a_crafted_file_and_runs_nothing(prefect_harness, tmp_path):
    from flows.deap import SourceFilesFailed, preprocess_deap

    marker = tmp_path / "executed"
    data = tmp_path / "data"
    data.mkdir()
    (data / "s01.dat").write_bytes(pickle.dumps({"data": Payload(marker), "labels": []}, protocol=2))
    state = preprocess_deap(out_dir=str(tmp_path / "run"), data_dir=str(data), return_state=True)
    failed = state.result(raise_on_failure=False)
    assert isinstance(failed, SourceFilesFailed)
    assert "refused to load global __builtin__.exec" in failed.failures["s01.dat"]
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


UNSAFE_LOADERS = {
    "pickle.load", "pickle.loads", "cPickle.load", "cloudpickle.load", "cloudpickle.loads", "dill.load",
    "dill.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open", "yaml.load",
    "yaml.unsafe_load", "yaml.full_load", "eval", "exec", "np.fromfile", "pd.read_pickle",
}  # fmt: skip


@pytest.mark.parametrize("folder", CODE_DIRS)
def test_no_code_path_loads_files_in_a_way_that_can_execute_them(folder):
    offences = []
    for path in sorted((REPO / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(REPO)
        for call, name in _calls(tree):
            constants = {k.arg: k.value.value for k in call.keywords if isinstance(k.value, ast.Constant)}
            if name in UNSAFE_LOADERS:
                offences.append(f"{where}:{call.lineno}: {name}()")
            if name == "torch.load" and constants.get("weights_only") is not True:
                offences.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and constants.get("allow_pickle") is True:
                offences.append(f"{where}:{call.lineno}: np.load(allow_pickle=True)")
        # Every unpickler must choose what it rebuilds.
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
                if "find_class" not in methods:
                    offences.append(f"{where}:{node.lineno}: unpickler {node.name} without find_class")
    assert offences == []


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        (
            "pattern",
            "../s{01..32}.dat",
            r"'layouts\[0\]\.pattern' is .*; expected a plain file name \(no folder\)",
        ),
        (
            "pattern",
            "/etc/s{01..32}.dat",
            r"'layouts\[0\]\.pattern' is .*; expected a plain file name \(no folder\)",
        ),
        ("folder", "../../elsewhere", r"'layouts\[0\]\.folder' is .*; expected a plain folder name"),
        ("folder", "..", r"'layouts\[0\]\.folder' is '\.\.'; expected a plain folder name"),
        ("companions", ["../README"], r"'layouts\[0\]\.companions\[0\]' is .*; expected a plain file name"),
    ],
)
def test_manifest_names_cannot_lead_outside_the_data_folder(tmp_path, key, value, complaint):
    manifest = yaml.safe_load((MANIFEST_DIR / "deap.yaml").read_text(encoding="utf-8"))
    manifest["layouts"][0][key] = value
    crafted = tmp_path / "crafted.yaml"
    crafted.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    with pytest.raises(InputError, match=complaint):
        load_manifest(crafted)


def _files_outside(root: Path, run: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file() and run not in path.parents}


HOSTILE_NAME = "sub-05_..%2F..%2Fescape_eeg.fif"


def test_names_from_recordings_and_sidecars_never_become_paths_outside_the_run_folder(
    prefect_harness, tmp_path
):
    from flows.ingest import ingest_inbox

    inbox, run = tmp_path / "inbox", tmp_path / "run"
    write_recording(inbox, HOSTILE_NAME, seed=5, extra_channels=("../../evil",))
    before = _files_outside(tmp_path, run)
    result = ingest_inbox(inbox_dir=str(inbox), out_dir=str(run))
    assert result["n_trials_new"] == 2
    assert _files_outside(tmp_path, run) == before
    ledger = json.loads((run / "inbox.json").read_text())
    assert [entry["name"] for entry in ledger["files"].values()] == [HOSTILE_NAME]


class _Elements(HTMLParser):
    """Every element and attribute the browser would build from a page."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


FILE_HTML = "<img src=x onerror=alert(1)>"
FOLDER_HTML = "<svg onload=alert(2)>"
CHANNEL_HTML = "<script>alert(3)<"


def test_file_folder_and_channel_names_holding_html_reach_the_report_escaped(prefect_harness, tmp_path):
    from flows.ingest import ingest_recordings

    folder = tmp_path / f"lab {FOLDER_HTML}"
    hostile = write_recording(folder, f"sub-01_{FILE_HTML}_eeg.fif", seed=1, extra_channels=(CHANNEL_HTML,))
    recordings = [hostile, *(write_recording(folder, f"sub-0{s}_eeg.fif", seed=s) for s in (2, 3))]

    run = tmp_path / "run"
    ingest_recordings(
        recordings=[str(path) for path in recordings], out_dir=str(run), retrain=True, preset=tiny_preset()
    )
    page = (run / "report.html").read_text(encoding="utf-8")
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert hostile.name in report["config"]["update"]["recordings"]
    assert FOLDER_HTML in report["source"]["path"]

    parsed = _Elements()
    parsed.feed(page)
    tags = {tag for tag, _ in parsed.tags}
    assert "script" not in tags and "svg" not in tags
    handlers = [(tag, name) for tag, attrs in parsed.tags for name in attrs if name.startswith("on")]
    assert handlers == []
    text = "".join(parsed.text)
    assert FILE_HTML in text and FOLDER_HTML in text  # shown as text, escaped in the source
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    # Channels are matched to DEAP names; other channel names never reach the report.
    assert "alert(3)" not in page and "alert(3)" not in json.dumps(report)

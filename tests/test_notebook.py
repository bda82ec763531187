"""The inspection notebook runs top to bottom on a real (small) run folder."""

import json

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = "notebooks/inspect_report.ipynb"


@pytest.mark.timeout(300)
def test_inspect_report_notebook_executes_on_a_run(small_deap_run, monkeypatch):
    out_dir, _ = small_deap_run
    monkeypatch.setenv("EEGMI_RUN", str(out_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3").execute()
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not any(o.output_type == "error" for o in cell.outputs) for cell in code_cells)
    printed = "".join(o.text for cell in code_cells for o in cell.outputs if o.output_type == "stream")
    report = json.loads((out_dir / "report.json").read_text())
    top = report["mi"]["ranking"][0]
    assert f"z{top}" in printed and f"{report['mi']['total_nats']:.3f}" in printed
    images = [o for cell in code_cells for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the factor's topomap, its traversal, the re-thresholded topomap

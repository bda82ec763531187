"""Write a report directory: ``report.json``, ``report.html`` and ``figures/*.png``.

Each file is written to a temporary sibling and moved into place with ``os.replace``,
so a killed run leaves either the previous version of a file or the new one, never a
truncated one. File names come only from fixed strings and factor indices, never
from strings inside the report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import InputError
from pipeline.files import atomic_write_bytes
from pipeline.report.figures import ReportAssets
from pipeline.report.html import render_report_html
from pipeline.report.schema import checked_report
from pipeline.store.run_folder import FIGURES_DIR_NAME as FIGURES_DIR
from pipeline.store.run_folder import REPORT_HTML_NAME as REPORT_HTML
from pipeline.store.run_folder import REPORT_JSON_NAME as REPORT_JSON


def _figure_files(assets: ReportAssets) -> dict[str, bytes]:
    files = {f"{FIGURES_DIR}/mi_variance.png": assets.mi_variance}
    if assets.topk is not None:
        files[f"{FIGURES_DIR}/topk.png"] = assets.topk
    if assets.confusion is not None:
        files[f"{FIGURES_DIR}/confusion.png"] = assets.confusion
    for index in sorted(assets.factors):
        for kind, png in sorted(assets.factors[index].items()):
            # kind is one of the fixed FACTOR_FIGURES names (checked by ReportAssets).
            files[f"{FIGURES_DIR}/factor_{int(index):03d}_{kind}.png"] = png
    return files


def write_report(out_dir: str | os.PathLike, report: Mapping, assets: ReportAssets) -> dict[str, Path]:
    """Validate a report and write it, its HTML page and its figures under ``out_dir``.

    Parameters
    ----------
    out_dir : str or path-like
        Directory to write into; created if missing. Existing report files are replaced.
    report : mapping
        Report following the ``report.json`` contract (``pipeline/report/report.schema.json``);
        numpy scalars and arrays are allowed and converted to JSON types (non-finite floats
        become ``null``). ``schema_version`` is added, first, when the report has none.
    assets : ReportAssets
        The report's figures as PNG bytes.

    Returns
    -------
    dict str -> Path
        Path of every file written, keyed by its name relative to ``out_dir``
        (``"report.json"``, ``"report.html"``, ``"figures/mi_variance.png"``, ...).

    Raises
    ------
    InputError
        If ``out_dir`` is not a directory, a contract key is missing or malformed, or the
        assets do not match the report.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    if not isinstance(assets, ReportAssets):
        raise InputError("assets", f"is a {type(assets).__name__}; expected ReportAssets")
    report_path = out / REPORT_JSON
    native = checked_report(report, report_path, REPORT_JSON)
    html = render_report_html(native, assets)
    payload = json.dumps(native, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    files = {**_figure_files(assets), REPORT_JSON: payload.encode("utf-8"), REPORT_HTML: html.encode("utf-8")}
    written: dict[str, Path] = {}
    # report.json and report.html go last, so they never point at figures still missing.
    for name, data in files.items():
        path = out / name
        atomic_write_bytes(path, data)
        written[name] = path
    return written

"""The report a neuroscientist opens: ``report.json`` (contract), ``report.html`` and figures."""

from pipeline.report.figures import (
    ReportAssets,
    confusion_figure,
    mi_variance_figure,
    topk_figure,
    topomap_figure,
)
from pipeline.report.html import render_report_html
from pipeline.report.schema import REPORT_SCHEMA_VERSION, to_json_native, validate_report
from pipeline.report.traversals import traversal_strip
from pipeline.report.writer import write_report

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "ReportAssets",
    "confusion_figure",
    "mi_variance_figure",
    "render_report_html",
    "to_json_native",
    "topk_figure",
    "topomap_figure",
    "traversal_strip",
    "validate_report",
    "write_report",
]

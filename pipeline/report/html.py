"""The self-contained HTML page a neuroscientist opens.

``render_report_html`` takes the report through the ``report.json`` contract
(:func:`pipeline.report.schema.checked_report`), works out what the page shows
(:mod:`pipeline.report.formatting`), then fills a Jinja2 template with autoescaping on, so
every string that came from a file (paths, electrode names, config values) reaches the page
escaped, and embeds the figures as ``data:`` URIs so the page needs nothing but itself.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jinja2

from pipeline.errors import InputError
from pipeline.report.figures import ReportAssets
from pipeline.report.formatting import format_sig3, page_context
from pipeline.report.schema import checked_report


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.report", "templates"),
        autoescape=True,  # every string from a data file must reach the page escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sig3"] = format_sig3
    return env


def render_report_html(report: Mapping, assets: ReportAssets) -> str:
    """Render the report as one self-contained HTML page.

    Sections without data (no ``topk``, ``classification``, ``factors`` or ``emotion``)
    are left out, so the same page serves DEAP and the image data sets; an image data set's
    page speaks of images and traversals, DEAP's of frames and electrode blocks. A synthetic
    source gets a prominent banner saying the numbers describe generated data.

    Parameters
    ----------
    report : mapping
        A report satisfying the contract (checked with :func:`~pipeline.report.schema.validate_report`);
        numpy values are allowed. Without ``schema_version`` it is read as this package's version.
    assets : ReportAssets
        The figures to embed.

    Returns
    -------
    str
        HTML with inline CSS and ``data:`` images; no scripts and no external URLs.
    """
    report = checked_report(report)
    if not isinstance(assets, ReportAssets):
        raise InputError("assets", f"is a {type(assets).__name__}; expected ReportAssets")
    assets.check_matches(report)
    return _environment().get_template("report.html.j2").render(**page_context(report, assets))

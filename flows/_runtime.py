"""Process-wide settings every flow entry point needs before Prefect is imported."""

from __future__ import annotations

import os


def configure_offline_prefect() -> None:
    """Keep Prefect from phoning home: the lab machines this runs on are often offline.

    Must run before ``import prefect``, which reads its settings once.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")

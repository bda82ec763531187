"""Process-wide settings every flow entry point needs before Prefect is imported."""

from __future__ import annotations

import os


def configure_offline_prefect() -> None:
    """Keep Prefect from phoning home (lab machines are often offline) and patient at start-up.

    Must run before ``import prefect``, which reads its settings once.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary local server can take longer than Prefect's 20-s default to start on a busy
    # 2-core machine; a timeout there would fail a run before it began.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

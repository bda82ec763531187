"""Process-wide settings every flow entry point needs before Prefect is imported."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading


def configure_offline_prefect() -> None:
    """Keep Prefect from phoning home (lab machines are often offline) and patient at start-up.

    Must run before ``import prefect``, which reads its settings once.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary local server can take longer than Prefect's 20-s default to start on a busy
    # 2-core machine; a timeout there would fail a run before it began.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as on Ctrl-C (Prefect records the flow run as crashed)."""


# A run stops within this many seconds of SIGTERM even if something ignores the interruption
# (Prefect's events client, for one, kept retrying a stopped server for minutes).
HARD_STOP_SECONDS = 8.0
EXIT_TERMINATED = 128 + signal.SIGTERM


def stop_temporary_server() -> None:
    """Stop Prefect's temporary API server if this process started one (a no-op otherwise)."""
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:
        return
    for server in list(server_module.SubprocessASGIServer._instances.values()):
        process = server.server_process
        if process is not None and process.poll() is None:
            process.terminate()


def exit_now(code: int) -> None:
    """End the process at once: stop the temporary server, flush output, skip every thread and hook."""
    stop_temporary_server()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def stop_on_sigterm() -> None:
    """Make SIGTERM (cron, systemd, container stops, ``timeout``) end the run within seconds.

    The first SIGTERM raises :class:`Terminated` in the main thread, so locks are released and
    the flow run is marked crashed; :data:`HARD_STOP_SECONDS` later the process exits whatever
    is still running. Trial writes are atomic, so the store stays readable either way.
    """

    def handle(signum: int, frame: object) -> None:
        timer = threading.Timer(HARD_STOP_SECONDS, exit_now, args=(EXIT_TERMINATED,))
        timer.daemon = True
        timer.start()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    signal.signal(signal.SIGTERM, handle)

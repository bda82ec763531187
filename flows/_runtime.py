"""Process-wide settings every flow entry point needs before Prefect is imported."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator


def configure_offline_prefect() -> None:
    """Keep Prefect from phoning home (lab machines are often offline) and patient at start-up.

    Must run before ``import prefect``, which reads its settings once.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary local server can take longer than Prefect's 20-s default to start on a busy
    # 2-core machine; a timeout there would fail a run before it began.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@contextlib.contextmanager
def heartbeats_only_for_a_server() -> Iterator[None]:
    """Flows run inside send no heartbeats when they run on Prefect's temporary local server.

    Heartbeats let a Prefect server mark a run whose process died as crashed; the temporary
    server ends with the command, so no one would receive them. And at its end every flow and
    subflow waits up to a second for the heartbeat thread, which sleeps in one-second steps
    (Prefect 3.9, heartbeats every 180 s by default): up to a second added to every command, a
    sixth of a full DEAP preprocessing. With a server (``PREFECT_API_URL``), or a heartbeat
    frequency the user set (by either of Prefect's variables, or in a profile), heartbeats are kept.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    user_set = "heartbeat_frequency" in get_current_settings().flows.model_fields_set
    if PREFECT_API_URL.value() or user_set:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


class _NamedErrorsWithoutTraceback(logging.Filter):
    """Drops the traceback Prefect logs with a flow or task run that failed on a named error.

    Bad input, an unwritable run folder and files that failed one by one are reported by the
    command in one line naming the file and what is wrong; a traceback above that line would bury
    it and read as a bug. So is a write the file system refused (full, read-only, forbidden) in a
    task: the flow turns it into the run folder's one-line error. Every other exception keeps its
    traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from pipeline.errors import InputError, NamedFailure
        from pipeline.store.runlock import OUTPUT_ERRNOS

        error = record.exc_info[1] if record.exc_info else None
        refused_write = isinstance(error, OSError) and error.errno in OUTPUT_ERRNOS
        if refused_write or isinstance(error, InputError | NamedFailure):
            record.exc_info = None
            record.exc_text = None
        return True


_NAMED_ERRORS_FILTER = _NamedErrorsWithoutTraceback()


def log_named_errors_without_traceback() -> None:
    """Install :class:`_NamedErrorsWithoutTraceback` on Prefect's flow- and task-run loggers.

    A logger's filters survive Prefect's logging set-up (``dictConfig`` only adds to them), so
    this may run before or after ``import prefect``; running it twice installs one filter.
    """
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if _NAMED_ERRORS_FILTER not in logger.filters:
            logger.addFilter(_NAMED_ERRORS_FILTER)


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

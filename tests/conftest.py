"""Test session set-up: an isolated, offline Prefect home and a single temporary Prefect server."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from unittest import mock

import pytest

# Prefect reads its settings at import time, so these must be set before any test imports it.
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="eegmi-prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture(autouse=True)
def _thread_settings_stay_in_their_test():
    """``eegmi``'s ``main`` applies the thread policy to the process (environment variables its
    children inherit, torch's threads); tests call it in-process, so each gets them back."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    with mock.patch.dict(os.environ):
        yield
    if threads is not None:
        torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread():
    """Hold torch to one intra-op thread, as the test's subprocesses do: a result compared bitwise
    across processes must come from reductions split the same way."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for every flow test of the session (starting one costs ~10 s)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # As the eegmi command runs its flows (flows._runtime.heartbeats_only_for_a_server): the
    # harness's server is temporary too, and each flow's end would wait for a heartbeat thread.
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session")
def small_deap_run(prefect_harness, tmp_path_factory):
    """One run of the ``deap`` flow on 3 small synthetic subjects: (out_dir, flow result, report)."""
    from small_deap_run import run_small_deap_flow

    return run_small_deap_flow(tmp_path_factory.mktemp("deap-run"))


@pytest.fixture(scope="session")
def small_deap_run_both(prefect_harness, tmp_path_factory):
    """The small run with both protocols and a two-value β sweep: (out_dir, flow result, report)."""
    from small_deap_run import run_small_deap_flow

    return run_small_deap_flow(tmp_path_factory.mktemp("deap-run-both"), protocol="both", betas=[2.0, 4.0])

"""The thread policy's decisions (pipeline.threads) and how the command line applies them."""

from __future__ import annotations

import os
from unittest import mock

import pytest

from pipeline.errors import InputError
from pipeline.threads import apply_thread_environment, choose_thread_policy


def test_an_idle_machine_gets_one_thread_per_usable_core_and_sleeping_waits():
    policy = choose_thread_policy(environ={}, cores=4, load_average=0.2, cpu_count=4)
    assert (policy.threads, policy.source, policy.parallel_tasks) == (4, "automatic", 4)
    assert policy.environment() == {
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": "1",  # numpy's BLAS: one per parallel task, never tasks × cores
        "OMP_WAIT_POLICY": "PASSIVE",
    }


@pytest.mark.parametrize(
    ("load", "threads"),
    [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (1.7, 1), (9.0, 1)],
)
def test_cores_other_work_keeps_busy_are_left_to_it_but_one_thread_always_remains(load, threads):
    assert choose_thread_policy(environ={}, cores=2, load_average=load, cpu_count=2).threads == threads


def test_the_load_of_a_large_host_counts_only_for_this_process_share_of_it():
    # 8 usable cores of a 64-core host at load 16: about 2 of "our" cores are busy.
    policy = choose_thread_policy(environ={}, cores=8, load_average=16.0, cpu_count=64)
    assert (policy.threads, policy.busy_cores) == (6, 2.0)


def test_threads_never_exceed_the_usable_cores_when_automatic():
    policy = choose_thread_policy(environ={}, cores=3, load_average=0.0, cpu_count=3)
    assert policy.threads * 1 <= policy.usable_cores  # parallel tasks × one BLAS thread each
    assert policy.parallel_tasks == 3


def test_the_threads_option_wins_over_the_environment_and_the_load():
    policy = choose_thread_policy(
        requested=3, environ={"OMP_NUM_THREADS": "1"}, cores=2, load_average=5.0, cpu_count=2
    )
    assert (policy.threads, policy.source) == (3, "--threads")
    environ = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    apply_thread_environment(policy, environ)
    assert environ == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }


def test_a_users_omp_num_threads_is_used_as_given_and_left_in_place():
    environ = {"OMP_NUM_THREADS": "6"}
    policy = choose_thread_policy(environ=environ, cores=2, load_average=3.0, cpu_count=2)
    assert (policy.threads, policy.source) == (6, "OMP_NUM_THREADS")
    apply_thread_environment(policy, environ)
    assert environ["OMP_NUM_THREADS"] == "6"
    assert environ["MKL_NUM_THREADS"] == "6"


def test_a_users_wait_policy_or_spin_count_is_kept():
    for variable, value in (("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "10000")):
        environ = {variable: value}
        policy = choose_thread_policy(environ=environ, cores=2, load_average=0.0, cpu_count=2)
        assert policy.wait_policy == "environment"
        apply_thread_environment(policy, environ)
        assert environ[variable] == value
        assert variable == "OMP_WAIT_POLICY" or "OMP_WAIT_POLICY" not in environ


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_count_is_named_in_one_line(bad):
    with pytest.raises(InputError, match="OMP_NUM_THREADS"):
        choose_thread_policy(environ={"OMP_NUM_THREADS": bad}, cores=2, load_average=0.0)
    with pytest.raises(InputError, match="--threads"):
        choose_thread_policy(requested=bad, environ={}, cores=2, load_average=0.0)


def test_the_command_line_applies_the_policy_before_the_command_runs():
    import torch

    from flows import cli

    threads = torch.get_num_threads()
    args = cli.build_parser().parse_args(["deployments", "--inbox", "in", "--out", "out", "--threads", "1"])
    assert args.threads == 1
    with mock.patch.dict(os.environ):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY"):
            os.environ.pop(name, None)
        try:
            cli.configure_threads(args)
            # Child processes (Dask workers, scheduled runs) inherit these; torch, already loaded
            # in this process, is set directly.
            applied = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
            assert applied == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
            assert torch.get_num_threads() == 1
        finally:
            torch.set_num_threads(threads)


def test_the_command_line_reports_a_bad_thread_count_in_one_line(monkeypatch, capsys):
    from flows import cli

    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert cli.main(["deployments", "--inbox", "in", "--out", "out"]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines() == [
        "eegmi: error: OMP_NUM_THREADS: 'many' must be a positive whole number of threads"
    ]

"""The thread policy's decisions (pipeline.threads): the registry of running runs, the fair share
and how it follows runs that start and end, the overrides, and how the command line applies them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import pytest

from pipeline import threads as policy_module
from pipeline.errors import InputError
from pipeline.threads import (
    FairShare,
    OtherWork,
    RunRegistry,
    ThreadPolicy,
    apply_thread_environment,
    choose_thread_policy,
    fair_share,
    process_start_time,
)


@pytest.fixture
def registry(tmp_path) -> RunRegistry:
    return RunRegistry(tmp_path / "runs")


def no_other_work(cores: int) -> OtherWork:
    """A machine where nothing but the runs works (the test machine may be busy)."""
    return OtherWork(cores, read=lambda pids: None)


@pytest.fixture
def quiet_machine(monkeypatch):
    monkeypatch.setattr(policy_module, "OtherWork", no_other_work)


@pytest.fixture
def other_process():
    """A live process that is not this one (a stand-in for another run)."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_live_runs_count_registered_processes_and_forget_dead_ones(registry, other_process):
    assert registry.live_runs() == 0
    registry.register()
    registry.register(other_process.pid)
    assert registry.live_runs() == 2
    assert registry.live_runs(other_than=os.getpid()) == 1
    other_process.kill()
    other_process.wait()
    assert registry.live_runs() == 1
    # The dead run's entry is gone, this process's stays.
    assert [path.name.split("-")[0] for path in registry.folder.iterdir()] == [str(os.getpid())]


def test_an_entry_of_a_dead_process_or_of_a_reused_pid_is_ignored_and_removed(registry):
    registry.folder.mkdir(parents=True)
    gone = registry.entry(dead_pid(), "12345")
    gone.write_text("{}")
    # This process's pid, but a process that started at another time: the pid was reused.
    reused = registry.entry(os.getpid(), str(int(process_start_time(os.getpid())) - 1))
    reused.write_text("{}")
    (registry.folder / "not-an-entry.txt").write_text("")
    assert registry.live_runs() == 0
    assert not gone.exists() and not reused.exists()


def test_registering_writes_only_this_processs_own_entry_and_unregistering_removes_it(
    registry, other_process
):
    registry.register(other_process.pid)
    entry = registry.register()
    assert entry == registry.entry(os.getpid(), process_start_time(os.getpid()))
    assert entry.is_file()
    registry.unregister()
    assert not entry.exists()
    assert registry.live_runs() == 1


def test_a_registry_that_cannot_be_written_leaves_the_run_unregistered(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    registry = RunRegistry(blocked / "runs")
    assert registry.register() is None
    assert registry.live_runs() == 0


@pytest.mark.parametrize(
    ("cores", "runs", "share"),
    [(2, 1, 2), (2, 2, 1), (2, 3, 1), (8, 3, 2), (16, 4, 4), (4, 0, 4), (1, 5, 1)],
)
def test_the_fair_share_is_an_equal_part_of_the_cores_and_at_least_one(cores, runs, share):
    assert fair_share(cores, runs) == share
    assert share * max(1, runs) <= cores or share == 1


@pytest.mark.parametrize(
    ("cores", "runs", "busy", "share"),
    [(2, 1, 0.4, 2), (2, 1, 0.6, 1), (2, 1, 5.0, 1), (8, 2, 2.0, 3), (8, 1, 1.2, 7), (4, 2, -1.0, 2)],
)
def test_cores_other_work_keeps_busy_are_left_to_it(cores, runs, busy, share):
    assert fair_share(cores, runs, busy) == share


class FakeTicks:
    """/proc readings: the machine's busy and total ticks, and each run's own."""

    def __init__(self):
        self.busy, self.total, self.runs = 1000, 4000, {}

    def advance(self, total: int, other: int, runs: dict[int, int]) -> None:
        self.total += total
        self.busy += other + sum(runs.values())
        for pid, ticks in runs.items():
            self.runs[pid] = self.runs.get(pid, 0) + ticks

    def __call__(self, pids):
        return self.busy, self.total, {pid: self.runs[pid] for pid in pids if pid in self.runs}


def test_other_work_is_measured_since_the_last_look_without_the_runs_own_threads():
    ticks = FakeTicks()
    other = OtherWork(cores=2, read=ticks, weight=1.0)
    ticks.advance(200, 0, {11: 0})
    assert other.update([11]) == 0.0  # a first look has nothing to compare with
    ticks.advance(200, 0, {11: 200})  # a run spinning on both cores: not other work
    assert other.update([11]) == 0.0
    ticks.advance(200, 100, {11: 100})  # something else takes a core
    assert other.update([11]) == pytest.approx(1.0)
    ticks.advance(200, 0, {11: 200})  # and ends: no load average lingers
    assert other.update([11]) == 0.0


def test_other_work_is_smoothed_over_looks_and_missing_proc_changes_nothing():
    ticks = FakeTicks()
    other = OtherWork(cores=2, read=ticks, weight=0.5)
    other.update([])
    ticks.advance(200, 200, {})
    assert other.update([]) == pytest.approx(1.0)  # half of the 2 cores measured
    ticks.advance(200, 200, {})
    assert other.update([]) == pytest.approx(1.5)
    assert OtherWork(2, read=lambda pids: None).update([]) == 0.0


def test_a_run_alone_yields_the_cores_other_work_takes_and_takes_them_back(registry):
    clock = mock.Mock(return_value=0.0)
    torch, ticks = FakeTorch(2), FakeTicks()
    registry.register()
    me = os.getpid()
    ticks.advance(0, 0, {me: 0})
    share = FairShare(registry, 2, 0.5, torch.get, torch.set, clock, OtherWork(2, ticks, weight=1.0))
    assert share.refresh() == 2
    for other, expected in ((0, 2), (180, 1), (150, 1), (20, 2)):
        clock.return_value += 0.5
        ticks.advance(200, other, {me: 200 - other})
        assert share.refresh() == expected
    assert torch.set_calls == [1, 2]


def test_a_run_alone_gets_every_core_and_a_second_run_half(registry, other_process):
    alone = choose_thread_policy(environ={}, cores=4, registry=registry)
    assert (alone.threads, alone.source, alone.other_runs, alone.dynamic) == (4, "automatic", 0, True)
    registry.register()  # this run's own entry does not count against it
    assert choose_thread_policy(environ={}, cores=4, registry=registry).threads == 4
    registry.register(other_process.pid)
    second = choose_thread_policy(environ={}, cores=4, registry=registry)
    assert (second.threads, second.other_runs, second.parallel_tasks) == (2, 1, 2)


def test_the_policy_sets_thread_counts_and_one_blas_thread_but_leaves_openmp_waiting_alone(registry):
    policy = choose_thread_policy(environ={}, cores=4, registry=registry)
    environ: dict[str, str] = {}
    apply_thread_environment(policy, environ)
    assert environ == {
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": "1",  # numpy's BLAS: one per parallel task, never tasks × cores
        "EEGMI_AUTOMATIC_THREADS": "4",
    }
    # A child process that inherits these continues the share (dynamic), not a fixed user count.
    inherited = choose_thread_policy(environ=environ, cores=4, other_runs=3)
    assert (inherited.threads, inherited.source) == (4, "automatic")


def test_the_threads_option_wins_over_the_environment_and_other_runs(registry, other_process):
    registry.register(other_process.pid)
    policy = choose_thread_policy(requested=3, environ={"OMP_NUM_THREADS": "1"}, cores=2, registry=registry)
    assert (policy.threads, policy.source, policy.dynamic) == (3, "--threads", False)
    environ = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EEGMI_AUTOMATIC_THREADS": "1"}
    apply_thread_environment(policy, environ)
    assert environ == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "1"}


def test_a_users_omp_num_threads_is_used_as_given_and_left_in_place(registry, other_process):
    registry.register(other_process.pid)
    environ = {"OMP_NUM_THREADS": "6"}
    policy = choose_thread_policy(environ=environ, cores=2, registry=registry)
    assert (policy.threads, policy.source, policy.dynamic) == (6, "OMP_NUM_THREADS", False)
    apply_thread_environment(policy, environ)
    assert (environ["OMP_NUM_THREADS"], environ["MKL_NUM_THREADS"]) == ("6", "6")
    # A user's OMP_NUM_THREADS that differs from the share a parent chose is the user's.
    assert choose_thread_policy(environ={**environ, "EEGMI_AUTOMATIC_THREADS": "2"}, cores=2).source == (
        "OMP_NUM_THREADS"
    )


def test_a_users_wait_policy_is_kept():
    for variable, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("GOMP_SPINCOUNT", "10000")):
        environ = {variable: value}
        apply_thread_environment(choose_thread_policy(environ=environ, cores=2, other_runs=0), environ)
        assert environ[variable] == value
        assert variable == "OMP_WAIT_POLICY" or "OMP_WAIT_POLICY" not in environ


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_count_is_named_in_one_line(bad):
    with pytest.raises(InputError, match="OMP_NUM_THREADS"):
        choose_thread_policy(environ={"OMP_NUM_THREADS": bad}, cores=2, other_runs=0)
    with pytest.raises(InputError, match="--threads"):
        choose_thread_policy(requested=bad, environ={}, cores=2, other_runs=0)


class FakeTorch:
    def __init__(self, threads: int):
        self.threads = threads
        self.set_calls: list[int] = []

    def get(self) -> int:
        return self.threads

    def set(self, threads: int) -> None:
        self.set_calls.append(threads)
        self.threads = threads


def test_the_share_follows_runs_that_start_and_end_and_reads_the_registry_at_most_twice_a_second(
    registry, other_process
):
    clock = mock.Mock(return_value=100.0)
    torch = FakeTorch(4)
    registry.register()
    share = FairShare(registry, 4, 0.5, torch.get, torch.set, clock, other_work=no_other_work(4))
    assert share.refresh() == 4
    assert torch.set_calls == []  # already at the share: nothing to change

    registry.register(other_process.pid)  # a second run starts
    clock.return_value = 100.2
    assert share.refresh() is None  # too soon to look again
    assert torch.threads == 4
    clock.return_value = 100.6
    assert share.refresh() == 2
    assert torch.set_calls == [2]

    other_process.kill()  # it ends (even without unregistering)
    other_process.wait()
    clock.return_value = 101.2
    assert share.refresh() == 4
    assert torch.set_calls == [2, 4]
    assert (share.low, share.high) == (2, 4)


def test_a_run_keeps_torchs_threads_at_its_share_from_step_to_step(registry, other_process, quiet_machine):
    import torch

    policy = ThreadPolicy(threads=2, source="automatic", usable_cores=2, other_runs=0)
    policy_module.start_run(policy, registry)
    try:
        assert registry.live_runs() == 1
        policy_module.keep_fair_share()
        assert torch.get_num_threads() == 2
        registry.register(other_process.pid)
        policy_module._run.share.interval = 0.0
        policy_module.keep_fair_share()
        assert torch.get_num_threads() == 1
        record = policy_module.thread_record()
        assert record["torch_threads"] == 1
        assert record["thread_policy"] == {
            "threads": 2,
            "source": "automatic",
            "usable_cores": 2,
            "other_runs": 0,
            "dynamic": True,
            "min_threads": 1,
            "max_threads": 2,
        }
    finally:
        policy_module.end_run()
    assert registry.live_runs() == 1  # only the other run is left
    torch.set_num_threads(2)
    policy_module.keep_fair_share()  # the run is over: nothing follows the registry any more
    assert torch.get_num_threads() == 2


def test_a_fixed_count_registers_but_is_never_changed(registry, other_process, quiet_machine):
    import torch

    registry.register(other_process.pid)
    policy_module.start_run(ThreadPolicy(2, "--threads", 2, 0), registry)
    try:
        assert registry.live_runs() == 2  # dynamic runs beside it make room for it
        torch.set_num_threads(2)
        policy_module.keep_fair_share()
        assert torch.get_num_threads() == 2
        assert policy_module.thread_record()["thread_policy"]["dynamic"] is False
    finally:
        policy_module.end_run()


def test_the_command_line_registers_the_run_and_applies_the_policy_before_the_command_runs(tmp_path):
    import torch

    from flows import cli

    args = cli.build_parser().parse_args(["deployments", "--inbox", "in", "--out", "out", "--threads", "1"])
    assert args.threads == 1
    with mock.patch.dict(os.environ, {"EEGMI_RUN_REGISTRY": str(tmp_path / "runs")}):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY"):
            os.environ.pop(name, None)
        try:
            cli.configure_threads(args)
            # Child processes (Dask workers, scheduled runs) inherit these; torch, already loaded
            # in this process, is set directly.
            applied = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
            assert applied == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": None}
            assert torch.get_num_threads() == 1
            assert RunRegistry().live_runs() == 1
        finally:
            cli.release_threads()
        assert RunRegistry().live_runs() == 0


# numpy's OpenBLAS reads its thread count once, when numpy is imported: a module imported on the
# way to the policy that pulls numpy in leaves it at every core, and its idle threads spin.
CHECK_NUMPY_BLAS = """
import json, sys
from flows import cli
args = cli.build_parser().parse_args(["deap", "--threads", "2"])
numpy_before = "numpy" in sys.modules
cli.configure_threads(args)
import numpy, threadpoolctl
blas = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["internal_api"] == "openblas"]
cli.release_threads()
print(json.dumps({"numpy_before": numpy_before, "blas": blas}))
"""


def test_numpys_blas_takes_the_policys_single_thread_when_the_command_line_starts(tmp_path):
    environment = {
        name: value
        for name, value in os.environ.items()
        if name
        not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "EEGMI_AUTOMATIC_THREADS")
    }
    environment["EEGMI_RUN_REGISTRY"] = str(tmp_path / "runs")
    result = subprocess.run(
        [sys.executable, "-c", CHECK_NUMPY_BLAS], capture_output=True, text=True, env=environment, timeout=120
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["numpy_before"] is False
    assert seen["blas"] and set(seen["blas"]) == {1}


def test_the_command_line_reports_a_bad_thread_count_in_one_line(monkeypatch, capsys, tmp_path):
    from flows import cli

    monkeypatch.setenv("EEGMI_RUN_REGISTRY", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert cli.main(["deployments", "--inbox", "in", "--out", "out"]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines() == [
        "eegmi: error: OMP_NUM_THREADS: 'many' must be a positive whole number of threads"
    ]


def test_runs_of_one_user_share_a_registry_folder_that_the_environment_can_move(tmp_path):
    default = policy_module.registry_folder({})
    assert default.name == "runs" and default.parent.name == f"eegmi-{os.getuid()}"
    assert policy_module.registry_folder({"EEGMI_RUN_REGISTRY": str(tmp_path)}) == tmp_path


def test_a_scheduled_run_started_with_the_policys_environment_registers_at_its_first_step(
    monkeypatch, tmp_path, quiet_machine
):
    import torch

    monkeypatch.setattr(policy_module, "_run", policy_module._RunState())  # a fresh process
    monkeypatch.setenv("EEGMI_RUN_REGISTRY", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("EEGMI_AUTOMATIC_THREADS", "2")  # what eegmi serve passes on
    try:
        policy_module.keep_fair_share()
        assert RunRegistry().live_runs() == 1
        assert policy_module.thread_record()["thread_policy"]["dynamic"] is True
        assert torch.get_num_threads() == fair_share(policy_module.usable_cores(), 1)
    finally:
        policy_module.end_run()
    assert RunRegistry().live_runs() == 0


def test_a_process_whose_thread_count_the_user_set_never_registers_by_itself(monkeypatch, tmp_path):
    monkeypatch.setattr(policy_module, "_run", policy_module._RunState())
    monkeypatch.setenv("EEGMI_RUN_REGISTRY", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("EEGMI_AUTOMATIC_THREADS", raising=False)
    policy_module.keep_fair_share()
    assert RunRegistry().live_runs() == 0
    assert "thread_policy" not in policy_module.thread_record()

"""Scale-out: preprocessing on a Dask cluster, or into an fsspec store, gives the store a local run gives."""

from __future__ import annotations

import os
import uuid
from unittest import mock

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.store.frames import FrameStore
from pipeline.store.run_folder import store_path

SYNTHETIC = {"n_subjects": 2, "n_trials": 3, "seed": 7}
N_TRIALS = SYNTHETIC["n_subjects"] * SYNTHETIC["n_trials"]
# Attributes that record when a store was written rather than what it holds.
TIME_ATTRS = ("created", "updated")


def _records(store: FrameStore) -> dict[tuple[str, int], tuple]:
    """Every committed trial by (source sha256, trial): frames, labels, subject, source."""
    columns = zip(
        store.committed_rows(), store.source_sha256, store.trial, store.labels, store.subject, store.source,
        strict=True,
    )  # fmt: skip
    return {
        (str(sha), int(trial)): (store.read_frames([row])[0], labels, int(subject), str(source))
        for row, sha, trial, labels, subject, source in columns
    }


def _assert_same_store(actual: FrameStore, expected: FrameStore) -> None:
    got, want = _records(actual), _records(expected)
    assert len(got) == len(actual.committed_rows()) == N_TRIALS
    assert got.keys() == want.keys()
    for key, (frames, labels, subject, source) in want.items():
        np.testing.assert_array_equal(got[key][0], frames, strict=True)
        np.testing.assert_array_equal(got[key][1], labels, strict=True)
        assert got[key][2:] == (subject, source)
    strip = lambda attrs: {k: v for k, v in attrs.items() if k not in TIME_ATTRS}  # noqa: E731
    assert strip(actual.attrs) == strip(expected.attrs)


@pytest.fixture(scope="module")
def local_store(prefect_harness, tmp_path_factory) -> FrameStore:
    """The store of a run on threads. BLAS is held to one thread, as Dask holds its workers' BLAS:
    a matrix product summed in another order may differ in the last bit of a float32."""
    from threadpoolctl import threadpool_limits

    from flows.deap import preprocess_deap

    out_dir = tmp_path_factory.mktemp("threads")
    with threadpool_limits(limits=1):
        preprocess_deap(out_dir=str(out_dir), synthetic=SYNTHETIC)
    return FrameStore.open(store_path(str(out_dir)))


def test_a_two_worker_local_cluster_builds_the_store_the_local_run_builds(local_store, tmp_path):
    from distributed import Client, LocalCluster, get_task_stream

    from flows.deap import preprocess_deap
    from flows.runners import preprocess_task_runner

    out_dir = tmp_path / "dask"
    with (
        # The cluster's nannies set OMP_NUM_THREADS=1 (and the like) in this process's environment;
        # later tests' subprocesses must not inherit it.
        mock.patch.dict(os.environ),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
    ):
        runner = preprocess_task_runner(dask_address=cluster.scheduler_address)
        summary = preprocess_deap.with_options(task_runner=runner)(out_dir=str(out_dir), synthetic=SYNTHETIC)
        workers = set(cluster.scheduler.workers)
    assert summary["n_trials_stored"] == summary["n_trials_new"] == N_TRIALS
    # One task per subject, each executed by a worker process of the cluster.
    executed = [record for record in stream.data if "ingest_synthetic_subject" in record["key"]]
    assert len(executed) == SYNTHETIC["n_subjects"]
    assert {record["worker"] for record in executed} <= workers
    _assert_same_store(FrameStore.open(store_path(str(out_dir))), local_store)


def test_an_fsspec_store_location_holds_the_same_store(local_store):
    from threadpoolctl import threadpool_limits

    from flows.deap import preprocess_deap

    out_dir = f"memory://eegmi-{uuid.uuid4().hex}"
    with threadpool_limits(limits=1):
        summary = preprocess_deap(out_dir=out_dir, synthetic=SYNTHETIC)
    assert summary["store"] == f"{out_dir}/frames.zarr"
    _assert_same_store(FrameStore.open(store_path(out_dir)), local_store)


def test_the_task_runner_follows_the_options():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runners import preprocess_task_runner

    assert isinstance(preprocess_task_runner(), ThreadPoolTaskRunner)
    remote = preprocess_task_runner(dask_address="tcp://10.0.0.5:8786")
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    local = preprocess_task_runner(dask_workers=3)
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["threads_per_worker"] == 1
    with pytest.raises(InputError, match="not both"):
        preprocess_task_runner(dask_address="tcp://h:1", dask_workers=2)
    with pytest.raises(InputError, match="is not a Dask scheduler address"):
        preprocess_task_runner(dask_address="10.0.0.5:8786")
    with pytest.raises(InputError, match="positive integer"):
        preprocess_task_runner(dask_workers=0)


def test_training_refuses_a_url_run_folder_before_any_work(prefect_harness):
    from flows.deap import deap

    state = deap(out_dir=f"memory://eegmi-{uuid.uuid4().hex}", return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InputError)
    assert "need a local run folder" in str(error)

"""DEAP flows: preprocess signals into the frame store, then learn, rank and report."""

from __future__ import annotations

from prefect import flow, get_run_logger, task, unmapped
from prefect.futures import as_completed

from pipeline.config import PreprocessConfig
from pipeline.errors import InputError
from pipeline.ingest import ingest_trials, open_deap_store, store_path
from pipeline.manifests import check_folder, load_manifest
from pipeline.sources.deap import read_source_file
from pipeline.sources.synthetic import SyntheticDeapSpec, generate_subject


class SourceFilesFailed(RuntimeError):
    """Some source files could not be stored; the others were. Carries which and why."""

    def __init__(self, failures: dict[str, str], n_stored_files: int):
        self.failures = failures
        self.n_stored_files = n_stored_files
        listing = "; ".join(f"{name}: {why}" for name, why in failures.items())
        super().__init__(f"{len(failures)} source file(s) failed, {n_stored_files} stored. {listing}")


def _retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry transient I/O errors; a file that is simply bad will not improve on a second read."""
    try:
        state.result()
    except InputError:
        return False
    except Exception:
        return True
    return True


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_unless_bad_input)
def ingest_file(path: str, out_dir: str, config: dict, data_kind: str) -> dict:
    preprocess = PreprocessConfig.from_dict(config)
    trials = read_source_file(path)
    return ingest_trials(open_deap_store(out_dir, preprocess, data_kind), trials, preprocess).to_dict()


@task(retries=1, retry_condition_fn=_retry_unless_bad_input)
def ingest_synthetic_subject(spec: dict, subject: int, out_dir: str, config: dict) -> dict:
    preprocess = PreprocessConfig.from_dict(config)
    trials = generate_subject(SyntheticDeapSpec.from_dict(spec), subject)
    return ingest_trials(open_deap_store(out_dir, preprocess, "synthetic"), trials, preprocess).to_dict()


@flow(name="deap-preprocess")
def preprocess_deap(
    out_dir: str,
    data_dir: str | None = None,
    synthetic: dict | None = None,
    config: dict | None = None,
) -> dict:
    """Turn DEAP files (or the synthetic DEAP) into ``OUT/frames.zarr``, one task per subject file.

    Files already stored under the same preprocessing config are skipped. A bad file fails its
    own task and is named in the flow's final state; every other file is still stored.
    """
    logger = get_run_logger()
    preprocess = PreprocessConfig.from_dict(config) if config else PreprocessConfig()
    config_dict = preprocess.to_dict()
    if data_dir is not None:
        check = check_folder(data_dir, load_manifest("deap"))
        if check.missing:
            logger.warning("%s: %d expected file(s) absent: %s", data_dir, len(check.missing),
                           ", ".join(check.missing))
        if check.unexpected:
            logger.warning("%s: ignoring unexpected file(s): %s", data_dir, ", ".join(check.unexpected))
        data_kind = "deap-python" if check.layout == "data_preprocessed_python" else "deap-matlab"
        # The store is created once here so that parallel tasks only ever open an existing group.
        open_deap_store(out_dir, preprocess, data_kind)
        names = [path.name for path in check.files]
        futures = ingest_file.map(
            [str(p) for p in check.files], out_dir, unmapped(config_dict), data_kind
        )
    else:
        spec = SyntheticDeapSpec.from_dict(synthetic or {})
        data_kind = "synthetic"
        open_deap_store(out_dir, preprocess, data_kind)
        subjects = list(range(1, spec.n_subjects + 1))
        names = [f"synthetic://s{subject:02d}" for subject in subjects]
        futures = ingest_synthetic_subject.map(
            unmapped(spec.to_dict()), subjects, out_dir, unmapped(config_dict)
        )

    name_of = {future.task_run_id: name for future, name in zip(futures, names, strict=True)}
    failures: dict[str, str] = {}
    results: list[dict] = []
    for done, future in enumerate(as_completed(futures), start=1):
        name = name_of[future.task_run_id]
        future.wait()  # as_completed can yield before the future's final state is recorded
        state = future.state
        if state.is_completed():
            result = future.result()
            results.append(result)
            logger.info("[%d/%d] %s: %d trial(s), %d newly stored", done, len(futures), name,
                        result["n_trials"], result["n_written"])
        else:
            error = state.result(raise_on_failure=False)
            failures[name] = str(error.problem if isinstance(error, InputError) else error)
            logger.error("[%d/%d] %s failed: %s", done, len(futures), name, failures[name])
    store = open_deap_store(out_dir, preprocess, data_kind)
    store.consolidate()
    summary = {
        "store": store_path(out_dir),
        "n_files": len(futures),
        "n_trials_stored": len(store.committed_rows()),
        "n_trials_new": sum(r["n_written"] for r in results),
    }
    if failures:
        raise SourceFilesFailed(failures, n_stored_files=len(results))
    return summary

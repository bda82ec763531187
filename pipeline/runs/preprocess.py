"""The DEAP preprocessing run without Prefect: DEAP files (or the synthetic DEAP) → the frame store.

:func:`preprocess_deap` stores the sources one after another; the ``deap-preprocess`` flow maps
them over tasks (threads or a Dask cluster) around the same :func:`prepare_store` and
:func:`preprocess_summary`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.errors import InputError, NamedFailure
from pipeline.models.presets import DeapPreset
from pipeline.signal.config import PreprocessConfig
from pipeline.sources.deap import read_source_file
from pipeline.sources.manifests import check_folder, load_manifest
from pipeline.sources.synthetic import generate_subject
from pipeline.sources.synthetic import ground_truth as synthetic_ground_truth
from pipeline.sources.synthetic_spec import SyntheticDeapSpec, scenario_spec
from pipeline.store.ingest_eeg import deap_store_spec, ingest_trials, open_store
from pipeline.store.run_folder import RunFolder

LOG = logging.getLogger("eegmi")


# Settings and source -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeapSource:
    """Where a DEAP run's trials come from: a DEAP folder, or a synthetic DEAP scenario."""

    data_dir: str | None = None
    synthetic: SyntheticDeapSpec | None = None

    @property
    def path(self) -> str:
        """The source as the report names it."""
        if self.synthetic is None:
            return str(self.data_dir)
        spec = self.synthetic
        return f"synthetic://deap?scenario={spec.scenario}&subjects={spec.n_subjects}&seed={spec.seed}"

    def ground_truth(self) -> dict | None:
        return None if self.synthetic is None else synthetic_ground_truth(self.synthetic)


def deap_source(
    data_dir: str | None,
    settings: DeapPreset,
    seed: int,
    scenario: str = "planted",
    n_subjects: int | None = None,
) -> DeapSource:
    """The DEAP folder, or without one the synthetic DEAP of ``scenario`` at the preset's size."""
    if data_dir is not None:
        return DeapSource(data_dir=data_dir)
    return DeapSource(
        synthetic=scenario_spec(scenario, n_subjects=n_subjects or settings.synthetic_subjects, seed=seed)
    )


class SourceFilesFailed(NamedFailure):
    """Some source files could not be stored; the others were. Carries which and why."""

    def __init__(self, failures: dict[str, str], n_stored_files: int):
        self.failures = failures
        self.n_stored_files = n_stored_files
        listing = "; ".join(f"{name}: {why}" for name, why in failures.items())
        super().__init__(f"{len(failures)} source file(s) failed, {n_stored_files} stored. {listing}")


@dataclass(frozen=True)
class DeapInputs:
    """The sources a preprocessing run stores: names for the log, and what each task reads."""

    data_kind: str
    identity: dict | None
    names: list[str]
    sources: list[str]


def prepare_store(run: RunFolder, source: DeapSource, preprocess: PreprocessConfig, log=LOG) -> DeapInputs:
    """Check the DEAP folder against its manifest (absent and unexpected files are logged) and create
    the frame store, so that parallel writers only ever open an existing group."""
    if source.synthetic is not None:
        identity = source.synthetic.identity()
        open_store(run.location, deap_store_spec(preprocess, "synthetic", identity))
        names = [f"synthetic://s{subject:02d}" for subject in range(1, source.synthetic.n_subjects + 1)]
        return DeapInputs("synthetic", identity, names, names)
    data_dir = str(source.data_dir)
    check = check_folder(data_dir, load_manifest("deap"))
    if check.missing:
        log.warning(
            "%s: %d expected file(s) absent: %s", data_dir, len(check.missing), ", ".join(check.missing)
        )
    if check.unexpected:
        log.warning("%s: ignoring unexpected file(s): %s", data_dir, ", ".join(check.unexpected))
    data_kind = "deap-python" if check.layout == "data_preprocessed_python" else "deap-matlab"
    open_store(run.location, deap_store_spec(preprocess, data_kind))
    return DeapInputs(
        data_kind, None, [path.name for path in check.files], [str(path) for path in check.files]
    )


def preprocess_summary(
    run: RunFolder, preprocess: PreprocessConfig, inputs: DeapInputs, results: list[dict]
) -> dict:
    """Consolidate the store once every source is stored, and count its trials."""
    store = open_store(run.location, deap_store_spec(preprocess, inputs.data_kind, inputs.identity))
    store.consolidate()
    return {
        "store": run.store_path,
        "n_files": len(inputs.sources),
        "n_trials_stored": len(store.committed_rows()),
        "n_trials_new": sum(result["n_written"] for result in results),
    }


def preprocess_deap(
    run: RunFolder, source: DeapSource, preprocess: PreprocessConfig | None = None, log=LOG
) -> dict:
    """Store every source of ``source`` one after another (the flow maps them over tasks instead).

    Raises
    ------
    SourceFilesFailed
        Once every other source is stored, naming each file that could not be read.
    """
    preprocess = preprocess or PreprocessConfig()
    inputs = prepare_store(run, source, preprocess, log)
    store = open_store(run.location, deap_store_spec(preprocess, inputs.data_kind, inputs.identity))
    results, failures = [], {}
    for subject, (name, path) in enumerate(zip(inputs.names, inputs.sources, strict=True), start=1):
        try:
            if source.synthetic is None:
                trials = read_source_file(path, isolate=True)
            else:
                trials = generate_subject(source.synthetic, subject)
        except InputError as err:
            failures[name] = err.about(path)
            log.error("%s failed: %s", name, failures[name])
            continue
        results.append(ingest_trials(store, trials, preprocess).to_dict())
    summary = preprocess_summary(run, preprocess, inputs, results)
    if failures:
        raise SourceFilesFailed(failures, n_stored_files=len(results))
    return summary

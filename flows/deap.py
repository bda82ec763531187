"""DEAP flows: the run of :mod:`pipeline.runs.deap` with each step a Prefect task.

``deap-preprocess`` stores the sources one task per file (on threads or a Dask cluster); ``deap``
runs the whole sequence of :func:`pipeline.runs.deap.run_deap` with its steps as tasks and the
run folder held from start to end.
"""

from dataclasses import replace

from prefect import flow, get_run_logger, task, unmapped
from prefect.task_runners import TaskRunner

from flows.runners import as_tasks, cluster_safe, collect_mapped, exclusive_run, preprocess_task_runner
from pipeline.errors import InputError
from pipeline.models.presets import DeapPreset
from pipeline.runs.deap import PLAIN_STEPS, check_seed_options, deap_settings, run_deap
from pipeline.runs.preprocess import (
    DeapSource,
    SourceFilesFailed,
    deap_source,
    prepare_store,
    preprocess_summary,
)
from pipeline.signal.config import PreprocessConfig
from pipeline.sources.deap import read_source_file
from pipeline.sources.synthetic import generate_subject
from pipeline.sources.synthetic_spec import SyntheticDeapSpec
from pipeline.store.ingest_eeg import deap_store_spec, ingest_trials, open_store
from pipeline.store.run_folder import RunFolder
from pipeline.store.runlock import output_errors


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
    preprocess = PreprocessConfig.model_validate(config)
    trials = read_source_file(path, isolate=True)
    # A refused write is the run folder's fault, not the file's: it is neither retried nor blamed on it.
    with output_errors(out_dir):
        store = cluster_safe(open_store(out_dir, deap_store_spec(preprocess, data_kind)))
        return ingest_trials(store, trials, preprocess).to_dict()


@task(retries=1, retry_condition_fn=_retry_unless_bad_input)
def ingest_synthetic_subject(spec: dict, subject: int, out_dir: str, config: dict) -> dict:
    preprocess = PreprocessConfig.model_validate(config)
    synthetic = SyntheticDeapSpec.from_dict(spec)
    trials = generate_subject(synthetic, subject)
    with output_errors(out_dir):
        store = cluster_safe(
            open_store(out_dir, deap_store_spec(preprocess, "synthetic", synthetic.identity()))
        )
        return ingest_trials(store, trials, preprocess).to_dict()


@flow(name="deap-preprocess", task_runner=preprocess_task_runner())
@exclusive_run()
def preprocess_deap(
    out_dir: str,
    data_dir: str | None = None,
    synthetic: dict | None = None,
    config: dict | None = None,
) -> dict:
    """Turn DEAP files (or the synthetic DEAP) into the run folder's frame store, one task per subject file.

    Files already stored under the same preprocessing config are skipped. A bad file fails its
    own task and is named in the flow's final state; every other file is still stored.
    """
    logger = get_run_logger()
    run = RunFolder(out_dir)
    preprocess = PreprocessConfig.model_validate(config) if config else PreprocessConfig()
    config_dict = preprocess.model_dump(mode="json")
    if data_dir is not None:
        source = DeapSource(data_dir=data_dir)
    else:
        source = DeapSource(synthetic=SyntheticDeapSpec.from_dict(synthetic or {}))
    inputs = prepare_store(run, source, preprocess, logger)
    if source.synthetic is None:
        futures = ingest_file.map(inputs.sources, out_dir, unmapped(config_dict), inputs.data_kind)
    else:
        subjects = list(range(1, source.synthetic.n_subjects + 1))
        spec = unmapped(source.synthetic.to_dict())
        futures = ingest_synthetic_subject.map(spec, subjects, out_dir, unmapped(config_dict))
    results, failures = collect_mapped(futures, inputs.names, inputs.sources, logger)
    summary = preprocess_summary(run, preprocess, inputs, list(results.values()))
    if failures:
        raise SourceFilesFailed(failures, n_stored_files=len(results))
    return summary


# The steps of a DEAP run as tasks; the preprocessing (a flow of its own) is added per run.
TASK_STEPS = as_tasks(PLAIN_STEPS, keep=("preprocess",))


def _preprocess_flow_on(runner: TaskRunner):
    """The ``deap-preprocess`` flow as the run's preprocessing step, its tasks on ``runner``."""

    def preprocess(run: RunFolder, source: DeapSource) -> dict:
        synthetic = None if source.synthetic is None else source.synthetic.to_dict()
        storing = preprocess_deap.with_options(task_runner=runner)
        return storing(out_dir=run.location, data_dir=source.data_dir, synthetic=synthetic)

    return preprocess


@flow(name="deap")
@exclusive_run(local_only=True)
def deap(
    out_dir: str,
    data_dir: str | None = None,
    preset: str | DeapPreset = "demo",
    seed: int = 0,
    resume: bool = False,
    protocol: str | None = None,
    betas: list[float] | None = None,
    synthetic_subjects: int | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
    synthetic_scenario: str = "planted",
    mixed_precision: bool = False,
    compile_model: bool = False,
    n_seeds: int = 1,
) -> dict:
    """The whole DEAP pipeline: frames → β-VAE → Î ranking → LSTM → top-k tables → report.

    ``preset`` is a preset's name (``demo``, ``paper``) or the whole settings as a ``DeapPreset``
    (a dict of its fields is validated into one), which carries its own seeds.

    Without ``data_dir`` it runs on the synthetic DEAP of ``synthetic_scenario`` (``planted``,
    ``null`` or ``confound``). ``resume`` continues VAE training from its last checkpoint; stored
    frames and latents of the same model are never recomputed.
    ``protocol`` (``trial``, ``subject`` or ``both``; default: the preset's) decides the
    splits: with ``both`` the subject protocol gets its own split, normalisation, β-VAE and
    LSTM, and the report shows the two accuracies side by side. ``betas`` overrides the
    preset's β; several values run a sweep (one β-VAE each, one kept).
    ``mixed_precision`` (bf16 autocast, CUDA only) and ``compile_model`` (``torch.compile`` of
    the β-VAE) change the speed of training, not what it computes beyond rounding.
    ``n_seeds`` > 1 trains β-VAEs with model seeds ``seed`` … ``seed + n_seeds − 1`` on the split
    and normalisation of ``seed`` and reports how often each factor and block is found again;
    seeds already trained on the same split are reused.
    """
    check_seed_options(n_seeds, betas)
    settings = deap_settings(preset, seed, protocol, betas, mixed_precision, compile_model)
    source = deap_source(data_dir, settings, seed, synthetic_scenario, synthetic_subjects)
    runner = preprocess_task_runner(dask_address, dask_workers)
    steps = replace(TASK_STEPS, preprocess=_preprocess_flow_on(runner))
    return run_deap(out_dir, settings, source, resume=resume, n_seeds=n_seeds, steps=steps)

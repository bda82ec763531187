"""β-VAE training speed for the DEAP architecture (3×32×32 frames), on CPU and, where present, on CUDA.

Measures:

- ``cpu``: training steps (forward, loss, backward, Adam) on random frames, for 32 and 128 latents
  and batch sizes 64, 256 and 1024, with as many torch threads as the process may use. Each
  configuration runs ``--warmup`` steps, then ``--steps`` timed steps; frames/s = frames / time.
- ``gpu`` (only when ``torch.cuda.is_available()``): the ``paper`` preset (128 latents, β = 6,
  batch 1024, fp32) on DEAP's full size, 80,640 frames (32 subjects × 40 trials × 63 s), held on
  the GPU: each epoch trains on the 80 % training share and evaluates the 10 % validation share,
  for ``--gpu-epochs`` epochs (300, the paper's schedule, by default). Reported: training
  frames/s, against the reference of about 236,000 frames/s measured on one NVIDIA H200, and
  the end-to-end time. Then two epochs of the pipeline's own trainer
  (:class:`pipeline.models.training.VAETrainer`), which reads the frames from host memory trial group by
  trial group, show what the streaming costs. Without CUDA the section says why and holds no
  numbers.
- ``demo_estimate``: the ``demo`` preset's stages run as plain functions on a few synthetic
  subjects (epochs capped), each timed and scaled to the preset's subjects and maximum
  epochs, to show which share of the demo's end-to-end time goes to β-VAE training.

Machine information and the load averages (at the start and the end) are recorded: on a shared
machine the load changes the numbers.

Usage::

    python benchmarks/train.py                     # writes benchmarks/results/train.json
    python benchmarks/train.py --steps 3 --demo-subjects 1 --output /tmp/train.json   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from pipeline.threads import apply_thread_environment, choose_thread_policy

# As the eegmi command does for a run alone, before torch starts its threads: one per usable core
# (other runs are not counted, so that measurements stay comparable; the load is recorded).
apply_thread_environment(choose_thread_policy(other_runs=0))

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
FRAME_SHAPE = (3, 32, 32)
CPU_LATENTS = (32, 128)
CPU_BATCH_SIZES = (64, 256, 1024)
FULL_DEAP_FRAMES = 32 * 40 * 63
TRAIN_SHARE, VAL_SHARE = 0.8, 0.1
REFERENCE = {
    "frames_per_second": 236_000,
    "device": "one NVIDIA H200",
    "batch_size": 1024,
    "precision": "fp32",
    "what": "β-VAE training steps of the paper preset, frames held on the GPU",
}


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info() -> dict:
    """Cores, platform, accelerator and the library versions that decide the speed."""
    from pipeline import __version__

    info = {
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "numpy": np.__version__,
        "eegmi": __version__,
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "cuda": torch.cuda.is_available(),
    }
    if info["cuda"]:
        info["gpu_name"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_and_optimiser(n_latents: int, beta: float, lr: float, device: torch.device):
    from pipeline.models.vae import VAEConfig

    torch.manual_seed(0)
    model = VAEConfig(input_shape=FRAME_SHAPE, n_latents=n_latents, beta=beta).build().to(device).train()
    return model, torch.optim.Adam(model.parameters(), lr=lr)


def _train_step(model, optimiser, batch: torch.Tensor, noise: torch.Generator) -> None:
    """One step exactly as :class:`pipeline.models.training.VAETrainer` takes it."""
    loss = model.loss(batch, noise)["total"]
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def step_throughput(n_latents: int, batch_size: int, steps: int, warmup: int, device: torch.device) -> dict:
    """Frames per second of training steps on one random batch (the values do not change the work)."""
    model, optimiser = _model_and_optimiser(n_latents, beta=6.0, lr=1e-3, device=device)
    batch = torch.randn(batch_size, *FRAME_SHAPE, generator=torch.Generator().manual_seed(1)).to(device)
    noise = torch.Generator(device=device).manual_seed(2)
    for _ in range(warmup):
        _train_step(model, optimiser, batch, noise)
    _synchronise(device)
    step_seconds = []
    cpu_start = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        _train_step(model, optimiser, batch, noise)
        _synchronise(device)
        step_seconds.append(time.perf_counter() - start)
    cpu_seconds = time.process_time() - cpu_start
    total = sum(step_seconds)
    return {
        "n_latents": n_latents,
        "batch_size": batch_size,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "seconds": total,
        "median_step_seconds": float(np.median(step_seconds)),
        "frames_per_second": batch_size * steps / total,
        "cpu_seconds": cpu_seconds,
        "frames_per_cpu_second": batch_size * steps / cpu_seconds,
    }


def cpu_section(steps: int, warmup: int) -> dict:
    device = torch.device("cpu")
    runs = []
    for n_latents in CPU_LATENTS:
        for batch_size in CPU_BATCH_SIZES:
            runs.append(step_throughput(n_latents, batch_size, steps, warmup, device))
            print(
                f"cpu: {n_latents} latents, batch {batch_size}: {runs[-1]['frames_per_second']:.0f} frames/s",
                file=sys.stderr,
            )
    paper_like = next(run for run in runs if run["n_latents"] == 128 and run["batch_size"] == 1024)
    train_frames = round(TRAIN_SHARE * FULL_DEAP_FRAMES)
    return {
        "torch_threads": torch.get_num_threads(),
        "data": "random normal frames, one batch reused (the values do not change the work)",
        "runs": runs,
        "paper_preset_epoch_seconds_estimate": train_frames / paper_like["frames_per_second"],
        "paper_preset_300_epochs_hours_estimate": 300 * train_frames / paper_like["frames_per_second"] / 3600,
        "ratio_to_reference": paper_like["frames_per_second"] / REFERENCE["frames_per_second"],
    }


DEMO_LATENTS = 32
CPU_OPTION_BATCHES = (64, 128, 256)


def _option_step_seconds(option: str, batch_size: int, steps: int, warmup: int) -> float:
    """Median seconds of a demo-size training step (32 latents) with one CPU option applied."""
    from pipeline.models.vae import VAEConfig

    torch.manual_seed(0)
    model = VAEConfig(input_shape=FRAME_SHAPE, n_latents=DEMO_LATENTS, beta=6.0).build().train()
    batch = torch.randn(batch_size, *FRAME_SHAPE, generator=torch.Generator().manual_seed(1))
    if option == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    noise = torch.Generator().manual_seed(2)
    bf16 = option == "bf16_autocast"
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(batch, noise)["total"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def cpu_options(steps: int, warmup: int, repeats: int) -> dict:
    """Frames/s of the demo preset's β-VAE step with channels-last, bf16 autocast and other batch sizes.

    The options are interleaved ``repeats`` times and each keeps its median, so that a change in
    the machine's load during the run hits every option alike. torch.compile is not among them:
    on CPU it needs a system C compiler (a fresh install may have none) and its first call took
    minutes on 2 busy cores.
    """
    options = ["fp32", "channels_last"]
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if bf16:
        options.append("bf16_autocast")
    seconds: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        for batch_size in CPU_OPTION_BATCHES:
            for option in options:
                step = _option_step_seconds(option, batch_size, steps, warmup)
                seconds.setdefault((option, batch_size), []).append(step)
    runs = [
        {
            "option": option,
            "batch_size": batch_size,
            "median_step_seconds": float(np.median(values)),
            "frames_per_second": batch_size / float(np.median(values)),
        }
        for (option, batch_size), values in seconds.items()
    ]
    baseline = {run["batch_size"]: run["frames_per_second"] for run in runs if run["option"] == "fp32"}
    for run in runs:
        run["speedup_over_fp32_same_batch"] = run["frames_per_second"] / baseline[run["batch_size"]]
    return {
        "n_latents": DEMO_LATENTS,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16_supported": bool(bf16),
        "repeats": repeats,
        "runs": runs,
    }


def resident_training(epochs: int, device: torch.device, n_frames: int = FULL_DEAP_FRAMES) -> dict:
    """The paper preset's training loop with every frame already on ``device``."""
    from pipeline.models.presets import deap_preset

    preset = deap_preset("paper").learn
    batch_size = preset.train.batch_size
    model, optimiser = _model_and_optimiser(preset.vae.n_latents, preset.vae.beta, preset.train.lr, device)
    frames = torch.randn(n_frames, *FRAME_SHAPE, generator=torch.Generator().manual_seed(1)).to(device)
    n_train, n_val = round(TRAIN_SHARE * n_frames), round(VAL_SHARE * n_frames)
    train, val = frames[:n_train], frames[n_train : n_train + n_val]
    noise = torch.Generator(device=device).manual_seed(2)
    order_generator = torch.Generator(device=device).manual_seed(3)

    def epoch() -> None:
        model.train()
        order = torch.randperm(n_train, device=device, generator=order_generator)
        for start in range(0, n_train, batch_size):
            _train_step(model, optimiser, train[order[start : start + batch_size]], noise)
        model.eval()
        with torch.no_grad():
            for start in range(0, n_val, batch_size):
                model.loss(val[start : start + batch_size], noise)

    epoch()  # warm-up: cuDNN picks its algorithms, the allocator fills its pools
    _synchronise(device)
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    _synchronise(device)
    seconds = time.perf_counter() - start
    return {
        "n_frames": n_frames,
        "train_frames_per_epoch": n_train,
        "val_frames_per_epoch": n_val,
        "epochs": epochs,
        "batch_size": batch_size,
        "n_latents": preset.vae.n_latents,
        "precision": "fp32",
        "seconds": seconds,
        "epoch_seconds": seconds / epochs,
        "train_frames_per_second": n_train * epochs / seconds,
        "end_to_end_seconds_300_epochs": 300 * seconds / epochs,
    }


def pipeline_trainer_epochs(epochs: int, device: torch.device, n_frames: int = FULL_DEAP_FRAMES) -> dict:
    """The pipeline's VAETrainer on host frames (n_trials, 63, 3, 32, 32): streaming included."""
    from pipeline.models.configs import TrainConfig
    from pipeline.models.presets import deap_preset
    from pipeline.models.training import train_vae

    preset = deap_preset("paper").learn
    n_trials = n_frames // 63
    frames = np.random.default_rng(1).standard_normal((n_trials, 63, *FRAME_SHAPE), dtype=np.float32)
    rows = np.random.default_rng(2).permutation(n_trials)
    n_train, n_val = round(TRAIN_SHARE * n_trials), round(VAL_SHARE * n_trials)
    train_config = TrainConfig(
        **{**preset.train.model_dump(mode="json"), "epochs": epochs, "device": str(device)}
    )
    with tempfile.TemporaryDirectory() as checkpoints:
        result = train_vae(
            frames, rows[:n_train], rows[n_train : n_train + n_val], preset.vae, train_config, checkpoints
        )
    epoch_seconds = [record["seconds"] for record in result.history]
    steady = epoch_seconds[1:] or epoch_seconds
    return {
        "epochs": epochs,
        "epoch_seconds": epoch_seconds,
        "train_frames_per_second_after_first_epoch": n_train * 63 / float(np.mean(steady)),
        "trials_per_read": train_config.trials_per_read,
    }


def gpu_section(epochs: int) -> dict:
    if not torch.cuda.is_available():
        return {
            "paper_preset_full_deap": None,
            "pipeline_trainer": None,
            "ratio_to_reference": None,
            "reason": "torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): no GPU result was measured",
        }
    device = torch.device("cuda")
    resident = resident_training(epochs, device)
    print(f"gpu: {resident['train_frames_per_second']:.0f} frames/s", file=sys.stderr)
    return {
        "paper_preset_full_deap": resident,
        "pipeline_trainer": pipeline_trainer_epochs(2, device),
        "ratio_to_reference": resident["train_frames_per_second"] / REFERENCE["frames_per_second"],
        "reason": None,
    }


def demo_estimate(n_subjects: int, vae_epochs: int, classifier_epochs: int) -> dict:
    """Time the demo preset's stages on ``n_subjects`` synthetic subjects and scale them to the preset.

    The stages are those of the Prefect-free DEAP run (:func:`pipeline.runs.deap.run_deap`), each
    step timed as it runs. Preprocessing, normalisation, encoding and one epoch of either model
    grow with the number of trials; training time is one epoch's time × the preset's maximum
    epochs (early stopping can only shorten it). The report is dominated by a fixed number of
    factor figures and is not scaled. Prefect's server start (once per ``eegmi`` call) is not
    included.
    """
    from pipeline.models.presets import deap_preset
    from pipeline.runs.deap import PLAIN_STEPS, run_deap
    from pipeline.runs.preprocess import DeapSource
    from pipeline.sources.synthetic_spec import SyntheticDeapSpec
    from pipeline.store.run_folder import RunFolder

    preset = deap_preset("demo")
    spec = SyntheticDeapSpec(n_subjects=n_subjects)
    measured = preset.learn
    # Patience >= epochs, so exactly the capped number of epochs runs.
    train = measured.train.replace(epochs=vae_epochs, patience=vae_epochs)
    classifier = measured.classifier.replace(epochs=classifier_epochs, patience=classifier_epochs)
    capped = preset.replace(learn=measured.replace(train=train, classifier=classifier))
    seconds: dict[str, float] = {}
    outcomes: dict[str, dict] = {}

    def timed(stage: str, step):
        def run_step(*args, **kwargs):
            start = time.perf_counter()
            outcomes[stage] = step(*args, **kwargs)
            seconds[stage] = time.perf_counter() - start
            return outcomes[stage]

        return run_step

    steps = replace(
        PLAIN_STEPS,
        preprocess=timed("preprocess", PLAIN_STEPS.preprocess),
        split_and_normalise=timed("split_and_normalise", PLAIN_STEPS.split_and_normalise),
        train_vae=timed("vae_training", PLAIN_STEPS.train_vae),
        encode=timed("encode", PLAIN_STEPS.encode),
        train_lstm=timed("lstm_training", PLAIN_STEPS.train_lstm),
        write_report=timed("report", PLAIN_STEPS.write_report),
    )
    with tempfile.TemporaryDirectory() as out_dir:
        run_deap(out_dir, capped, DeapSource(synthetic=spec), steps=steps)
        n_trials = RunFolder(out_dir).n_stored()
    vae_epoch_seconds = outcomes["vae_training"]["epoch_seconds"]
    seconds["vae_training"] = sum(vae_epoch_seconds)

    trial_scale = preset.synthetic_subjects * spec.n_trials / n_trials
    # The steady epoch (the first also pays one-off set-up costs).
    vae_epoch = vae_epoch_seconds[-1]
    scaled = {
        "preprocess": seconds["preprocess"] * trial_scale,
        "split_and_normalise": seconds["split_and_normalise"] * trial_scale,
        "vae_training": vae_epoch * trial_scale * preset.learn.train.epochs,
        "encode": seconds["encode"] * trial_scale,
        "lstm_training": seconds["lstm_training"] / classifier_epochs * trial_scale
        * preset.learn.classifier.epochs,
        "report": seconds["report"],
    }  # fmt: skip
    total = sum(scaled.values())
    return {
        "measured_on": {
            "subjects": n_subjects,
            "trials": n_trials,
            "vae_epochs": vae_epochs,
            "lstm_epochs": classifier_epochs,
            "vae_epoch_seconds": vae_epoch_seconds,
        },
        "measured_seconds": seconds,
        "demo_preset": {
            "subjects": preset.synthetic_subjects,
            "trials": preset.synthetic_subjects * spec.n_trials,
            "vae_max_epochs": preset.learn.train.epochs,
            "lstm_max_epochs": preset.learn.classifier.epochs,
        },
        "scaled_seconds": scaled,
        "end_to_end_seconds_estimate": total,
        "share": {stage: value / total for stage, value in scaled.items()},
        "vae_training_share": scaled["vae_training"] / total,
        "note": "training stages at their maximum epochs (early stopping only shortens them); the report "
        "stage is not scaled (its figures are a fixed cost, its permutation tests grow with the trials); "
        "Prefect's server start is not included",
    }


def run(steps: int, warmup: int, gpu_epochs: int, demo_subjects: int, demo_vae_epochs: int) -> dict:
    torch.set_num_threads(usable_cores())
    loads = [os.getloadavg()]
    results: dict = {
        "benchmark": "train",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average_start": list(loads[0]),
        "cuda": torch.cuda.is_available(),
        "reference": REFERENCE,
    }
    results["cpu"] = cpu_section(steps, warmup)
    results["cpu_options"] = cpu_options(steps, warmup, repeats=3)
    loads.append(os.getloadavg())
    results["gpu"] = gpu_section(gpu_epochs)
    results["demo_estimate"] = demo_estimate(demo_subjects, demo_vae_epochs, classifier_epochs=5)
    loads.append(os.getloadavg())
    results["load_average_end"] = list(loads[-1])
    # Other work competed for the CPU: every time is slower than on an idle machine. Only the load
    # at the start tells: later readings include the benchmark's own threads.
    results["shared_machine_busy"] = loads[0][0] > usable_cores() / 2
    return results


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=_positive_int, default=5, help="timed CPU steps per configuration")
    parser.add_argument("--warmup", type=_positive_int, default=2, help="untimed CPU steps first")
    parser.add_argument(
        "--gpu-epochs", type=_positive_int, default=300, help="timed epochs on the GPU (the paper's 300)"
    )
    parser.add_argument(
        "--demo-subjects", type=_positive_int, default=2, help="synthetic subjects the demo stages run on"
    )
    parser.add_argument("--demo-vae-epochs", type=_positive_int, default=2, help="VAE epochs actually run")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS})")
    parser.add_argument(
        "--only-cpu-options",
        action="store_true",
        help="measure only the CPU options; print them, or write them to --output when given",
    )
    args = parser.parse_args(argv)
    if args.only_cpu_options:
        torch.set_num_threads(usable_cores())
        load = os.getloadavg()
        options = cpu_options(args.steps, args.warmup, repeats=3)
        text = json.dumps(
            {
                "benchmark": "train --only-cpu-options",
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine_info(),
                "load_average_start": load,
                "steps": args.steps,
                "warmup": args.warmup,
                **options,
                "load_average_end": os.getloadavg(),
            },
            indent=2,
        )
        if args.output == RESULTS:  # the full benchmark's file is not replaced by a partial run
            print(text)
        else:
            args.output.write_text(text + "\n")
        return 0
    results = run(args.steps, args.warmup, args.gpu_epochs, args.demo_subjects, args.demo_vae_epochs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    cpu = results["cpu"]
    print(f"wrote {args.output}", file=sys.stderr)
    print(
        f"CPU ({cpu['torch_threads']} threads), 128 latents, batch 1024: "
        f"{math.floor(cpu['runs'][-1]['frames_per_second'])} frames/s; "
        f"demo VAE share ≈ {results['demo_estimate']['vae_training_share']:.0%}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

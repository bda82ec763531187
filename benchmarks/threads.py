"""Fair sharing of the cores: one β-VAE training alone, then two at once, with and without the thread policy.

Each run is a fresh Python process that takes ``--steps`` training steps of the ``demo`` preset's
β-VAE (32 latents, batch 128, 3×32×32 frames; forward, loss, backward, Adam, as
``pipeline.models.training.VAETrainer`` takes them, including its per-step ``keep_fair_share``) after
``--warmup`` untimed steps, and reports their wall-clock time. Scenarios, in this order, repeated
``--repeats`` times (medians are compared):

- ``default_alone``: torch as it starts without the policy (today's behaviour before it: one
  thread per core, OpenMP threads that wait actively), no other run;
- ``policy_alone``: the process applies :mod:`pipeline.threads` before importing torch and
  registers as a running run, as the ``eegmi`` command does, no other run;
- ``policy_pair``: two such processes started together (each starts with every core, and both
  drop to their fair share as soon as each sees the other registered);
- ``default_pair`` (first repetition only, unless ``--skip-default-pair``): two processes without
  the policy, started together; shows what the policy prevents.

The policy runs register in a registry folder of the benchmark's own, so that other ``eegmi``
runs on the machine do not change what "alone" means; other work still loads the machine, and
the load average is recorded beside every scenario. ``--threads N`` gives the policy runs
``--threads N`` instead. Targets (from the project's issue): each run of the pair at most 2.5×
its time alone, and a run alone under the policy at most 10 % slower than without it.

Usage::

    python benchmarks/threads.py                          # writes benchmarks/results/threads.json
    python benchmarks/threads.py --steps 40 --repeats 1 --output /tmp/threads.json   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "threads.json"
ROOT = Path(__file__).resolve().parent.parent
# Variables a run inherits that would pre-empt either scenario's own choice.
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "EEGMI_AUTOMATIC_THREADS",
    "EEGMI_RUN_REGISTRY",
)
TARGETS = {"pair_over_alone_max": 2.5, "policy_alone_over_default_alone_max": 1.10}


def _child(steps: int, warmup: int, use_policy: bool, threads: int | None) -> dict:
    """One training run; prints its result as JSON. Runs in a fresh process."""
    sys.path.insert(0, str(ROOT))
    from pipeline import threads as thread_policy

    policy = None
    if use_policy:  # as the eegmi command does (flows.cli.configure_threads)
        policy = thread_policy.choose_thread_policy(threads)
        thread_policy.start_run(policy)
        thread_policy.apply_thread_environment(policy)
    import torch

    from pipeline.models.vae import VAEConfig

    torch.manual_seed(0)
    model = VAEConfig(input_shape=(3, 32, 32), n_latents=32, beta=6.0).build().train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = torch.randn(128, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.Generator().manual_seed(2)

    def step() -> None:
        thread_policy.keep_fair_share()  # as VAETrainer does, once per step
        loss = model.loss(batch, noise)["total"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for _ in range(warmup):
        step()
    cpu_start, start = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    record = thread_policy.thread_record()
    thread_policy.end_run()
    return {
        "seconds": seconds,
        "step_seconds": seconds / steps,
        "cpu_seconds": time.process_time() - cpu_start,
        "torch_threads_at_end": record["torch_threads"],
        "policy": record.get("thread_policy"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _start(
    steps: int, warmup: int, use_policy: bool, threads: int | None, registry: Path
) -> subprocess.Popen:
    environment = {key: value for key, value in os.environ.items() if key not in _THREAD_VARIABLES}
    environment["EEGMI_RUN_REGISTRY"] = str(registry)
    command = [sys.executable, __file__, "--child", "--steps", str(steps), "--warmup", str(warmup)]
    command += ["--policy"] if use_policy else []
    command += ["--threads", str(threads)] if threads is not None else []
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, text=True)


def _scenario(name: str, n_runs: int, steps: int, warmup: int, use_policy: bool, threads, registry) -> dict:
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    processes = [_start(steps, warmup, use_policy, threads, registry) for _ in range(n_runs)]
    runs = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{name}: a training run failed with exit code {process.returncode}")
        runs.append(json.loads(output))
    result = {
        "runs_at_once": n_runs,
        "policy": use_policy,
        "wall_seconds": time.perf_counter() - started,
        "load_average_1min_before": load_before,
        "runs": runs,
        "slowest_run_seconds": max(run["seconds"] for run in runs),
    }
    print(f"{name}: " + ", ".join(f"{run['seconds']:.2f} s" for run in runs), file=sys.stderr)
    return result


def _fair_share_overhead(registry: Path) -> dict:
    """What following the fair share costs a step: the per-step call when the registry is not due
    for a look, and a look (list the registry, check each process, compare the thread count).
    Medians of 20 batches, in microseconds."""
    from pipeline.threads import FairShare, RunRegistry

    runs = RunRegistry(Path(registry) / "overhead")
    runs.register()
    share = FairShare(runs, cores=2, get_threads=lambda: 2, set_threads=lambda threads: None)
    share.refresh()

    def median_microseconds(calls: int, force: bool) -> float:
        batches = []
        for _ in range(20):
            start = time.perf_counter()
            for _ in range(calls):
                share.refresh(force=force)
            batches.append((time.perf_counter() - start) / calls * 1e6)
        return statistics.median(batches)

    result = {
        "per_step_call_microseconds": median_microseconds(1000, force=False),
        "registry_look_microseconds": median_microseconds(100, force=True),
        "looks_per_second_at_most": 1 / share.interval,
    }
    runs.unregister()
    return result


def run(steps: int, warmup: int, threads: int | None, default_pair: bool, repeats: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from pipeline import __version__
    from pipeline.threads import usable_cores

    load_start = os.getloadavg()
    names = ["default_alone", "policy_alone", "policy_pair"]
    repetitions = []
    with tempfile.TemporaryDirectory(prefix="eegmi-bench-runs-") as registry:
        overhead = _fair_share_overhead(Path(registry))
        for repeat in range(repeats):
            scenarios = {
                "default_alone": _scenario("default_alone", 1, steps, warmup, False, None, registry),
                "policy_alone": _scenario("policy_alone", 1, steps, warmup, True, threads, registry),
                "policy_pair": _scenario("policy_pair", 2, steps, warmup, True, threads, registry),
            }
            if default_pair and repeat == 0:
                scenarios["default_pair"] = _scenario("default_pair", 2, steps, warmup, False, None, registry)
            repetitions.append(scenarios)
    median = {name: statistics.median(r[name]["slowest_run_seconds"] for r in repetitions) for name in names}
    pair_ratio = median["policy_pair"] / median["policy_alone"]
    alone_ratio = median["policy_alone"] / median["default_alone"]
    results = {
        "benchmark": "threads",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/threads.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "usable_cores": usable_cores(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "eegmi": __version__,
        },
        "load_average_start": list(load_start),
        "shared_machine_busy": load_start[0] > usable_cores() / 2,
        "work": {
            "model": "demo preset β-VAE: 32 latents, 3×32×32 frames",
            "batch_size": 128,
            "warmup_steps": warmup,
            "timed_steps": steps,
            "repeats": repeats,
        },
        "fair_share_overhead": overhead,
        "median_slowest_run_seconds": median,
        "repetitions": repetitions,
        "targets": {
            "pair_over_alone": {
                "max_ratio": TARGETS["pair_over_alone_max"],
                "measured_ratio": pair_ratio,
                "pass": pair_ratio <= TARGETS["pair_over_alone_max"],
            },
            "policy_alone_over_default_alone": {
                "max_ratio": TARGETS["policy_alone_over_default_alone_max"],
                "measured_ratio": alone_ratio,
                "pass": alone_ratio <= TARGETS["policy_alone_over_default_alone_max"],
            },
        },
        "load_average_end": list(os.getloadavg()),
    }
    if default_pair:
        first = repetitions[0]
        pair = first["default_pair"]["slowest_run_seconds"]
        results["default_pair_over_default_alone"] = pair / first["default_alone"]["slowest_run_seconds"]
    return results


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=_positive_int, default=120, help="timed steps per run")
    parser.add_argument("--warmup", type=_positive_int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=_positive_int, default=None, help="--threads for the policy runs")
    parser.add_argument("--repeats", type=_positive_int, default=3, help="repetitions (medians compared)")
    parser.add_argument(
        "--skip-default-pair", action="store_true", help="leave out the two runs without the policy"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS})")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.steps, args.warmup, args.policy, args.threads)))
        return 0
    results = run(args.steps, args.warmup, args.threads, not args.skip_default_pair, args.repeats)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    targets = results["targets"]
    print(f"wrote {args.output}", file=sys.stderr)
    print(
        f"pair/alone {targets['pair_over_alone']['measured_ratio']:.2f} (≤ 2.5), policy alone/default alone "
        f"{targets['policy_alone_over_default_alone']['measured_ratio']:.2f} (≤ 1.10)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The paper preset's β-VAE training and encoding at DEAP's full size, on one GPU; needs only torch and numpy.

What it runs (all on random frames held on the device; the values do not change the work):

1. ``variants``: a few epochs of the paper preset's training (128 latents, β = 6, batch 1024,
   Adam 1e-3; each epoch trains on 80 % of the frames in a fresh random order and evaluates
   10 %) in each precision/compilation variant: ``fp32``, ``bf16`` (autocast), ``fp32+compile``
   and ``bf16+compile`` (``torch.compile`` of the encoder and decoder, as
   ``TrainConfig(compile_model=True)`` does). The first epoch of each is a warm-up (cuDNN
   autotuning, compilation) and is reported apart.
2. ``schedule``: the full schedule (``--epochs``, the preset's 300 by default) in the fastest
   variant, then the encoding of every frame (μ and log σ² back to host memory, as the
   pipeline writes them to its store). The goal is VAE training + encoding ≤ 3 minutes on one
   NVIDIA H200; the reference is about 236,000 training frames/s there in fp32.

The network is ``pipeline.models.vae.BetaVAE`` (imported from this repository's ``pipeline``
folder, which needs torch and numpy only), so the benchmark trains what the pipeline trains
without installing the rest of eegmi.

Usage::

    python benchmarks/gpu.py                    # on a GPU: writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --tiny             # a quick check on any machine (CPU too): prints only
    python benchmarks/gpu.py --variants fp32 bf16 --epochs 50

Without CUDA it runs on the CPU only with ``--tiny`` (a full-size CPU run would take hours).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.models.vae import BetaVAE  # noqa: E402  (needs torch and numpy only)

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
FULL_DEAP_FRAMES = 32 * 40 * 63
FRAME_SHAPE = (3, 32, 32)
PAPER = {"n_latents": 128, "beta": 6.0, "batch_size": 1024, "lr": 1e-3, "epochs": 300}
TRAIN_SHARE, VAL_SHARE = 0.8, 0.1
ENCODE_BATCH = 1024
REFERENCE_FRAMES_PER_SECOND = 236_000
GOAL_SECONDS = 180.0
VARIANTS = ("fp32", "bf16", "fp32+compile", "bf16+compile")
TINY = {"frames": 2048, "epochs": 2, "variant_epochs": 2, "batch_size": 256}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Run:
    """One model, optimiser and device-resident data set in one variant."""

    def __init__(self, variant: str, frames: torch.Tensor, batch_size: int, seed: int = 0):
        self.device = frames.device
        self.bf16 = variant.startswith("bf16")
        torch.manual_seed(seed)
        self.model = BetaVAE(FRAME_SHAPE, n_latents=PAPER["n_latents"], beta=PAPER["beta"]).to(self.device)
        if variant.endswith("+compile"):
            self.model.encoder.compile()
            self.model.decoder.compile()
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=PAPER["lr"])
        n_train = round(TRAIN_SHARE * len(frames))
        n_val = round(VAL_SHARE * len(frames))
        self.train, self.val = frames[:n_train], frames[n_train : n_train + n_val]
        self.batch_size = batch_size
        self.noise = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.order = torch.Generator(device=self.device).manual_seed(seed + 2)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def epoch(self) -> float:
        """One training epoch and one validation pass; returns the last training loss."""
        self.model.train()
        order = torch.randperm(len(self.train), device=self.device, generator=self.order)
        for start in range(0, len(self.train), self.batch_size):
            with self._autocast():
                loss = self.model.loss(self.train[order[start : start + self.batch_size]], self.noise)[
                    "total"
                ]
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
        self.model.eval()
        with torch.no_grad(), self._autocast():
            for start in range(0, len(self.val), self.batch_size):
                self.model.loss(self.val[start : start + self.batch_size], self.noise)
        return float(loss)

    def timed_epochs(self, epochs: int) -> dict:
        start = time.perf_counter()
        loss = self.epoch()
        _synchronise(self.device)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(epochs - 1):
            loss = self.epoch()
        _synchronise(self.device)
        steady = (time.perf_counter() - start) / max(epochs - 1, 1) if epochs > 1 else first
        return {
            "epochs": epochs,
            "first_epoch_seconds": first,
            "epoch_seconds": steady,
            "train_frames_per_second": len(self.train) / steady,
            "final_train_loss": loss,
            "finite": bool(np.isfinite(loss)),
        }

    def encode_all(self, frames: torch.Tensor) -> dict:
        """μ and log σ² of every frame, copied to host memory group by group."""
        self.model.eval()
        _synchronise(self.device)
        start = time.perf_counter()
        mu_host = torch.empty((len(frames), PAPER["n_latents"]), dtype=torch.float32)
        logvar_host = torch.empty_like(mu_host)
        with torch.no_grad(), self._autocast():
            for begin in range(0, len(frames), ENCODE_BATCH):
                mu, logvar = self.model.encode(frames[begin : begin + ENCODE_BATCH])
                mu_host[begin : begin + len(mu)] = mu.float().cpu()
                logvar_host[begin : begin + len(mu)] = logvar.float().cpu()
        seconds = time.perf_counter() - start
        return {"frames": len(frames), "seconds": seconds, "frames_per_second": len(frames) / seconds}


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "numpy": np.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=properties.name,
            gpu_memory_bytes=properties.total_memory,
            bf16_supported=torch.cuda.is_bf16_supported(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


def run(n_frames: int, epochs: int, variant_epochs: int, batch_size: int, variants: list[str]) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {
        "benchmark": "gpu",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(device),
        "ran_on_gpu": device.type == "cuda",
        "reference": {
            "train_frames_per_second": REFERENCE_FRAMES_PER_SECOND,
            "device": "one NVIDIA H200",
            "precision": "fp32",
            "batch_size": 1024,
        },
        "goal": {"what": "VAE training (full schedule) + encoding of every frame", "seconds": GOAL_SECONDS},
        "data": {
            "frames": n_frames,
            "train_frames_per_epoch": round(TRAIN_SHARE * n_frames),
            "val_frames_per_epoch": round(VAL_SHARE * n_frames),
            "frame_shape": list(FRAME_SHAPE),
            "batch_size": batch_size,
            "held_on": str(device),
        },
    }
    start = time.perf_counter()
    frames = torch.randn(n_frames, *FRAME_SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    _synchronise(device)
    results["data"]["upload_seconds"] = time.perf_counter() - start

    measured = {}
    for variant in variants:
        if variant.startswith("bf16") and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            measured[variant] = {"skipped": "this GPU has no bf16"}
            continue
        try:
            measured[variant] = Run(variant, frames, batch_size).timed_epochs(variant_epochs)
        except Exception as error:  # a variant that cannot run here (e.g. no compiler) is reported, not fatal
            measured[variant] = {"failed": f"{type(error).__name__}: {error}"[:500]}
        print(f"{variant}: {json.dumps(measured[variant])}", file=sys.stderr)
    results["variants"] = measured
    usable = {name: value for name, value in measured.items() if value.get("finite")}
    if not usable:
        results["schedule"] = None
        return results
    best = max(usable, key=lambda name: usable[name]["train_frames_per_second"])
    chosen = Run(best, frames, batch_size)
    training = chosen.timed_epochs(epochs)
    training["total_seconds"] = training["first_epoch_seconds"] + training["epoch_seconds"] * (epochs - 1)
    encoding = chosen.encode_all(frames)
    total = training["total_seconds"] + encoding["seconds"]
    results["schedule"] = {
        "variant": best,
        "training": training,
        "encoding": encoding,
        "training_plus_encoding_seconds": total,
        "goal_met": total <= GOAL_SECONDS if device.type == "cuda" else None,
        "ratio_to_reference": training["train_frames_per_second"] / REFERENCE_FRAMES_PER_SECOND,
    }
    results["machine"]["load_average_end"] = list(os.getloadavg())
    return results


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="2,048 frames, 2 epochs, batch 256: a quick check"
    )
    parser.add_argument("--frames", type=_positive_int, default=None, help=f"default {FULL_DEAP_FRAMES}")
    parser.add_argument("--epochs", type=_positive_int, default=None, help="full schedule (default 300)")
    parser.add_argument(
        "--variant-epochs", type=_positive_int, default=None, help="epochs per variant (default 4)"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=None, help="default 1024")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--output", type=Path, default=None, help=f"JSON file (default {RESULTS} on a GPU)")
    args = parser.parse_args(argv)
    size = (
        TINY
        if args.tiny
        else {"frames": FULL_DEAP_FRAMES, "epochs": 300, "variant_epochs": 4, "batch_size": 1024}
    )
    if not args.tiny and not torch.cuda.is_available():
        print("gpu.py: no CUDA device here; use --tiny for a quick check on the CPU", file=sys.stderr)
        return 2
    results = run(
        args.frames or size["frames"],
        args.epochs or size["epochs"],
        args.variant_epochs or size["variant_epochs"],
        args.batch_size or size["batch_size"],
        args.variants,
    )
    output = args.output or (RESULTS if results["ran_on_gpu"] and not args.tiny else None)
    text = json.dumps(results, indent=2, allow_nan=False)
    if output is None:
        print(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
        print(f"wrote {output}", file=sys.stderr)
    schedule = results["schedule"]
    if schedule is not None:
        rate = schedule["training"]["train_frames_per_second"]
        total = schedule["training_plus_encoding_seconds"]
        print(
            f"{schedule['variant']}: {rate:.0f} training frames/s; training + encoding {total:.0f} s "
            f"(goal ≤ {GOAL_SECONDS:.0f} s on one H200)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which β-VAE settings keep the structure planted in the synthetic DEAP?

For each setting (decoder variance, β, KL warm-up epochs) the script trains the demo preset's
β-VAE on one synthetic store and records: the number of influential factors (Î > 0.05 nats on
the training trials), total Î, the validation scores the β sweep ranks by, the variance the
influential factors explain, and, for every planted rhythm, the influential factor whose
electrode blocks in the rhythm's band best match it (Jaccard; >= 0.5 counts as carried).

    .venv/bin/python benchmarks/factor_structure.py --subjects 6 \
        --settings unit:6:0 learned:6:0 unit:2:0 learned:2:0 learned:6:3 \
        --output benchmarks/results/factor_structure.json

``--scenario planted|null|confound`` selects the generator's scenario (default planted).
The store is built once per (subjects, seed, scenario) in ``--work-dir`` and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.analysis.blocks import (
    DEFAULT_TRAVERSAL_VALUES,
    block_jaccard,
    electrode_change,
    find_blocks,
    traverse_factor,
)
from pipeline.analysis.factors import FactorRules, seed_latents
from pipeline.analysis.mi import estimate_mi, influential_factors
from pipeline.models.configs import TrainConfig
from pipeline.models.encoding import encode_frames
from pipeline.models.learn import (
    LearnConfig,
    fit_store_normalisation,
    make_split,
    reconstruction_mse,
    store_normaliser,
    train_store_vae,
    vae_validation_scores,
)
from pipeline.models.presets import deap_preset
from pipeline.models.vae import VAEConfig
from pipeline.signal.config import PreprocessConfig
from pipeline.signal.imaging import deap_imaging_operator
from pipeline.signal.montage import neighbour_graph
from pipeline.sources.synthetic import generate_subject, ground_truth
from pipeline.sources.synthetic_spec import SyntheticDeapSpec, scenario_spec
from pipeline.sources.trials import DEAP_CHANNELS
from pipeline.store.frames import FrameStore
from pipeline.store.ingest_eeg import deap_store_spec, ingest_trials, open_store
from pipeline.store.run_folder import RunFolder


def _store(work_dir: Path, spec: SyntheticDeapSpec) -> FrameStore:
    config = PreprocessConfig()
    store = open_store(str(work_dir), deap_store_spec(config, "synthetic"))
    if len(store.committed_rows()) < spec.n_subjects * spec.n_trials:
        for subject in range(1, spec.n_subjects + 1):
            ingest_trials(store, generate_subject(spec, subject), config)
    return RunFolder(work_dir).open_store(writable=True)


def _carried(model, train_mu, influential, truth, rules: FactorRules) -> list[dict]:
    operator = deap_imaging_operator(PreprocessConfig())
    adjacency = neighbour_graph(operator.positions_2d)
    seeds = seed_latents(train_mu, rules.n_seed_frames, 0)

    def decode(latents):
        with torch.no_grad():
            return model.decode(torch.from_numpy(latents)).numpy()

    blocks = {}
    for index in influential:
        traversal = traverse_factor(decode, seeds, int(index), DEFAULT_TRAVERSAL_VALUES)
        change = electrode_change(traversal, operator.electrode_pixels, mask=operator.mask)
        blocks[int(index)] = find_blocks(
            change,
            adjacency,
            DEAP_CHANNELS,
            PreprocessConfig().band_names,
            relative_threshold=rules.block_relative_threshold,
            min_change=rules.block_min_change,
        )
    results = []
    for effect in truth["effects"]:
        best = {"factor": None, "jaccard": 0.0}
        for index, found in blocks.items():
            electrodes = sorted({e for b in found if b["band"] == effect["band"] for e in b["electrodes"]})
            if electrodes:
                jaccard = block_jaccard(electrodes, effect["electrodes"])
                if jaccard > best["jaccard"]:
                    best = {"factor": index, "jaccard": jaccard}
        results.append(
            {
                "label": effect["label"],
                "role": effect.get("role"),
                "band": effect["band"],
                "electrodes": effect["electrodes"],
                **best,
                "carried": best["jaccard"] >= 0.5,
            }
        )
    return results


def measure(store: FrameStore, truth: dict, setting: str, subjects: int, work_dir: Path) -> dict:
    variance, beta, warmup = setting.split(":")
    preset = deap_preset("demo")
    learn = LearnConfig(
        vae=VAEConfig(
            input_shape=(3, 32, 32),
            n_latents=preset.learn.vae.n_latents,
            beta=float(beta),
            decoder_variance=variance,
        ),
        train=TrainConfig(
            **{**preset.learn.train.model_dump(mode="json"), "kl_warmup_epochs": int(warmup), "device": "cpu"}
        ),
        classifier=preset.learn.classifier,
    )
    split = make_split(store, "trial", 0, learn.class_threshold)
    fit_store_normalisation(store, split)
    started = time.perf_counter()
    result = train_store_vae(store, learn, work_dir / f"checkpoints-{setting.replace(':', '-')}")
    seconds = time.perf_counter() - started
    model = result.model.cpu().eval()
    normalise = store_normaliser(store)
    train_mu, train_logvar = encode_frames(model, store.frames, split.train, 1024, normalise)
    estimate = estimate_mi(train_mu, train_logvar)
    influential = influential_factors(estimate, 0.05)
    keep = np.zeros(estimate.n_factors, dtype=bool)
    keep[influential] = True
    mse_top = reconstruction_mse(model, store, split.val, keep)
    mse_none = reconstruction_mse(model, store, split.val, np.zeros(estimate.n_factors, dtype=bool))
    rules = FactorRules()
    return {
        "setting": {"decoder_variance": variance, "beta": float(beta), "kl_warmup_epochs": int(warmup)},
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "training_seconds": seconds,
        "n_influential": int(influential.size),
        "influential_nats": [round(float(estimate.per_factor_nats[i]), 4) for i in influential],
        "total_mi_nats": float(estimate.total_nats),
        "validation": vae_validation_scores(model, store, split.val),
        "influential_variance_explained": 1.0 - mse_top / mse_none,
        "planted": _carried(model, train_mu, influential, truth, rules),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", default="planted", choices=("planted", "null", "confound"))
    parser.add_argument("--settings", nargs="+", default=["unit:6:0", "learned:6:0"])
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    spec = scenario_spec(args.scenario, n_subjects=args.subjects, seed=args.seed)
    with tempfile.TemporaryDirectory() as temporary:
        work_dir = Path(args.work_dir or temporary)
        work_dir.mkdir(parents=True, exist_ok=True)
        store = _store(work_dir, spec)
        truth = ground_truth(spec)
        runs = []
        for setting in args.settings:
            runs.append(measure(store, truth, setting, args.subjects, work_dir))
            print(json.dumps(runs[-1]), flush=True)
    result = {
        "machine": {
            "cpu_affinity": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
            "torch_threads": torch.get_num_threads(),
        },
        "spec": spec.to_dict(),
        "runs": runs,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

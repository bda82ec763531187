"""Trains a small β-VAE from a .npy frame file; a test kills this process mid-run and resumes.

Usage: python train_script.py FRAMES.npy CHECKPOINT_DIR SETTINGS.json
SETTINGS.json holds ``model_config``, ``train_config``, ``train_rows`` and ``val_rows``.
Prints ``epoch <n>`` (flushed) after each epoch's checkpoint is on disk.
"""

import json
import sys

import numpy as np
import torch

from pipeline.models.configs import TrainConfig
from pipeline.models.training import train_vae
from pipeline.models.vae import VAEConfig


def main(frames_path: str, checkpoint_dir: str, settings_path: str) -> None:
    torch.set_num_threads(1)
    with open(settings_path) as handle:
        settings = json.load(handle)
    train_vae(
        np.load(frames_path, mmap_mode="r"),
        settings["train_rows"],
        settings["val_rows"],
        VAEConfig.model_validate(settings["model_config"]),
        TrainConfig.model_validate(settings["train_config"]),
        checkpoint_dir,
        resume=True,
        progress=lambda record: print(f"epoch {record['epoch']}", flush=True),
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])

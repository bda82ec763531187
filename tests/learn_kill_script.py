"""Train a frame store's β-VAE, printing one line per finished epoch, so a test can kill it mid-run.

Usage::

    python tests/learn_kill_script.py STORE CHECKPOINT_DIR LEARN_CONFIG_JSON

Each line is ``epoch <n> <history record as JSON>``, printed after that epoch's checkpoint is
written.
"""

from __future__ import annotations

import json
import sys

import torch

from pipeline.models.learn import LearnConfig, train_store_vae
from pipeline.store.frames import FrameStore


def main(argv: list[str]) -> int:
    store_path, checkpoint_dir, config_json = argv
    # One thread, as in the test process: the killed-and-resumed run must match an uninterrupted
    # one bitwise, and reductions split over threads may round differently.
    torch.set_num_threads(1)
    config = LearnConfig.model_validate(json.loads(config_json))

    def report(record: dict) -> None:
        print(f"epoch {record['epoch']} {json.dumps(record)}", flush=True)

    train_store_vae(FrameStore.open(store_path), config, checkpoint_dir, progress=report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Learn and rank on a frame store: split, normalise, train the β-VAE, encode, Î, classify, top-k.

Each function reads what it needs from the store (or a run folder) and returns small results,
so a flow can run them as separate tasks and a notebook can call them one by one.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.analysis.mi import MIAccumulator, MIEstimate
from pipeline.analysis.splits import Split, emotion_classes, split_by_subject, split_by_trial
from pipeline.errors import InputError
from pipeline.models.checkpoint import load_checkpoint
from pipeline.models.classifier import save_classifier, train_classifier
from pipeline.models.configs import ClassifierConfig, TrainConfig
from pipeline.models.encoding import masked_reconstruction_mse, read_frames
from pipeline.models.sequence import evaluate_classifier
from pipeline.models.state import can_resume_training
from pipeline.models.training import TrainResult, train_vae
from pipeline.models.vae import BetaVAE, VAEConfig
from pipeline.progress import Progress
from pipeline.signal.config import PreprocessConfig
from pipeline.signal.imaging import deap_imaging_operator
from pipeline.signal.normalise import BandNormalisation, fit_band_normalisation
from pipeline.store.frames import FrameStore
from pipeline.store.layout import LATENTS_GROUP
from pipeline.store.run_folder import RunFolder
from pipeline.validators import ConfigModel, NonNegativeInt, PositiveInt, RealNumber

Normaliser = Callable[[np.ndarray], np.ndarray]


class LearnConfig(ConfigModel):
    """Everything that decides the learned factors and their evaluation, recorded in report.json."""

    vae: VAEConfig
    train: TrainConfig
    classifier: ClassifierConfig
    split_protocol: str = "trial"
    split_seed: NonNegativeInt = 0
    class_threshold: RealNumber = 5.0
    encode_batch_size: PositiveInt = 1024


def store_classes(store: FrameStore, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Committed rows of the store and their emotion class (high = score > ``threshold``)."""
    return store.committed_rows(), emotion_classes(store.labels, threshold)


def content_order(store: FrameStore) -> np.ndarray:
    """Positions of the committed rows sorted by (subject, source file SHA-256, trial).

    Parallel ingestion stores files in whichever order their tasks finish, so row numbers differ
    between two ingests of the same data; anything seeded that walks the trials follows this
    order instead, so that a run's split, batches and results depend on the data and the seed only.
    """
    return np.lexsort((store.trial, store.source_sha256, store.subject))


def make_split(store: FrameStore, protocol: str, seed: int, threshold: float) -> Split:
    """Split the store's trials; indices in the result are store rows, whole trials only.

    Each part lists its rows in :func:`content_order`, which the seeded shuffles of training follow.
    """
    rows, classes = store_classes(store, threshold)
    order = content_order(store)
    rows, classes, subjects = rows[order], classes[order], store.subject[order]
    if protocol == "trial":
        positions = split_by_trial(classes, seed=seed)
    elif protocol == "subject":
        positions = split_by_subject(subjects, seed=seed)
    else:
        raise InputError("split_protocol", f"{protocol!r} must be 'trial' or 'subject'")
    return Split(
        train=rows[positions.train],
        val=rows[positions.val],
        test=rows[positions.test],
        protocol=protocol,
        seed=seed,
    )


# A store's frames never change their preprocessing, so its mask is computed once per handle.
_FRAME_MASKS: weakref.WeakKeyDictionary[FrameStore, np.ndarray] = weakref.WeakKeyDictionary()


def frame_mask(store: FrameStore) -> np.ndarray:
    """Pixels that carry data (read-only): the scalp (electrodes' convex hull) for EEG, every pixel
    for images. Computed from the store's attrs on a handle's first call only."""
    mask = _FRAME_MASKS.get(store)
    if mask is None:
        attrs = store.attrs
        if "preprocessing" in attrs:
            mask = deap_imaging_operator(PreprocessConfig.model_validate(attrs["preprocessing"])).mask
        else:
            mask = np.ones(store.frame_shape[-2:], dtype=bool)
            mask.flags.writeable = False
        _FRAME_MASKS[store] = mask
    return mask


PROTOCOLS: tuple[str, ...] = ("trial", "subject")
RUN_PROTOCOLS: tuple[str, ...] = ("trial", "subject", "both")


def run_protocols(protocol: str) -> tuple[str, ...]:
    """The protocols a run trains, main one first: ``both`` is the trial protocol, then the subject one."""
    if protocol not in RUN_PROTOCOLS:
        raise InputError("protocol", f"{protocol!r} must be one of {', '.join(RUN_PROTOCOLS)}")
    return PROTOCOLS if protocol == "both" else (protocol,)


def latent_set(slot: str | None) -> str:
    """The store's latent group of a protocol slot (see :func:`fit_store_normalisation`)."""
    return LATENTS_GROUP if slot is None else f"{LATENTS_GROUP}_{slot}"


def seed_latent_set(model_seed: int, reference_seed: int) -> str:
    """The store's latent group of one seed of a seed ensemble (``--seeds``).

    The reference seed (the run's ``--seed``) keeps the main ``latents/``, so a run of one seed
    is laid out as before; seed k of the others writes ``latents_seed<k>/``.
    """
    return LATENTS_GROUP if model_seed == reference_seed else f"{LATENTS_GROUP}_seed{model_seed}"


def _check_slot(slot: str | None) -> None:
    if slot is not None and slot not in PROTOCOLS:
        raise InputError("slot", f"{slot!r} must be None (the main protocol) or one of {PROTOCOLS}")


def _slot_attrs(store: FrameStore, slot: str | None) -> dict:
    _check_slot(slot)
    attrs = store.attrs
    if slot is None:
        return attrs
    return attrs.get("protocols", {}).get(slot, {})


def secondary_protocols(store: FrameStore) -> list[str]:
    """Protocols trained beside the main one (``--protocol both``), each in its own slot."""
    return sorted(store.attrs.get("protocols", {}))


def fit_store_normalisation(store: FrameStore, split: Split, slot: str | None = None) -> BandNormalisation:
    """Band statistics of the training trials only, written to the store attrs with their split.

    ``slot`` None is the run's main protocol: attrs ``split`` and ``normalisation``, latents in
    ``latents/``. A protocol name (``"subject"`` beside a main trial protocol) keeps its own
    split and statistics in attrs ``protocols/<slot>`` and its latents in ``latents_<slot>/``,
    so the two protocols never share a normalisation or a model.
    """
    _check_slot(slot)
    normalisation = fit_band_normalisation(
        store.frames,
        frame_mask(store),
        fitted_on={"split": "train", "protocol": split.protocol, "seed": split.seed},
        trials=split.train,
        where=f"{store.path}/frames",
    )
    values = {"normalisation": normalisation.to_dict(), "split": split.to_dict()}
    if slot is None:
        store.update_attrs(values)
    else:
        store.update_attrs({"protocols": {**store.attrs.get("protocols", {}), slot: values}})
    return normalisation


def keep_secondary_protocols(store: FrameStore, slots: list[str]) -> None:
    """Forget the slots of protocols this run does not train: their attrs and their latents."""
    for slot in slots:
        _check_slot(slot)
    recorded = store.attrs.get("protocols", {})
    for slot in set(recorded) - set(slots):
        store.clear_latents(latent_set(slot))
    if set(recorded) - set(slots):
        store.update_attrs({"protocols": {slot: recorded[slot] for slot in slots if slot in recorded}})


def store_normaliser(store: FrameStore, slot: str | None = None) -> Normaliser:
    """The model-input transform recorded in the store (fitted by :func:`fit_store_normalisation`)."""
    attrs = _slot_attrs(store, slot)
    if "normalisation" not in attrs:
        raise InputError(store.path, "has no normalisation statistics yet; run the learn stage first")
    normalisation = BandNormalisation.from_dict(attrs["normalisation"])
    mask = frame_mask(store)
    return lambda block: normalisation.apply(block, mask)


def stored_split(store: FrameStore, slot: str | None = None) -> Split:
    attrs = _slot_attrs(store, slot)
    if "split" not in attrs:
        raise InputError(store.path, "has no split yet; run the learn stage first")
    return Split.from_dict(attrs["split"])


def train_split_vae(
    frames,
    split: Split,
    vae: VAEConfig,
    train: TrainConfig,
    checkpoint_dir: str | Path,
    *,
    normalise: Normaliser | None = None,
    resume: bool = False,
    reuse: bool = False,
    progress: Callable[[dict], None] | None = None,
    steps: Progress | None = None,
) -> TrainResult:
    """The β-VAE training step of every run, EEG or images: train on the frames of ``split.train``,
    stop early on ``split.val``, checkpoint in ``checkpoint_dir``.

    ``frames`` are the store's (or those of the split's rows held in memory), ``normalise`` the
    model-input transform (an EEG protocol's band normalisation; none for images). With
    ``reuse``, a training state of this model on this split (finished, or killed midway) is
    continued whatever ``resume`` says, so a finished one trains no epoch. ``progress`` gets
    each epoch's history dict, ``steps`` the steps within an epoch.
    """
    if reuse and can_resume_training(checkpoint_dir, vae, train, split.train, split.val):
        resume = True
    return train_vae(
        frames,
        split.train,
        split.val,
        vae,
        train,
        checkpoint_dir,
        normalise=normalise,
        resume=resume,
        progress=progress,
        steps=steps,
    )


def train_store_vae(
    store: FrameStore,
    config: LearnConfig,
    checkpoint_dir: str | Path,
    resume: bool = False,
    progress: Callable[[dict], None] | None = None,
    steps: Progress | None = None,
    slot: str | None = None,
) -> TrainResult:
    """:func:`train_split_vae` on a protocol's stored split, with its stored normalisation."""
    return train_split_vae(
        store.frames,
        stored_split(store, slot),
        config.vae,
        config.train,
        checkpoint_dir,
        normalise=store_normaliser(store, slot),
        resume=resume,
        progress=progress,
        steps=steps,
    )


def with_model_seed(config: LearnConfig, model_seed: int) -> LearnConfig:
    """``config`` with the β-VAE trained from seed ``model_seed`` (split and classifier unchanged)."""
    return config.replace(train=config.train.replace(seed=int(model_seed)))


def can_continue_training(
    store: FrameStore, config: LearnConfig, checkpoint_dir: str | Path, slot: str | None = None
) -> bool:
    """Whether ``checkpoint_dir`` holds a training state of this model on this split (finished or
    killed midway), so that resuming it reuses its epochs instead of training afresh."""
    split = stored_split(store, slot)
    return can_resume_training(checkpoint_dir, config.vae, config.train, split.train, split.val)


def checkpoint_model_id(checkpoint_dir: str | Path, which: str = "best") -> str:
    """Identifies the trained weights, so latents of two models never mix in one store.

    A digest of the model's configuration and tensors, not of the checkpoint files: a resumed
    run re-saves the same weights under a new file name and keeps the id (so stored latents stay
    valid), while any changed weight changes it.

    Raises
    ------
    InputError
        If the checkpoint is missing or malformed, or holds no model configuration.
    """
    tensors, metadata = load_checkpoint(checkpoint_dir, which)
    if "model_config" not in metadata:
        raise InputError(Path(checkpoint_dir) / f"{which}.json", "lacks the model configuration")
    digest = hashlib.sha256(json.dumps(metadata["model_config"], sort_keys=True).encode())
    # "model." holds the weights; a training state's optimizer and best-so-far tensors are not the model.
    for name in sorted(key for key in tensors if key.startswith("model.")):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def store_mi(
    store: FrameStore, rows: np.ndarray, trials_per_read: int = 64, group: str = LATENTS_GROUP
) -> MIEstimate:
    """Î(X;Z_j) over every frame of ``rows``, streamed from the latents of ``group`` (default: the
    main protocol's)."""
    accumulator = MIAccumulator()
    for start in range(0, len(rows), trials_per_read):
        mu, logvar = store.read_latents(rows[start : start + trials_per_read], group=group)
        accumulator.update(mu, logvar)
    return accumulator.result()


def _row_classes(store: FrameStore, rows: np.ndarray, threshold: float) -> np.ndarray:
    committed, classes = store_classes(store, threshold)
    return classes[np.searchsorted(committed, rows)]


def classifier_dir(out_dir: str | Path, slot: str | None = None) -> Path:
    """Where the LSTM of a protocol slot is saved: ``checkpoints/`` or ``checkpoints/<slot>/``."""
    _check_slot(slot)
    return RunFolder(out_dir).classifier_dir(slot)


def train_store_classifier(
    store: FrameStore,
    config: LearnConfig,
    out_dir: str | Path,
    progress=None,
    slot: str | None = None,
    group: str | None = None,
):
    """Train the LSTM on the training trials' μ sequences; report test accuracy, chance and confusion.

    ``group`` reads the latents of another seed of the slot's protocol (default: the slot's own).
    """
    split = stored_split(store, slot)
    group = latent_set(slot) if group is None else group
    sequences = {
        part: store.read_latents(getattr(split, part), group=group)[0] for part in ("train", "val", "test")
    }
    classes = {part: _row_classes(store, getattr(split, part), config.class_threshold) for part in sequences}
    has_val = classes["val"].size > 0
    result = train_classifier(
        sequences["train"],
        classes["train"],
        sequences["val"] if has_val else None,
        classes["val"] if has_val else None,
        config=config.classifier,
        progress=progress,
    )
    save_classifier(result.model, classifier_dir(out_dir, slot), "classifier")
    evaluation = evaluate_classifier(result.model, sequences["test"], classes["test"])
    return result.model, evaluation


def reconstruction_mse(
    model: BetaVAE, store: FrameStore, rows: np.ndarray, keep_mask: np.ndarray, trials_per_read: int = 16
) -> float:
    """Mean squared error per scalp pixel (the main protocol's normalised units) of the frames of
    ``rows``, decoded from μ with the factors outside ``keep_mask`` set to zero (see
    :func:`pipeline.models.encoding.masked_reconstruction_mse`)."""
    return masked_reconstruction_mse(
        model,
        store.frames,
        rows,
        keep_mask,
        normalise=store_normaliser(store),
        pixel_mask=frame_mask(store),
        trials_per_read=trials_per_read,
    )


def vae_validation_scores(
    model: BetaVAE, store: FrameStore, rows: np.ndarray, trials_per_read: int = 16
) -> dict:
    """How well a trained β-VAE explains held-out trials, comparable across β and decoder variance.

    Returns
    -------
    dict
        ``negative_elbo`` (nats per frame: −log p(x|z) at the posterior mean plus the KL to the
        prior, with weight 1 whatever the model's β: the bound on the held-out likelihood),
        ``reconstruction_nll`` and ``kl`` (its two terms), and ``mse`` (mean squared error per
        scalp pixel, normalised units, decoded from μ).
    """
    rows = np.asarray(rows)
    if rows.ndim != 1 or rows.size == 0:
        raise InputError(f"{store.path} rows", f"shape {rows.shape}; expected a non-empty 1-D array of rows")
    normalise = store_normaliser(store)
    mask = torch.from_numpy(frame_mask(store).copy())
    device = next(model.parameters()).device
    sums = {"reconstruction_nll": 0.0, "kl": 0.0, "squared_error": 0.0}
    n_frames, n_pixels = 0, 0
    with torch.no_grad():
        for start in range(0, len(rows), trials_per_read):
            block = read_frames(store.frames, rows[start : start + trials_per_read], normalise)
            frames = torch.from_numpy(block.reshape(-1, *block.shape[2:])).to(device)
            mu, logvar = model.encode(frames)
            parameters = model.decode_parameters(mu)
            sums["reconstruction_nll"] += float(model.negative_log_likelihood(frames, parameters).sum())
            kl = 0.5 * (mu.float() ** 2 + torch.exp(logvar.float()) - 1.0 - logvar.float())
            sums["kl"] += float(kl.sum(dtype=torch.float64))
            error = ((model.decode(mu) - frames) ** 2).cpu()
            sums["squared_error"] += float(error[..., mask].sum(dtype=torch.float64))
            n_frames += frames.shape[0]
            n_pixels += int(error[..., mask].numel())
    reconstruction, kl = sums["reconstruction_nll"] / n_frames, sums["kl"] / n_frames
    return {
        "negative_elbo": reconstruction + kl,
        "reconstruction_nll": reconstruction,
        "kl": kl,
        "mse": sums["squared_error"] / n_pixels,
    }

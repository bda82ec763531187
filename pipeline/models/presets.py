"""Named run settings, one table for every data set: ``demo`` fits a 2-core laptop in minutes,
``paper`` follows Liu et al.

DEAP: the presets differ in scale (subjects, latents, epochs, batch sizes); the model (β = 6,
learned decoder variance, LSTM 128) and the optimisers are shared.

Images (MNIST, CelebA): one model per data set in every preset.

A preset changes only how much data is used and how long the β-VAE trains; the architecture
(the paper's, appendix A.4), the number of latents, β, the likelihood and the optimiser are the
same in ``demo`` and ``paper``, so a demo report differs from a paper run in precision, not in kind.

Likelihoods:

- MNIST: ``"bernoulli"`` on pixels in [0, 1], with β = 1 and 128 latents. The paper's table A.4
  names a Gaussian; with unit variance its -log p(x|z) is half the squared error, too weak
  against the KL term on small data: on the embedded digits the plain VAE collapsed (KL 0.00
  nats after 6 demo epochs, every factor at the prior), leaving nothing to rank. The Bernoulli
  likelihood is MNIST's usual one and trains reliably in the demo budget.
- CelebA: ``"gaussian-mixture"`` (two Gaussians per pixel), the paper's choice, with 32 latents
  (the paper trains 128 or 32) and β = 1.
- CelebA's procedural stand-in (used without a data folder; 4 true factors, see
  :mod:`pipeline.sources.procedural`): a unit-variance Gaussian with β = 0.3 and learning rate
  1e-3. A per-pixel mixture explains "ellipse here or not" without any latent: the VAE ignored
  every factor (KL 0.04 nats or less, 0 of 4 true factors found in the demo).

Calibration of the stand-in: the demo's data and training (2000 images, 1600 of them for
training, 32 latents, batches of 16) on seeds 0, 1 and 2, counting the factors with Î above
0.05 nats on the 200 test images:

- β = 0.3, learning rate 1e-3, 30 epochs (the settings used): 4, 4, 4. Î of the four 2.27 to
  1.88, 2.25 to 2.03 and 2.25 to 1.66 nats, the fifth 0.007 or less; on seed 2 each true
  factor is one latent (correlation ratio 0.71 to 0.93 with its factor, 0.16 or less with
  the others). The same at learning rate 2e-3 gave 4, 0 (no factor learnt), 5 on seeds
  0, 1, 2 and 5 on seed 3.
- Earlier settings, all at learning rate 2e-3. β = 0.6, 20 epochs (the former preset): 9 and 0
  on seeds 0 and 2 (at 30 epochs 5 and 0), radius spread over many weak latents, or none
  learnt. The same with a radius of 0.14 to 0.22: 9 and 13; at β = 0.3: 3 and 4, radius
  unused. The former images (smaller ellipse with a sharp edge moving over 40 % of each axis,
  hue around most of the circle) at β = 0.6: 6 in the demo, 3 on seed 0 with another split;
  the ellipse moving over half the frame: 4, 4, 0 on seeds 0, 1, 2, the four being x and y
  spread over four latents with radius and hue unused.
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

from pydantic import Field, model_validator

from pipeline.analysis.blocks import DEFAULT_TRAVERSAL_VALUES
from pipeline.analysis.factors import FactorRules
from pipeline.analysis.mi import DEFAULT_THRESHOLD_NATS
from pipeline.errors import InputError
from pipeline.models.configs import ClassifierConfig, TrainConfig
from pipeline.models.learn import RUN_PROTOCOLS, LearnConfig
from pipeline.models.vae import VAEConfig
from pipeline.sources.images import check_whole_number
from pipeline.validators import (
    ConfigModel,
    NonNegativeInt,
    NonNegativeNumber,
    PositiveInt,
    PositiveNumber,
    RealNumber,
)

PRESET_NAMES: tuple[str, ...] = ("demo", "paper")
DEAP_FRAME_SHAPE = (3, 32, 32)
MNIST_IMAGE_SHAPE = (1, 28, 28)
CELEBA_IMAGE_SHAPE = (3, 64, 64)
IMAGE_DATASETS: tuple[str, ...] = ("mnist", "celeba")
# The paper estimates Î and draws its tables on 10,000 test images (appendix A.1, A.2).
PAPER_EVAL_IMAGES = 10_000


def check_preset_name(name: str) -> str:
    """``name`` if it names a preset, else an InputError listing them."""
    if name not in PRESET_NAMES:
        raise InputError("preset", f"{name!r} is not a preset; choose one of {PRESET_NAMES}")
    return name


class DeapPreset(ConfigModel):
    """A DEAP run's settings; ``synthetic_subjects`` applies only when no data folder is given.

    ``protocol`` is ``trial``, ``subject`` or ``both`` (each protocol with its own split,
    normalisation and models). ``betas`` lists the β values of a sweep: with more than one,
    one β-VAE is trained per value and :func:`pipeline.analysis.sweep.choose_beta` keeps one
    (``learn.vae.beta`` is then the chosen value only after the sweep); left empty, it is
    the model's β.
    """

    name: str
    synthetic_subjects: PositiveInt
    learn: LearnConfig
    rules: FactorRules
    protocol: Literal[RUN_PROTOCOLS] = "trial"
    betas: tuple[PositiveNumber, ...] = ()

    @model_validator(mode="after")
    def _sweep(self) -> DeapPreset:
        betas = self.betas or (self.learn.vae.beta,)
        if len(set(betas)) != len(betas):
            raise ValueError(f"beta: {list(betas)} lists a value twice")
        object.__setattr__(self, "betas", betas)  # frozen: filled in once, while being built
        return self


class SplitCaps(ConfigModel):
    """At most this many images of each part (train, val, test) are used; None: all of them."""

    train: PositiveInt | None = None
    val: NonNegativeInt | None = None
    test: NonNegativeInt | None = None

    def as_tuple(self) -> tuple[int | None, int | None, int | None]:
        """(train, val, test) caps, in the order of the split codes 0, 1, 2."""
        return (self.train, self.val, self.test)


class ImagePreset(ConfigModel):
    """Everything that decides an image run's model, training and report, recorded in report.json.

    Attributes
    ----------
    name : str
        ``"demo"`` or ``"paper"``.
    dataset : str
        ``"mnist"`` or ``"celeba"``.
    vae : VAEConfig
        The paper's architecture for the dataset's image shape, its latents, β and likelihood.
    train : TrainConfig
        Epochs (the most), batch size, learning rate, early stopping, seed.
    caps : SplitCaps
        Images of each part taken from a data folder (the data size of the preset).
    embedded_images : int
        CelebA without a data folder: procedural images generated (MNIST's embedded digits are
        always the 1797 of scikit-learn).
    eval_images : int
        Test images on which Î, the top-k table and the traversal seeds are computed.
    n_reported_factors : int
        Factors described (with a traversal montage) in the report, the most informative first.
    n_seed_images : int
        Rows of each traversal montage: test images whose inferred latents are traversed.
    traversal_values : tuple of float
        Values a factor sweeps in a traversal, in prior standard deviations.
    threshold_nats : float
        Î above which a factor counts as influential (``pipeline.analysis.mi.DEFAULT_THRESHOLD_NATS``).
    encode_batch_size : int
        Images per encoder pass.
    memory_budget_bytes : int
        Frames up to this size are read into memory once for training and encoding; a larger
        data set streams from the store image by image.
    max_presentations : int or None
        Training stops after about this many image presentations (epochs x training images),
        before ``train.epochs`` if that comes first, so a demo takes about as long on a large
        data folder as on the small embedded set; None trains ``train.epochs``.
    """

    name: Literal[PRESET_NAMES]
    dataset: Literal[IMAGE_DATASETS]
    vae: VAEConfig
    train: TrainConfig
    caps: SplitCaps
    embedded_images: PositiveInt
    eval_images: PositiveInt
    n_reported_factors: PositiveInt = 10
    n_seed_images: PositiveInt = 6
    traversal_values: Annotated[tuple[RealNumber, ...], Field(min_length=2)] = tuple(
        float(v) for v in DEFAULT_TRAVERSAL_VALUES
    )
    threshold_nats: NonNegativeNumber = DEFAULT_THRESHOLD_NATS
    encode_batch_size: PositiveInt = 512
    memory_budget_bytes: NonNegativeInt = 2 << 30
    max_presentations: PositiveInt | None = None

    def train_config_for(self, n_train: int) -> TrainConfig:
        """The training settings for ``n_train`` training images: ``train`` with the epochs the budget allows.

        Returns
        -------
        TrainConfig
            ``train.epochs``, or ``max_presentations // n_train`` epochs (at least 1) if fewer.
        """
        n_train = check_whole_number(n_train, "n_train")
        if self.max_presentations is None:
            return self.train
        epochs = min(self.train.epochs, max(1, self.max_presentations // n_train))
        return self.train.replace(epochs=epochs)


# ---------------------------------------------------------------- DEAP
class _Scale(NamedTuple):
    """What differs between the presets; the model (β = 6, learned decoder variance, LSTM 128) and
    optimisers are shared."""

    synthetic_subjects: int
    n_latents: int
    vae_epochs: int
    vae_batch_size: int
    vae_patience: int
    trials_per_read: int
    lstm_epochs: int
    lstm_patience: int


_SCALES = {
    # Sized for <= 10 minutes end to end on 2 CPU cores (measured in the README).
    "demo": _Scale(8, 32, 10, 128, 4, 16, 80, 12),
    # Appendix A.3/A.4: 128 latents, beta = 6, 300 epochs, LSTM 128; meant for a GPU.
    "paper": _Scale(32, 128, 300, 1024, 30, 64, 200, 20),
}


# The demo reports one protocol to stay within minutes; the paper setting compares both.
_DEFAULT_PROTOCOL = {"demo": "trial", "paper": "both"}


def deap_preset(
    name: str, seed: int = 0, protocol: str | None = None, betas: tuple[float, ...] | None = None
) -> DeapPreset:
    """The ``demo`` or ``paper`` preset with every seed set to ``seed``.

    ``protocol`` and ``betas`` override the preset's (one β replaces it; several run a sweep).
    """
    scale = _SCALES[check_preset_name(name)]
    preset = DeapPreset(
        name=name,
        synthetic_subjects=scale.synthetic_subjects,
        learn=LearnConfig(
            # A learned decoder variance: with unit variance on standardised frames the reconstruction
            # term is under-weighted (the residual variance is about 0.4), so fewer factors carry
            # less information; measured in benchmarks/results/factor_structure_*.json (README).
            vae=VAEConfig(
                input_shape=DEAP_FRAME_SHAPE, n_latents=scale.n_latents, beta=6.0, decoder_variance="learned"
            ),
            train=TrainConfig(
                epochs=scale.vae_epochs,
                batch_size=scale.vae_batch_size,
                lr=1e-3,
                patience=scale.vae_patience,
                seed=seed,
                trials_per_read=scale.trials_per_read,
                # 80,640 frames at DEAP's full size are 1 GB: held on a GPU, nothing is read twice.
                frames_on_device=name == "paper",
                # 1.5-2x the CPU frames/s (benchmarks/train.py, cpu_options); same findings.
                channels_last=name == "demo",
            ),
            classifier=ClassifierConfig(
                hidden=128,
                epochs=scale.lstm_epochs,
                batch_size=32,
                lr=1e-3,
                patience=scale.lstm_patience,
                seed=seed,
            ),
            split_seed=seed,
        ),
        rules=FactorRules(),
        protocol=protocol or _DEFAULT_PROTOCOL[name],
    )

    if betas:
        preset = with_betas(preset, tuple(betas))
    return preset


def with_training_options(preset: DeapPreset, mixed_precision: bool, compile_model: bool) -> DeapPreset:
    """``preset`` with bf16 autocast (CUDA only) and/or a compiled encoder and decoder for the β-VAE."""
    train = preset.learn.train.replace(mixed_precision=mixed_precision, compile_model=compile_model)
    return preset.replace(learn=preset.learn.replace(train=train))


def with_betas(preset: DeapPreset, betas: tuple[float, ...]) -> DeapPreset:
    """``preset`` with the β sweep ``betas``; the model's β is the first until a sweep chooses."""
    return preset.replace(learn=with_beta(preset.learn, betas[0]), betas=tuple(betas))


def with_beta(learn: LearnConfig, beta: float) -> LearnConfig:
    """``learn`` with the β-VAE's β set to ``beta``."""
    return learn.replace(vae=learn.vae.replace(beta=float(beta)))


# ---------------------------------------------------------------- images
# The model of each data set, the same in every preset. CelebA's procedural stand-in (used
# without a data folder) has its own likelihood, β and learning rate; see the module doc.
_MODELS: dict[str, VAEConfig] = {
    "mnist": VAEConfig(input_shape=MNIST_IMAGE_SHAPE, n_latents=128, beta=1.0, likelihood="bernoulli"),
    "celeba": VAEConfig(
        input_shape=CELEBA_IMAGE_SHAPE, n_latents=32, beta=1.0, likelihood="gaussian-mixture"
    ),
    "procedural": VAEConfig(input_shape=CELEBA_IMAGE_SHAPE, n_latents=32, beta=0.3, likelihood="gaussian"),
}
# Optimiser settings (images per step, learning rate) of each model, the same in every preset.
# Small batches: on a CPU the number of optimiser steps, not the images per step, decides how
# far a VAE gets in a few minutes.
_OPTIMISERS: dict[str, tuple[int, float]] = {
    "mnist": (32, 1e-3),
    "celeba": (16, 2e-3),
    "procedural": (16, 1e-3),
}
# What a preset changes: epochs (the most), the images of each part taken from a data folder,
# the embedded images, the test images evaluated and the presentation budget.
_PRESETS: dict[tuple[str, str], dict] = {
    # At most 60 epochs or 120,000 presentations: 60 epochs of the 1438 embedded training
    # digits, 20 of the 6000 training images a data folder gives.
    ("mnist", "demo"): {
        "epochs": 60, "caps": SplitCaps(train=6000, val=600, test=2000), "embedded_images": 1797,
        "eval_images": 2000, "max_presentations": 120_000,
    },
    # Appendix A.1 and A.4: every image, 200 epochs, Î on the 10,000 test images.
    ("mnist", "paper"): {
        "epochs": 200, "caps": SplitCaps(), "embedded_images": 1797, "eval_images": PAPER_EVAL_IMAGES,
    },
    # 48,000 presentations: 30 epochs of the 1600 procedural training images (20 left the
    # procedural factors unsettled, see the module doc), or of 1600 CelebA images.
    ("celeba", "demo"): {
        "epochs": 30, "caps": SplitCaps(train=1600, val=200, test=400), "embedded_images": 2000,
        "eval_images": 400, "max_presentations": 48_000,
    },
    # Appendix A.2 and A.4: every image, 20 epochs, Î on 10,000 test images.
    ("celeba", "paper"): {
        "epochs": 20, "caps": SplitCaps(), "embedded_images": 20_000, "eval_images": PAPER_EVAL_IMAGES,
    },
}  # fmt: skip


def image_preset(dataset: str, name: str, seed: int = 0, embedded: bool = False) -> ImagePreset:
    """The ``demo`` or ``paper`` preset of ``dataset`` ("mnist" or "celeba"), every seed set to ``seed``.

    ``embedded`` selects the settings for the data used without a data folder: CelebA's
    procedural stand-in gets its own model and learning rate (see the module doc); MNIST's
    embedded digits use MNIST's.
    """
    if dataset not in IMAGE_DATASETS:
        raise InputError("dataset", f"{dataset!r} is not one of {IMAGE_DATASETS}")
    settings = dict(_PRESETS[(dataset, check_preset_name(name))])
    model = "procedural" if dataset == "celeba" and embedded else dataset
    batch_size, lr = _OPTIMISERS[model]
    train = TrainConfig(
        epochs=settings.pop("epochs"),
        batch_size=batch_size,
        lr=lr,
        patience=10,
        seed=seed,
        trials_per_read=256,
    )
    return ImagePreset(name=name, dataset=dataset, vae=_MODELS[model], train=train, **settings)

"""Procedural images with known independent factors: the embedded stand-in for CelebA.

Each image is a coloured, soft-edged ellipse on a grey background, size x size RGB. The
chosen generative factors (by default position x, position y, radius and hue; optionally
background grey level and elongation) are drawn independently and uniformly from their
ranges; the others stay at fixed values. Because the true number of factors and their values
are known, a run on these images shows whether the mutual-information ranking singles out k
influential latent factors.

Every factor is drawn so that a small VAE sees it as one smooth factor of the pixels. The
ellipse is large (6 to 16 pixels in radius at 64x64) and its edge a soft logistic ramp (scale
2 pixels: coverage rises from 12 % to 88 % over 8 pixels). Its centre moves over the middle
fifth of each axis (13 pixels), less than the ellipse is wide, so the images along a shift
overlap and change gradually; moved over half the frame, a small β-VAE spread x and y over four
latents and left radius and hue unused. The hue spans one sector of the HSV circle (red to
yellow), along which the colour moves on a straight line in RGB; a range around the circle
draws a loop in RGB, which a VAE tends to encode with two latents. The calibration runs are
listed in ``pipeline.models.presets``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.analysis.splits import DEFAULT_FRACTIONS
from pipeline.errors import InputError
from pipeline.sources.images import (
    NO_LABEL,
    ImageBatch,
    check_split_fractions,
    check_whole_number,
    concatenate_batches,
    seeded_split,
)

EMBEDDED_PROCEDURAL = "embedded://procedural"
SHAPE_SATURATION = 0.85
SHAPE_VALUE = 0.95
_FACTOR_STREAM = 1  # keeps the factor draws independent of the split permutation of the same seed


@dataclass(frozen=True)
class FactorRange:
    """One generative factor: the uniform range it is drawn from, and its value when not drawn."""

    name: str
    low: float
    high: float
    fixed: float
    meaning: str


FACTORS: dict[str, FactorRange] = {
    factor.name: factor
    for factor in (
        FactorRange("x", 0.4, 0.6, 0.5, "horizontal centre of the ellipse, as a fraction of the width"),
        FactorRange("y", 0.4, 0.6, 0.5, "vertical centre of the ellipse, as a fraction of the height"),
        FactorRange(
            "radius", 0.1, 0.25, 0.175, "geometric-mean radius of the ellipse, as a fraction of the side"
        ),
        # One sector of the hue circle: green rises from its floor to full while red stays full and
        # blue at its floor, a straight line in RGB.
        FactorRange("hue", 0.0, 1 / 6, 1 / 12, "hue of the ellipse on the HSV circle (0 red, 1/6 yellow)"),
        FactorRange("background", 0.05, 0.45, 0.2, "grey level of the background"),
        FactorRange(
            "elongation", 0.5, 1.0, 1.0, "vertical over horizontal axis of the ellipse, at equal area"
        ),
    )
}
DEFAULT_FACTORS: tuple[str, ...] = ("x", "y", "radius", "hue")


@dataclass(frozen=True)
class ProceduralSpec:
    """What to generate.

    Attributes
    ----------
    seed : int
        Seed of the factor draws and of the train/val/test split.
    n_images : int
        Number of images.
    size : int
        Side of the square RGB images, in pixels (at least 8).
    factors : tuple of str
        The k generative factors drawn independently and uniformly, keys of ``FACTORS``.
    split_fractions : (float, float, float)
        Train, validation and test fractions (exact counts, seeded permutation).
    edge_px : float
        Scale of the logistic edge of the ellipse, in pixels (coverage rises from 12 % to 88 %
        over four scales).
    """

    seed: int = 0
    n_images: int = 20000
    size: int = 64
    factors: tuple[str, ...] = DEFAULT_FACTORS
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    edge_px: float = 2.0

    def __post_init__(self) -> None:
        where = "ProceduralSpec"
        for name, minimum in (("seed", 0), ("n_images", 1), ("size", 8)):
            object.__setattr__(
                self, name, check_whole_number(getattr(self, name), f"{where}.{name}", minimum)
            )
        if isinstance(self.factors, str):
            factors = (self.factors,)
        elif isinstance(self.factors, Iterable):
            factors = tuple(self.factors)
        else:
            raise InputError(where, f"factors {self.factors!r} is not a sequence of factor names")
        unknown = [name for name in factors if name not in FACTORS]
        if not factors or unknown or len(set(factors)) != len(factors):
            raise InputError(
                where, f"factors {factors!r} must be distinct names from {tuple(FACTORS)}, at least one"
            )
        if not isinstance(self.edge_px, int | float | np.floating) or not 0 < self.edge_px < np.inf:
            raise InputError(where, f"edge_px = {self.edge_px!r} must be positive")
        object.__setattr__(self, "factors", factors)
        object.__setattr__(self, "split_fractions", check_split_fractions(self.split_fractions, where))

    @property
    def n_factors(self) -> int:
        """k, the true number of independent generative factors."""
        return len(self.factors)

    def ground_truth(self) -> dict[str, Any]:
        """The generating process as JSON-ready values: k, each factor's name, range and meaning."""
        return {
            "kind": "procedural",
            "seed": int(self.seed),
            "n_images": int(self.n_images),
            "size": int(self.size),
            "n_factors": self.n_factors,
            "factor_names": list(self.factors),
            "factor_ranges": {name: [FACTORS[name].low, FACTORS[name].high] for name in self.factors},
            "factor_meanings": {name: FACTORS[name].meaning for name in self.factors},
            "sampling": "independent, uniform over each range",
            "fixed_factors": {name: f.fixed for name, f in FACTORS.items() if name not in self.factors},
            "split_fractions": list(self.split_fractions),
            "edge_px": float(self.edge_px),
        }


def sample_factors(spec: ProceduralSpec) -> np.ndarray:
    """The factor values of every image: float64 (n_images, k), columns in ``spec.factors`` order."""
    rng = np.random.default_rng((spec.seed, _FACTOR_STREAM))
    unit = rng.random((spec.n_images, spec.n_factors))
    low = np.array([FACTORS[name].low for name in spec.factors])
    high = np.array([FACTORS[name].high for name in spec.factors])
    return low + unit * (high - low)


def _hsv_to_rgb(hue: np.ndarray, saturation: float, value: float) -> np.ndarray:
    """(n,) hues in [0, 1) -> (n, 3) RGB, by the piecewise-linear HSV formula."""
    offsets = np.array([5.0, 3.0, 1.0])  # red, green, blue
    sector = (offsets[None, :] + 6.0 * hue[:, None]) % 6.0
    ramp = np.clip(np.minimum(sector, 4.0 - sector), 0.0, 1.0)
    return value - value * saturation * ramp


def render_images(factor_values: np.ndarray, spec: ProceduralSpec) -> np.ndarray:
    """Draw images from factor values.

    Parameters
    ----------
    factor_values : array (n, k)
        One row per image, columns in ``spec.factors`` order, each inside its factor's range.
    spec : ProceduralSpec
        Gives the image size, the factor order and the edge width.

    Returns
    -------
    float32 array (n, 3, size, size)
        RGB in [0, 1].
    """
    values = np.asarray(factor_values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != spec.n_factors:
        raise InputError("factor_values", f"shape {values.shape}; expected (n, {spec.n_factors})")
    for column, name in enumerate(spec.factors):
        factor = FACTORS[name]
        outside = (values[:, column] < factor.low) | (values[:, column] > factor.high)
        if outside.any():
            raise InputError(
                "factor_values", f"{name} leaves [{factor.low}, {factor.high}] in {outside.sum()} row(s)"
            )
    n_images = values.shape[0]
    params = {name: np.full(n_images, factor.fixed, dtype=np.float32) for name, factor in FACTORS.items()}
    params.update({name: values[:, column].astype(np.float32) for column, name in enumerate(spec.factors)})

    def per_image(name: str) -> np.ndarray:
        return params[name][:, None, None]

    centres = (np.arange(spec.size, dtype=np.float32) + 0.5) / spec.size
    radius, elongation = per_image("radius"), per_image("elongation")
    half_width, half_height = radius / np.sqrt(elongation), radius * np.sqrt(elongation)
    scaled_dx = (centres[None, None, :] - per_image("x")) / half_width
    scaled_dy = (centres[None, :, None] - per_image("y")) / half_height
    # (rho - 1) times the mean radius approximates the signed distance to the ellipse's edge.
    distance_px = (np.sqrt(scaled_dx**2 + scaled_dy**2) - 1.0) * radius * spec.size
    coverage = 0.5 * (1.0 - np.tanh(distance_px / (2.0 * spec.edge_px)))  # logistic(-distance / edge)
    colour = _hsv_to_rgb(params["hue"], SHAPE_SATURATION, SHAPE_VALUE).astype(np.float32)
    background = per_image("background")
    images = background[:, None] + (colour[:, :, None, None] - background[:, None]) * coverage[:, None]
    return np.clip(images, 0.0, 1.0, out=images)


def _spec_sha256(spec: ProceduralSpec, factor_values: np.ndarray) -> str:
    digest = hashlib.sha256(json.dumps(spec.ground_truth(), sort_keys=True).encode())
    digest.update(np.ascontiguousarray(factor_values).tobytes())
    return digest.hexdigest()


def iter_procedural_images(spec: ProceduralSpec, batch_size: int = 1024) -> Iterator[ImageBatch]:
    """Stream the images of ``spec`` in batches (each image the same whatever the batch size).

    Returns
    -------
    iterator of ImageBatch
        Images (n, 3, size, size) in [0, 1], labels -1, names ``embedded://procedural``, the
        image number as index, one SHA-256 of the spec and factor values, and the seeded split.
        The factor values behind each image are ``sample_factors(spec)[batch.index]``.
    """
    batch_size = check_whole_number(batch_size, "batch_size")
    if not isinstance(spec, ProceduralSpec):
        raise InputError("spec", f"expected a ProceduralSpec, got {type(spec).__name__}")
    return _stream_images(spec, batch_size)


def _stream_images(spec: ProceduralSpec, batch_size: int) -> Iterator[ImageBatch]:
    factor_values = sample_factors(spec)
    split = seeded_split(spec.n_images, spec.seed, spec.split_fractions)
    sha = _spec_sha256(spec, factor_values)
    for start in range(0, spec.n_images, batch_size):
        stop = min(start + batch_size, spec.n_images)
        yield ImageBatch(
            images=render_images(factor_values[start:stop], spec),
            labels=np.full((stop - start, 1), NO_LABEL, dtype=np.float32),
            names=(EMBEDDED_PROCEDURAL,) * (stop - start),
            index=np.arange(start, stop, dtype=np.int32),
            source_sha256=(sha,) * (stop - start),
            split=split[start:stop],
            origin=EMBEDDED_PROCEDURAL,
        )


def generate_procedural_images(spec: ProceduralSpec) -> ImageBatch:
    """All images of ``spec`` in one batch (n * 3 * size**2 * 4 bytes: 980 MB for 20,000 at 64x64).

    Prefer :func:`iter_procedural_images` for large ``n_images``.
    """
    return concatenate_batches(iter_procedural_images(spec), origin=EMBEDDED_PROCEDURAL)

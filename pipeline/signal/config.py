"""Preprocessing configuration: everything that decides what a stored frame holds.

Its hash keys the frame store: a store built under one configuration never takes frames
made under another.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, field_validator

from pipeline.validators import ConfigModel, PositiveInt, PositiveNumber, check_json_native

BAND_NAMES: tuple[str, ...] = ("alpha", "beta", "gamma")


class PreprocessConfig(ConfigModel):
    """How signals become frames.

    Bands are half-open [low, high) Hz. Power is the squared FFT magnitude of each
    non-overlapping ``window_seconds`` window summed over the band's bins, then log10.
    """

    sfreq: PositiveNumber = 128.0
    window_seconds: PositiveNumber = 1.0
    n_windows: PositiveInt = 63
    band_edges_hz: tuple[tuple[float, float], ...] = ((8.0, 13.0), (13.0, 30.0), (30.0, 45.0))
    band_names: tuple[str, ...] = BAND_NAMES
    montage: str = "biosemi32"
    projection: str = "azimuthal-equidistant"
    interpolation: str = "clough-tocher"
    grid_size: PositiveInt = 32
    extra: dict = Field(default_factory=dict)

    @field_validator("extra")
    @classmethod
    def _json_native(cls, extra: dict) -> dict:
        # Recorded in the store's attrs and hashed as JSON: anything else would not round-trip.
        check_json_native(extra, "PreprocessConfig", "extra")
        return extra

    def config_hash(self) -> str:
        """Short stable hash of the configuration (first 16 hex digits of SHA-256).

        Taken over the JSON form stores and reports record (``model_dump(mode="json")``), so a
        store written by an earlier version keeps its hash.
        """
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

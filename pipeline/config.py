"""Preprocessing configuration: everything that decides what a stored frame holds.

Its hash keys the frame store: a store built under one configuration never takes frames
made under another.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

BAND_NAMES: tuple[str, ...] = ("alpha", "beta", "gamma")


@dataclass(frozen=True)
class PreprocessConfig:
    """How signals become frames.

    Bands are half-open [low, high) Hz. Power is the squared FFT magnitude of each
    non-overlapping ``window_seconds`` window summed over the band's bins, then log10.
    """

    sfreq: float = 128.0
    window_seconds: float = 1.0
    n_windows: int = 63
    band_edges_hz: tuple[tuple[float, float], ...] = ((8.0, 13.0), (13.0, 30.0), (30.0, 45.0))
    band_names: tuple[str, ...] = BAND_NAMES
    montage: str = "biosemi32"
    projection: str = "azimuthal-equidistant"
    interpolation: str = "clough-tocher"
    grid_size: int = 32
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-native form (tuples become lists), as stored in zarr attrs and report.json."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessConfig:
        values = dict(values)
        values["band_edges_hz"] = tuple(tuple(edge) for edge in values["band_edges_hz"])
        values["band_names"] = tuple(values["band_names"])
        return cls(**values)

    def config_hash(self) -> str:
        """Short stable hash of the configuration (first 16 hex digits of SHA-256)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

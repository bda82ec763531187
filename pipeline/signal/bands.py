"""Per-second band power: EEG trials -> log10 alpha/beta/gamma power per window and channel.

Each trial is cut into non-overlapping windows of ``config.window_seconds`` (63 one-second
windows for DEAP, the 3-s baseline included, as in the paper). The power of a window in a band
is the sum, over the FFT bins whose frequency lies in the band's half-open interval
[low, high) Hz, of the squared magnitude of the unnormalised real FFT::

    P_band = sum_{k: low <= f_k < high} |X_k|^2,    X_k = sum_n x_n exp(-2 pi i k n / N)

with no taper, no detrending and no 1/N factor (numpy's default ``norm="backward"``), so a
sine of amplitude ``A`` on an exact bin of an ``N``-sample window gives ``(A N / 2)^2`` in
that bin. For DEAP (microvolts, N = 128) the power of real EEG lies roughly in
1e2 .. 1e7 uV^2; the stored value is ``log10(max(P_band, LOG_POWER_FLOOR))`` so that a flat
(dead) channel yields a finite value rather than -inf.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.fft

from pipeline.errors import InputError
from pipeline.signal.config import PreprocessConfig

# Far below any real EEG band power (see module docstring), so only flat channels reach it.
LOG_POWER_FLOOR = 1e-10
# Trials whose spectra are computed at once: two DEAP trials' spectra (8.6 MB) stay in the CPU's
# cache while they are squared, which takes a DEAP file's band power in about 60 % of the time
# that transforming all 40 at once does.
TRIALS_PER_TRANSFORM = 2
_DEFAULT_CONFIG = PreprocessConfig()


def window_samples(config: PreprocessConfig) -> int:
    """Samples per analysis window, checked to be a whole number.

    Raises
    ------
    InputError
        If ``config.sfreq * config.window_seconds`` is not a positive whole number.
    """
    samples = config.sfreq * config.window_seconds
    if samples < 2 or not float(samples).is_integer():
        raise InputError(
            "PreprocessConfig",
            f"sfreq * window_seconds = {config.sfreq:g} * {config.window_seconds:g} = {samples:g} "
            "is not a whole number of samples >= 2",
        )
    return int(samples)


def band_bin_matrix(config: PreprocessConfig) -> np.ndarray:
    """Indicator matrix (n_fft_bins, n_bands) selecting each band's FFT bins.

    Bin ``k`` of a window has frequency ``k / window_seconds`` Hz and belongs to band ``b``
    when ``low_b <= f_k < high_b``.

    Raises
    ------
    InputError
        If a band is empty, inverted, above the Nyquist frequency, holds no FFT bin, or the
        band names do not match the band edges.
    """
    n_samples = window_samples(config)
    if len(config.band_names) != len(config.band_edges_hz):
        raise InputError(
            "PreprocessConfig",
            f"{len(config.band_names)} band names {config.band_names} for "
            f"{len(config.band_edges_hz)} band edges {config.band_edges_hz}",
        )
    frequencies = np.fft.rfftfreq(n_samples, d=1.0 / config.sfreq)
    nyquist = config.sfreq / 2.0
    matrix = np.zeros((frequencies.size, len(config.band_edges_hz)), dtype=np.float64)
    for band, (name, (low, high)) in enumerate(zip(config.band_names, config.band_edges_hz, strict=True)):
        if not 0.0 <= low < high <= nyquist:
            raise InputError(
                "PreprocessConfig",
                f"band {name!r} = [{low:g}, {high:g}) Hz; "
                f"expected 0 <= low < high <= Nyquist ({nyquist:g} Hz)",
            )
        in_band = (frequencies >= low) & (frequencies < high)
        if not in_band.any():
            raise InputError(
                "PreprocessConfig",
                f"band {name!r} = [{low:g}, {high:g}) Hz holds no FFT bin at "
                f"{1.0 / config.window_seconds:g} Hz resolution",
            )
        matrix[in_band, band] = 1.0
    return matrix


def _power_spectra(chunk: np.ndarray, n_windows: int, n_samples: int, bins: slice, out: np.ndarray) -> None:
    """|FFT|² of every window of ``chunk`` at ``bins``, into ``out`` (trial, channel, window, bin),
    a few trials at a time (:data:`TRIALS_PER_TRANSFORM`); each trial's values do not depend on it."""
    for first in range(0, chunk.shape[0], TRIALS_PER_TRANSFORM):
        trials = chunk[first : first + TRIALS_PER_TRANSFORM]
        windows = trials.reshape(trials.shape[0], trials.shape[1], n_windows, n_samples)
        # scipy's FFT is several times faster than numpy's here; each transform is computed
        # whole by one worker, so the worker count never changes the result.
        spectrum = scipy.fft.rfft(windows, axis=-1, workers=_fft_workers())[..., bins]
        power = out[first : first + trials.shape[0]]
        np.square(spectrum.real, out=power)
        power += np.square(spectrum.imag)


def _fft_workers() -> int:
    """Every core, unless numpy's BLAS is held to one thread per task (the thread policy runs
    files as parallel tasks and sets ``OPENBLAS_NUM_THREADS``): then that many, so that tasks ×
    FFT workers never exceed the cores."""
    value = os.environ.get("OPENBLAS_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else -1


def band_log_power(
    signals: np.ndarray,
    config: PreprocessConfig = _DEFAULT_CONFIG,
    *,
    sfreq: float | None = None,
    where: str = "signals",
    trials_per_chunk: int = 64,
) -> np.ndarray:
    """Log10 band power of every non-overlapping window of every trial and channel.

    Parameters
    ----------
    signals : float array (n_trials, n_channels, n_windows * window_samples)
        EEG sampled at ``config.sfreq`` (for DEAP: float32 (n_trials, 32, 8064) at 128 Hz).
    config : PreprocessConfig
        Sampling rate, window length, number of windows and band edges.
    sfreq : float, optional
        Sampling rate of ``signals``; when given it must equal ``config.sfreq``.
    where : str
        Name of the array (or its source file) used in error messages.
    trials_per_chunk : int
        Trials transformed at once; bounds the memory of the complex spectra
        (about 4.3 MB per DEAP trial in float32).

    Returns
    -------
    float32 array (n_trials, n_windows, n_channels, n_bands)
        ``log10(max(P, LOG_POWER_FLOOR))`` with ``P`` as defined in the module docstring;
        for DEAP (n_trials, 63, 32, 3) with bands in ``config.band_names`` order.

    Raises
    ------
    InputError
        If the sampling rate differs from the configuration, the array has the wrong shape or
        dtype, or it holds NaN or Inf.
    """
    if sfreq is not None and not np.isclose(sfreq, config.sfreq):
        raise InputError(where, f"sampled at {sfreq:g} Hz but the configuration expects {config.sfreq:g} Hz")
    if trials_per_chunk < 1:
        raise InputError("trials_per_chunk", f"is {trials_per_chunk}; expected >= 1")
    n_samples = window_samples(config)
    bin_matrix = band_bin_matrix(config)
    signals = np.asarray(signals)
    expected_length = config.n_windows * n_samples
    if signals.ndim != 3 or 0 in signals.shape[:2] or signals.shape[2] != expected_length:
        raise InputError(
            where,
            f"has shape {signals.shape}; expected (n_trials >= 1, n_channels >= 1, {expected_length}) "
            f"= {config.n_windows} windows of {n_samples} samples",
        )
    if not np.issubdtype(signals.dtype, np.floating):
        raise InputError(where, f"has dtype {signals.dtype}; expected a floating-point array")

    n_trials, n_channels, _ = signals.shape
    # Spectra keep the input precision (complex64 for float32), so the indicator must match.
    bin_matrix = bin_matrix.astype(signals.dtype)
    in_any_band = np.flatnonzero(bin_matrix.any(axis=1))
    used_bins = slice(in_any_band[0], in_any_band[-1] + 1)
    log_power = np.empty((n_trials, config.n_windows, n_channels, bin_matrix.shape[1]), dtype=np.float32)
    n_used_bins = used_bins.stop - used_bins.start
    power = np.empty(
        (min(n_trials, trials_per_chunk), n_channels, config.n_windows, n_used_bins), signals.dtype
    )
    for start in range(0, n_trials, trials_per_chunk):
        chunk = signals[start : start + trials_per_chunk]
        if not np.isfinite(chunk).all():
            bad = start + np.unique(np.nonzero(~np.isfinite(chunk))[0])
            raise InputError(where, f"contains NaN or Inf in trial(s) {bad.tolist()}")
        chunk_power = power[: chunk.shape[0]]
        _power_spectra(chunk, config.n_windows, n_samples, used_bins, out=chunk_power)
        # One matrix product per chunk: its BLAS kernel depends on the product's size.
        band_power = chunk_power @ bin_matrix[used_bins]  # (chunk, channel, window, band)
        np.log10(
            np.maximum(band_power, LOG_POWER_FLOOR).transpose(0, 2, 1, 3),
            out=log_power[start : start + chunk.shape[0]],
            casting="same_kind",
        )
    return log_power

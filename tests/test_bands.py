"""Band power: where a sine's power lands, how it scales, and agreement with a direct loop."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.signal.bands import LOG_POWER_FLOOR, band_log_power
from pipeline.signal.config import PreprocessConfig

CONFIG = PreprocessConfig()
N_CHANNELS = 32
N_SAMPLES = 8064
WINDOW = 128  # samples per 1-s window at 128 Hz
ALPHA, BETA, GAMMA = 0, 1, 2


def sine_trials(frequency_hz: float, amplitude: float = 1.0, n_trials: int = 1) -> np.ndarray:
    time = np.arange(N_SAMPLES) / CONFIG.sfreq
    wave = amplitude * np.sin(2 * np.pi * frequency_hz * time)
    return np.broadcast_to(wave, (n_trials, N_CHANNELS, N_SAMPLES)).astype(np.float32)


def noise_trials(n_trials: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 10.0, (n_trials, N_CHANNELS, N_SAMPLES)).astype(np.float32)


@pytest.mark.parametrize(
    ("frequency_hz", "band"), [(10.0, ALPHA), (20.0, BETA), (40.0, GAMMA), (8.0, ALPHA), (30.0, GAMMA)]
)
def test_a_sine_puts_its_power_in_its_band(frequency_hz, band):
    amplitude = 3.0
    log_power = band_log_power(sine_trials(frequency_hz, amplitude))

    assert log_power.shape == (1, 63, N_CHANNELS, 3)
    assert log_power.dtype == np.float32
    # An exact-bin sine of amplitude A in an N-sample window has |X_k|^2 = (A N / 2)^2.
    expected = np.log10((amplitude * WINDOW / 2) ** 2)
    np.testing.assert_allclose(log_power[..., band], expected, atol=1e-4)
    others = [b for b in range(3) if b != band]
    assert np.all(log_power[..., others] < expected - 6)


def test_band_edges_are_half_open():
    expected = np.log10((WINDOW / 2) ** 2)
    at_13 = band_log_power(sine_trials(13.0))
    np.testing.assert_allclose(at_13[..., BETA], expected, atol=1e-4)
    assert np.all(at_13[..., ALPHA] < expected - 6)

    at_45 = band_log_power(sine_trials(45.0))  # gamma is [30, 45): 45 Hz belongs to no band
    assert np.all(at_45 < expected - 6)


def test_doubling_the_amplitude_quadruples_the_power():
    signals = noise_trials()
    difference = band_log_power(2 * signals) - band_log_power(signals)
    np.testing.assert_allclose(difference, np.log10(4.0), atol=1e-5)


def test_matches_a_direct_per_window_loop():
    signals = noise_trials(n_trials=2, seed=1)
    frequencies = np.fft.rfftfreq(WINDOW, d=1 / CONFIG.sfreq)
    expected = np.empty((2, 63, N_CHANNELS, 3))
    for trial in range(2):
        for window in range(63):
            segment = signals[trial, :, window * WINDOW : (window + 1) * WINDOW].astype(np.float64)
            power = np.abs(np.fft.rfft(segment, axis=-1)) ** 2
            for band, (low, high) in enumerate(CONFIG.band_edges_hz):
                in_band = (frequencies >= low) & (frequencies < high)
                expected[trial, window, :, band] = np.log10(power[:, in_band].sum(axis=1))

    np.testing.assert_allclose(band_log_power(signals), expected, atol=2e-5)


def test_chunking_does_not_change_the_result():
    signals = noise_trials(n_trials=3, seed=2)
    # The band sums are a BLAS matrix product whose kernel depends on the chunk's size, so chunking
    # may move a value by float32 rounding, never by more.
    np.testing.assert_array_max_ulp(
        band_log_power(signals, trials_per_chunk=1), band_log_power(signals, trials_per_chunk=64), maxulp=2
    )


def test_a_flat_channel_gives_the_finite_floor():
    signals = noise_trials(n_trials=1)
    signals[0, 5] = 0.0
    log_power = band_log_power(signals)
    assert np.isfinite(log_power).all()
    # float32 log10 is within an ulp of the true value, and which ulp depends on the CPU's SIMD
    # path (AVX-512 gives -10.000001 for log10(1e-10)): compare at float32 resolution.
    np.testing.assert_allclose(
        log_power[0, :, 5], np.log10(LOG_POWER_FLOOR), rtol=4 * np.finfo(np.float32).eps
    )
    assert np.all(log_power[0, :, 4] > np.log10(LOG_POWER_FLOOR) + 5)


def test_other_window_lengths_follow_the_config():
    config = PreprocessConfig(window_seconds=2.0, n_windows=31)
    signals = sine_trials(10.5)[..., : 31 * 256]  # 10.5 Hz is an exact bin of a 2-s window
    log_power = band_log_power(signals, config)
    assert log_power.shape == (1, 31, N_CHANNELS, 3)
    np.testing.assert_allclose(log_power[..., ALPHA], np.log10((256 / 2) ** 2), atol=1e-4)


@pytest.mark.parametrize(
    ("signals", "message"),
    [
        (np.zeros((1, 32, 8000), np.float32), "shape"),
        (np.zeros((32, 8064), np.float32), "shape"),
        (np.zeros((0, 32, 8064), np.float32), "shape"),
        (np.zeros((1, 32, 8064), np.int16), "dtype"),
    ],
)
def test_rejects_malformed_signals(signals, message):
    with pytest.raises(InputError, match=f"^signals: .*{message}"):
        band_log_power(signals)


def test_rejects_non_finite_values_naming_the_trial():
    signals = noise_trials(n_trials=3)
    signals[2, 0, 100] = np.nan
    with pytest.raises(InputError, match=r"s01\.dat: .*trial\(s\) \[2\]"):
        band_log_power(signals, where="s01.dat", trials_per_chunk=2)


def test_rejects_a_sampling_rate_that_differs_from_the_config():
    with pytest.raises(InputError, match="256 Hz"):
        band_log_power(noise_trials(1), sfreq=256.0)


def test_rejects_a_band_without_fft_bins():
    config = PreprocessConfig(band_edges_hz=((8.2, 8.6), (13.0, 30.0), (30.0, 45.0)))
    with pytest.raises(InputError, match="no FFT bin"):
        band_log_power(noise_trials(1), config)

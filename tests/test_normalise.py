"""Per-band normalisation: streaming statistics, standardisation inside the hull, no leakage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from pipeline.errors import InputError
from pipeline.signal.normalise import BandNormalisation, fit_band_normalisation

N_TRIALS, N_WINDOWS, N_BANDS, SIZE = 6, 5, 3, 8
FITTED_ON = {"split": "train", "protocol": "trial", "seed": 0}


@pytest.fixture
def mask():
    rows, cols = np.mgrid[:SIZE, :SIZE]
    return (rows - 3.5) ** 2 + (cols - 3.5) ** 2 < 12


@pytest.fixture
def frames(mask):
    rng = np.random.default_rng(0)
    band_level = np.array([4.0, -2.0, 7.0]).reshape(1, 1, 3, 1, 1)
    band_spread = np.array([0.5, 2.0, 1.5]).reshape(1, 1, 3, 1, 1)
    values = band_level + band_spread * rng.normal(size=(N_TRIALS, N_WINDOWS, N_BANDS, SIZE, SIZE))
    values[..., ~mask] = 1e6  # arbitrary fill outside the hull must not enter the statistics
    return values.astype(np.float32)


def one_shot(frames, mask):
    inside = np.asarray(frames, dtype=np.float64)[..., mask]  # (trials, windows, bands, pixels)
    per_band = inside.transpose(2, 0, 1, 3).reshape(N_BANDS, -1)
    return per_band.mean(axis=1), per_band.std(axis=1)


def test_streaming_statistics_equal_one_shot(frames, mask):
    fitted = fit_band_normalisation(frames, mask, FITTED_ON)
    mean, std = one_shot(frames, mask)
    np.testing.assert_allclose(fitted.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(fitted.std, std, rtol=1e-12)
    np.testing.assert_allclose(fitted.mean, [4.0, -2.0, 7.0], atol=0.3)  # sanity: the bands' levels
    assert fitted.fitted_on == {**FITTED_ON, "n_trials": N_TRIALS}


def test_a_zarr_array_read_trial_by_trial_gives_the_same_statistics(frames, mask):
    stored = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=frames.shape, chunks=(1, *frames.shape[1:]), dtype="float32"
    )
    stored[:] = frames
    from_zarr = fit_band_normalisation(stored, mask, FITTED_ON, trials=[1, 3, 4])
    from_numpy = fit_band_normalisation(frames[[1, 3, 4]], mask, FITTED_ON)
    np.testing.assert_allclose(from_zarr.mean, from_numpy.mean, rtol=1e-12)
    np.testing.assert_allclose(from_zarr.std, from_numpy.std, rtol=1e-12)


def test_apply_standardises_inside_the_hull_and_zeroes_outside(frames, mask):
    fitted = fit_band_normalisation(frames, mask, FITTED_ON)
    normalised = fitted.apply(frames, mask)

    assert normalised.dtype == np.float32 and normalised.shape == frames.shape
    inside = one_shot(normalised, mask)
    np.testing.assert_allclose(inside[0], 0.0, atol=1e-5)
    np.testing.assert_allclose(inside[1], 1.0, atol=1e-5)
    assert np.all(normalised[..., ~mask] == 0.0)
    assert np.all(frames[..., ~mask] == 1e6)  # the input is left untouched

    one_trial = fitted.apply(frames[2], mask)
    np.testing.assert_array_equal(one_trial, normalised[2])


def test_statistics_come_only_from_the_training_trials(frames, mask):
    train = [0, 2, 5]
    fitted = fit_band_normalisation(frames, mask, FITTED_ON, trials=train)
    mean, std = one_shot(frames[train], mask)
    np.testing.assert_allclose(fitted.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(fitted.std, std, rtol=1e-12)

    changed = frames.copy()
    changed[[1, 3, 4]] = 100.0 + 50.0 * changed[[1, 3, 4]]
    refitted = fit_band_normalisation(changed, mask, FITTED_ON, trials=train)
    np.testing.assert_array_equal(refitted.mean, fitted.mean)
    np.testing.assert_array_equal(refitted.std, fitted.std)
    assert refitted.fitted_on["n_trials"] == 3

    everything = fit_band_normalisation(changed, mask, FITTED_ON)
    assert np.all(np.abs(everything.mean - fitted.mean) > 1.0)


def test_dict_round_trip_is_json_native(frames, mask):
    fitted = fit_band_normalisation(frames, mask, FITTED_ON)
    restored = BandNormalisation.from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_array_equal(restored.mean, fitted.mean)
    np.testing.assert_array_equal(restored.std, fitted.std)
    assert restored.fitted_on == fitted.fitted_on
    np.testing.assert_array_equal(restored.apply(frames, mask), fitted.apply(frames, mask))


def test_nan_outside_the_hull_is_ignored_but_inside_is_rejected(frames, mask):
    frames = frames.copy()
    frames[..., ~mask] = np.nan
    fitted = fit_band_normalisation(frames, mask, FITTED_ON)
    assert np.isfinite(fitted.mean).all()
    assert np.all(fitted.apply(frames, mask)[..., ~mask] == 0.0)

    row, col = np.argwhere(mask)[0]
    frames[4, 0, 1, row, col] = np.nan
    with pytest.raises(InputError, match=r"^frames: trial 4 contains NaN"):
        fit_band_normalisation(frames, mask, FITTED_ON)


def test_rejects_bad_input(frames, mask):
    with pytest.raises(InputError, match="shape"):
        fit_band_normalisation(frames[0], mask, FITTED_ON)
    with pytest.raises(InputError, match=r"^mask: has shape"):
        fit_band_normalisation(frames, mask[:4], FITTED_ON)
    with pytest.raises(InputError, match=r"^mask: .*dtype"):
        fit_band_normalisation(frames, mask.astype(int), FITTED_ON)
    with pytest.raises(InputError, match=r"^trials: "):
        fit_band_normalisation(frames, mask, FITTED_ON, trials=[0, N_TRIALS])
    with pytest.raises(InputError, match=r"^trials: "):
        fit_band_normalisation(frames, mask, FITTED_ON, trials=[])
    with pytest.raises(InputError, match=r"^fitted_on: says n_trials = 5"):
        fit_band_normalisation(frames, mask, {**FITTED_ON, "n_trials": 5})
    with pytest.raises(InputError, match=r"^fitted_on: is not JSON-native"):
        fit_band_normalisation(frames, mask, {"seed": np.random.default_rng(0)})

    constant = frames.copy()
    constant[:, :, 1] = 3.0
    with pytest.raises(InputError, match=r"band\(s\) \[1\] are constant"):
        fit_band_normalisation(constant, mask, FITTED_ON)

    fitted = fit_band_normalisation(frames, mask, FITTED_ON)
    with pytest.raises(InputError, match="expected"):
        fitted.apply(frames[:, :, :2], mask)
    with pytest.raises(InputError, match="positive"):
        BandNormalisation(mean=[0.0, 0.0, 0.0], std=[1.0, 0.0, 1.0], fitted_on=FITTED_ON)
    with pytest.raises(InputError, match="missing"):
        BandNormalisation.from_dict({"mean": [0.0], "std": [1.0]})

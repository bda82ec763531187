"""Typed settings: stores and reports written before keep their hashes and still load; a bad
value is one line naming the setting."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.models.configs import ClassifierConfig, TrainConfig
from pipeline.models.learn import LearnConfig
from pipeline.models.presets import DeapPreset, ImagePreset, deap_preset, image_preset
from pipeline.models.vae import VAEConfig
from pipeline.signal.config import PreprocessConfig
from pipeline.store.ingest_images import ImageStoreConfig


def _hash_as_before(values: dict) -> str:
    """The store hash as the hand-written ``to_dict`` made it: tuples as lists, sorted keys."""
    canonical = json.dumps(json.loads(json.dumps(values)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_preprocessing_hashes_are_those_of_stores_written_before():
    default = {
        "sfreq": 128.0,
        "window_seconds": 1.0,
        "n_windows": 63,
        "band_edges_hz": ((8.0, 13.0), (13.0, 30.0), (30.0, 45.0)),
        "band_names": ("alpha", "beta", "gamma"),
        "montage": "biosemi32",
        "projection": "azimuthal-equidistant",
        "interpolation": "clough-tocher",
        "grid_size": 32,
        "extra": {},
    }
    other = {**default, "grid_size": 16, "extra": {"a": [1, 2]}}
    # The literals are the hashes computed by the dataclass version of PreprocessConfig.
    assert PreprocessConfig().config_hash() == _hash_as_before(default) == "2b5d7046705e5e45"
    assert PreprocessConfig(grid_size=16, extra={"a": [1, 2]}).config_hash() == _hash_as_before(other)
    assert _hash_as_before(other) == "2405f044f9593121"
    # A store's recorded settings rebuild the same configuration, hence the same hash.
    recorded = json.loads(json.dumps(PreprocessConfig().model_dump(mode="json")))
    assert PreprocessConfig.model_validate(recorded).config_hash() == "2b5d7046705e5e45"


def test_image_store_hashes_are_those_of_stores_written_before():
    config = ImageStoreConfig(
        dataset="mnist", image_shape=(1, 28, 28), preprocessing="x", split_rule="y", split_seed=3
    )
    before = {
        "dataset": "mnist",
        "image_shape": [1, 28, 28],
        "preprocessing": "x",
        "split_rule": "y",
        "split_seed": 3,
    }
    assert config.config_hash() == _hash_as_before(before) == "4c30238dc20dfce0"


@pytest.mark.parametrize(
    "preset",
    [
        deap_preset("demo"),
        deap_preset("paper", seed=3, betas=(1.0, 2.0)),
        image_preset("celeba", "demo", embedded=True),
    ],
    ids=["deap-demo", "deap-paper-sweep", "celeba-procedural"],
)
def test_recorded_settings_rebuild_the_same_preset(preset):
    recorded = json.loads(json.dumps(preset.model_dump(mode="json")))
    assert type(preset).model_validate(recorded) == preset


def test_settings_recorded_without_later_fields_take_their_defaults():
    recorded = image_preset("mnist", "demo").model_dump(mode="json")
    del recorded["vae"]["decoder_variance"], recorded["train"]["kl_warmup_epochs"]
    settings = ImagePreset.model_validate(recorded)
    assert settings.vae.decoder_variance == "unit" and settings.train.kl_warmup_epochs == 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: TrainConfig(epochs=0),
            r"^TrainConfig: epochs: input should be greater than or equal to 1 \(got 0\)$",
        ),
        (lambda: TrainConfig(epochs=3.0), r"^TrainConfig: epochs: must be a whole number \(got 3\.0\)$"),
        (lambda: ClassifierConfig(device="gpu"), r"^ClassifierConfig: device: must be 'auto', 'cpu', 'cuda'"),
        (
            lambda: TrainConfig(channels_last=1),
            r"^TrainConfig: channels_last: input should be a valid boolean",
        ),
        (lambda: VAEConfig(n_latents=0), r"^VAEConfig: n_latents: 0 must be an integer from 1 to 4096$"),
        (
            lambda: deap_preset("demo", betas=(2.0, 2.0)),
            r"^DeapPreset: beta: \[2\.0, 2\.0\] lists a value twice$",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting(build, message):
    with pytest.raises(InputError, match=message) as caught:
        build()
    assert "\n" not in str(caught.value)


def test_a_nested_bad_value_names_its_path_and_unknown_keys_are_refused():
    recorded = deap_preset("demo").model_dump(mode="json")
    recorded["learn"]["train"]["patience"] = -1
    with pytest.raises(InputError, match=r"^DeapPreset: learn\.train\.patience: input should be greater"):
        DeapPreset.model_validate(recorded)
    with pytest.raises(InputError, match=r"^LearnConfig: split_sed: unknown key"):
        LearnConfig.model_validate({**deap_preset("demo").learn.model_dump(), "split_sed": 1})


def test_settings_are_frozen_and_replace_checks_the_new_values():
    train = TrainConfig()
    with pytest.raises(Exception, match="frozen"):
        train.epochs = 3
    assert train.replace(epochs=3).epochs == 3 and train.epochs == 300
    with pytest.raises(InputError, match="epochs"):
        train.replace(epochs=0)
    assert VAEConfig((1, 28, 28), 8) == VAEConfig(input_shape=(1, 28, 28), n_latents=8)
    with pytest.raises(InputError, match="by position and by name"):
        VAEConfig((1, 28, 28), input_shape=(1, 28, 28))


def test_preprocessing_extras_must_be_json_native():
    with pytest.raises(InputError, match=r"^PreprocessConfig: extra: extra\['gain'\] is of type float32"):
        PreprocessConfig(extra={"gain": np.float32(2.0)})

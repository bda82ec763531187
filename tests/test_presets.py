"""DEAP presets: their protocol and β settings, and settings recorded before these existed."""

import pytest

from pipeline.errors import InputError
from pipeline.models.presets import deap_preset
from pipeline.runs.recordings import preset_from_dict


def test_demo_runs_the_trial_protocol_and_paper_both_with_a_learned_decoder_variance():
    demo, paper = deap_preset("demo"), deap_preset("paper")
    assert demo.protocol == "trial" and paper.protocol == "both"
    for preset in (demo, paper):
        assert preset.learn.vae.decoder_variance == "learned"
        assert preset.betas == (preset.learn.vae.beta,) == (6.0,)


def test_a_beta_sweep_and_a_protocol_override_the_preset():
    preset = deap_preset("demo", protocol="subject", betas=(1.0, 2.0, 4.0))
    assert preset.protocol == "subject" and preset.betas == (1.0, 2.0, 4.0)
    assert preset.learn.vae.beta == 1.0
    assert preset_from_dict(preset.model_dump(mode="json")) == preset


def test_settings_recorded_before_protocols_and_sweeps_read_as_one_trial_protocol_at_their_beta():
    recorded = deap_preset("demo").model_dump(mode="json")
    del recorded["protocol"], recorded["betas"]
    del recorded["learn"]["vae"]["decoder_variance"], recorded["learn"]["train"]["kl_warmup_epochs"]
    settings = preset_from_dict(recorded)
    assert settings.protocol == "trial" and settings.betas == (6.0,)
    assert settings.learn.vae.decoder_variance == "unit" and settings.learn.train.kl_warmup_epochs == 0


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"protocol": "frames"}, "protocol"),
        ({"betas": [2.0, 2.0]}, "twice"),
        ({"betas": [0.0]}, r"betas\.0: input should be greater than 0"),
    ],
)
def test_bad_protocols_and_betas_are_refused(changes, complaint):
    with pytest.raises(InputError, match=complaint):
        preset_from_dict({**deap_preset("demo").model_dump(mode="json"), **changes})

"""β-VAE architectures, likelihoods and loss terms."""

import json
import math

import numpy as np
import pytest
import torch
from torch import distributions

from pipeline.errors import InputError
from pipeline.models.vae import ARCHITECTURES, LOGVAR_BOUND, BetaVAE, VAEConfig

N_LATENTS = 8


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(input_shape, likelihood="gaussian", beta=1.0, seed=0):
    torch.manual_seed(seed)
    return BetaVAE(input_shape, N_LATENTS, likelihood, beta)


@pytest.mark.parametrize(
    ("input_shape", "likelihood", "n_convolutions"),
    [((3, 32, 32), "gaussian", 4), ((1, 28, 28), "bernoulli", 2), ((3, 64, 64), "gaussian-mixture", 4)],
)
def test_architecture_shapes_follow_the_input(input_shape, likelihood, n_convolutions):
    model = _model(input_shape, likelihood)
    convolutions = [layer for layer in model.encoder if isinstance(layer, torch.nn.Conv2d)]
    assert [layer.out_channels for layer in convolutions] == list(ARCHITECTURES[input_shape])
    assert len(convolutions) == n_convolutions
    assert all(layer.kernel_size == (4, 4) and layer.stride == (2, 2) for layer in convolutions)
    fully_connected = [layer for layer in model.encoder if isinstance(layer, torch.nn.Linear)]
    assert fully_connected[0].out_features == 256

    x = torch.rand(5, *input_shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, N_LATENTS)
    reconstruction = model.decode(mu)
    assert reconstruction.shape == (5, *input_shape)
    terms = model.loss(x, torch.Generator().manual_seed(0))
    assert terms["kl_per_dim"].shape == (N_LATENTS,)
    assert all(torch.isfinite(value).all() for value in terms.values())
    assert terms["total"].requires_grad


def test_unsupported_shapes_are_refused():
    with pytest.raises(InputError, match=r"\(3, 30, 30\) has no architecture"):
        BetaVAE((3, 30, 30), N_LATENTS)
    with pytest.raises(InputError, match="likelihood"):
        BetaVAE((3, 32, 32), N_LATENTS, likelihood="poisson")
    model = _model((3, 32, 32))
    with pytest.raises(InputError, match=r"x: shape \(2, 1, 32, 32\)"):
        model.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(InputError, match="z: shape"):
        model.decode(torch.zeros(2, N_LATENTS + 1))


def test_kl_term_matches_the_closed_form():
    model = _model((3, 32, 32))
    x = torch.randn(6, 3, 32, 32)
    terms = model.loss(x, torch.Generator().manual_seed(1))
    mu, logvar = model.encode(x)
    reference = distributions.kl_divergence(
        distributions.Normal(mu, torch.exp(0.5 * logvar)), distributions.Normal(0.0, 1.0)
    ).mean(dim=0)
    torch.testing.assert_close(terms["kl_per_dim"], reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["kl"], reference.sum(), rtol=1e-5, atol=1e-6)


def test_beta_scales_only_the_kl_term():
    x = torch.randn(4, 3, 32, 32)
    plain = _model((3, 32, 32), beta=1.0)
    weighted = _model((3, 32, 32), beta=4.0)
    weighted.load_state_dict(plain.state_dict())
    a = plain.loss(x, torch.Generator().manual_seed(3))
    b = weighted.loss(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a["reconstruction"], b["reconstruction"])
    assert a["kl"].item() > 0
    torch.testing.assert_close(b["total"] - a["total"], 3.0 * a["kl"], rtol=1e-4, atol=1e-3)


def test_gaussian_likelihood_is_half_the_squared_error():
    model = _model((3, 32, 32))
    x, mean = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    nll = model.negative_log_likelihood(x, {"mean": mean})
    torch.testing.assert_close(nll, 0.5 * ((x - mean) ** 2).sum(dim=(1, 2, 3)))


def test_bernoulli_likelihood_is_the_cross_entropy_and_needs_unit_range():
    model = _model((1, 28, 28), "bernoulli")
    x = torch.rand(2, 1, 28, 28)
    logits = torch.randn(2, 1, 28, 28)
    p = torch.sigmoid(logits)
    expected = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(model.negative_log_likelihood(x, {"logits": logits}), expected)
    z = torch.randn(2, N_LATENTS)
    torch.testing.assert_close(model.decode(z), torch.sigmoid(model.decode_parameters(z)["logits"]))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        model.loss(x * 3.0)


def test_mixture_likelihood_matches_torch_distributions():
    model = _model((3, 64, 64), "gaussian-mixture")
    x = torch.randn(2, 3, 64, 64)
    parameters = model.decode_parameters(torch.randn(2, N_LATENTS))
    assert all(value.shape == (2, 2, 3, 64, 64) for value in parameters.values())
    # Component axis last, as MixtureSameFamily wants it.
    mixture = distributions.MixtureSameFamily(
        distributions.Categorical(logits=parameters["logits"].movedim(1, -1)),
        distributions.Normal(
            parameters["means"].movedim(1, -1), torch.exp(parameters["log_scales"]).movedim(1, -1)
        ),
    )
    expected = -mixture.log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(model.negative_log_likelihood(x, parameters), expected, rtol=1e-5, atol=1e-2)
    weights = torch.softmax(parameters["logits"], dim=1)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 3, 64, 64))
    z = torch.randn(2, N_LATENTS)
    at_z = model.decode_parameters(z)
    torch.testing.assert_close(model.decode(z), (torch.softmax(at_z["logits"], 1) * at_z["means"]).sum(1))


def test_log_variance_stays_bounded_for_extreme_encoder_outputs():
    model = _model((3, 32, 32))
    with torch.no_grad():
        model.encoder[-1].bias[N_LATENTS:] = 1e6
    x = torch.randn(2, 3, 32, 32)
    _, logvar = model.encode(x)
    assert logvar.max().item() <= LOGVAR_BOUND
    assert logvar.max().item() > LOGVAR_BOUND - 1e-3
    assert math.isfinite(model.loss(x, torch.Generator().manual_seed(0))["total"].item())


def test_reconstruct_zeroes_the_factors_outside_the_mask():
    model = _model((3, 32, 32)).eval()
    x = torch.randn(3, 3, 32, 32)
    mu, _ = model.encode(x)
    keep = np.zeros(N_LATENTS, dtype=bool)
    keep[[1, 4]] = True
    expected = model.decode(mu * torch.as_tensor(keep, dtype=torch.float32))
    torch.testing.assert_close(model.reconstruct(x, keep), expected)
    torch.testing.assert_close(model.reconstruct(x), model.decode(mu))
    assert not torch.allclose(model.reconstruct(x, keep), model.decode(mu))
    with pytest.raises(InputError, match="keep_mask"):
        model.reconstruct(x, [1, 4])


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    config = VAEConfig((1, 28, 28), n_latents=16, beta=4.0, likelihood="bernoulli")
    restored = VAEConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json"))))
    assert restored == config
    model = restored.build()
    assert (model.input_shape, model.n_latents, model.beta, model.likelihood) == (
        (1, 28, 28),
        16,
        4.0,
        "bernoulli",
    )
    with pytest.raises(InputError, match="latents: unknown key"):
        VAEConfig.model_validate({**config.model_dump(mode="json"), "latents": 3})
    with pytest.raises(InputError, match="beta"):
        VAEConfig(beta=-1.0)


def _unbounded(log_variance: torch.Tensor) -> torch.Tensor:
    """The raw parameter whose soft bound (LOGVAR_BOUND · tanh(raw / LOGVAR_BOUND)) is ``log_variance``."""
    return LOGVAR_BOUND * torch.atanh(log_variance / LOGVAR_BOUND)


def test_learned_decoder_variance_gives_the_gaussian_negative_log_density():
    model = VAEConfig((3, 32, 32), n_latents=N_LATENTS, decoder_variance="learned").build()
    with torch.no_grad():
        model.decoder_log_variance.copy_(_unbounded(torch.tensor([-1.0, 0.0, 0.7])))
    x, mean = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    scale = torch.exp(0.5 * torch.tensor([-1.0, 0.0, 0.7])).view(1, 3, 1, 1)
    density = distributions.Normal(mean, scale.expand_as(mean)).log_prob(x)
    # The constant D/2 log 2π is left out, as for the unit variance.
    constant = 0.5 * math.log(2 * math.pi) * x[0].numel()
    nll = model.negative_log_likelihood(x, {"mean": mean})
    torch.testing.assert_close(nll, -density.sum(dim=(1, 2, 3)) - constant, rtol=1e-5, atol=1e-3)


def test_a_learned_variance_weighs_errors_by_how_well_a_channel_is_reconstructed():
    # At the optimum σ² equals the channel's mean squared error, so a channel reconstructed ten
    # times better pulls ten times harder per unit of squared error than with a unit variance.
    model = VAEConfig((3, 32, 32), n_latents=N_LATENTS, decoder_variance="learned").build()
    x = torch.zeros(1, 3, 32, 32)
    mean = torch.zeros(1, 3, 32, 32, requires_grad=True)
    with torch.no_grad():
        model.decoder_log_variance.copy_(_unbounded(torch.log(torch.tensor([0.1, 1.0, 1.0]))))
    model.negative_log_likelihood(x, {"mean": mean + 0.3}).sum().backward()
    gradient = mean.grad[0, :, 0, 0]
    torch.testing.assert_close(gradient[0] / gradient[1], torch.tensor(10.0), rtol=1e-3, atol=1e-3)


def test_decoder_variance_is_checked_and_old_configurations_mean_unit_variance():
    assert (
        VAEConfig.model_validate(
            {"input_shape": [3, 32, 32], "n_latents": 4, "beta": 6.0, "likelihood": "gaussian"}
        ).decoder_variance
        == "unit"
    )
    assert "decoder_log_variance" not in dict(VAEConfig((3, 32, 32), n_latents=4).build().named_parameters())
    with pytest.raises(InputError, match="decoder_variance"):
        VAEConfig((3, 32, 32), decoder_variance="estimated")
    with pytest.raises(InputError, match="needs the gaussian likelihood"):
        VAEConfig((1, 28, 28), likelihood="bernoulli", decoder_variance="learned")


def test_kl_weight_scales_only_the_kl_term():
    model = _model((3, 32, 32), beta=4.0)
    x = torch.randn(4, 3, 32, 32)
    full = model.loss(x, torch.Generator().manual_seed(3))
    warm = model.loss(x, torch.Generator().manual_seed(3), kl_weight=0.25)
    torch.testing.assert_close(full["total"] - warm["total"], 0.75 * 4.0 * full["kl"], rtol=1e-4, atol=1e-3)

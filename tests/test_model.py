"""The generative story as a Pyro model: its ELBO against hand-written torch, minibatch scaling,
generation, and clear errors for bad data."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from conftest import small_config
from inference.build import build
from models import LIKELIHOODS, PRIORS, ConfigError, build_model


def make(likelihood="bernoulli", **overrides):
    model, guide = build(small_config(likelihood=likelihood, **overrides))
    return model, guide


def binary_data(n=20, x_dim=50):
    return torch.bernoulli(torch.full((n, x_dim), 0.3))


# ---------------------------------------------------------------------------------------------
# The ELBO Pyro computes equals log p(x | z) + log p(z) - log q(z | x) written in plain torch
# ---------------------------------------------------------------------------------------------

def torch_log_joint_terms(model, guide, x, z, likelihood):
    """log p(x | z), log p(z) and log q(z | x) per data point, without Pyro."""
    hidden = guide.encoder(x)
    z_loc, z_raw = hidden[:, :2], hidden[:, 2:]
    z_scale = torch.nn.functional.softplus(z_raw) + 1e-4
    log_q = (-0.5 * ((z - z_loc) / z_scale) ** 2 - z_scale.log()
             - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prior = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    out = model.decoder(z)
    if likelihood == "bernoulli":
        log_lik = (x * torch.nn.functional.logsigmoid(out)
                   + (1 - x) * torch.nn.functional.logsigmoid(-out)).sum(-1)
    else:
        sigma = 0.1
        log_lik = (-0.5 * ((x - out) / sigma) ** 2 - math.log(sigma)
                   - 0.5 * math.log(2 * math.pi)).sum(-1)
    return log_lik, log_prior, log_q


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_matches_hand_written_torch(likelihood):
    model, guide = make(likelihood)
    x = binary_data() if likelihood == "bernoulli" else torch.rand(20, 50)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    z = guide_trace.nodes["z"]["value"]
    assert torch.equal(model_trace.nodes["z"]["value"], z)

    log_lik, log_prior, log_q = torch_log_joint_terms(model, guide, x, z, likelihood)
    expected = log_lik + log_prior - log_q
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    pyro_elbo = (model_trace.nodes["x"]["log_prob"] + model_trace.nodes["z"]["log_prob"]
                 - guide_trace.nodes["z"]["log_prob"])
    assert torch.allclose(pyro_elbo, expected, rtol=1e-5, atol=1e-4)

    # Trace_ELBO's loss for the same z (fixed by seeding) is minus the sum over data points.
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(model, guide, x)
    pyro.set_rng_seed(3)
    z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    log_lik, log_prior, log_q = torch_log_joint_terms(model, guide, x, z, likelihood)
    assert loss == pytest.approx(-(log_lik + log_prior - log_q).sum().item(), rel=1e-5)


def test_per_datapoint_log_joint_matches_hand_written_torch():
    from inference.log_weights import log_joint

    model, guide = make()
    x = binary_data(7)
    z = torch.randn(3, 7, 2)
    log_prior, log_lik, log_q = log_joint(model, x, {"z": z}, guide=guide)
    assert log_prior.shape == log_lik.shape == log_q.shape == (3, 7)
    for k in range(3):
        expected = torch_log_joint_terms(model, guide, x, z[k], "bernoulli")
        for got, want in zip((log_lik[k], log_prior[k], log_q[k]), expected):
            assert torch.allclose(got, want, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Minibatch scaling: the subsampled loss is unbiased for the full-data loss
# ---------------------------------------------------------------------------------------------

def test_minibatch_loss_is_unbiased_for_full_data_loss():
    model, guide = make()
    num_data, batch_size, num_batches = 200, 20, 500
    x = binary_data(num_data)
    with torch.no_grad():
        # The full-data loss, averaged over many z draws to shrink its own Monte Carlo error.
        elbo = Trace_ELBO(num_particles=200, vectorize_particles=True)
        full = elbo.loss(model, guide, x)
        losses = torch.tensor([
            Trace_ELBO().loss(model, guide, x[torch.randperm(num_data)[:batch_size]],
                              num_data=num_data)
            for _ in range(num_batches)])
    mean, standard_error = losses.mean().item(), losses.std().item() / num_batches ** 0.5
    # Scaling by N / B: each minibatch loss is on the scale of the full loss, not B / N of it.
    assert abs(mean) > 0.5 * abs(full)
    assert abs(mean - full) < 4 * standard_error, (mean, full, standard_error)


def test_plate_scales_log_likelihood_by_num_data_over_batch_size():
    model, guide = make()
    x = binary_data(10)
    trace = poutine.trace(model).get_trace(x, num_data=1000)
    assert trace.nodes["x"]["scale"] == pytest.approx(100.0)
    assert trace.nodes["z"]["scale"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# The story run forwards generates data
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_model_generates_data_without_observations(likelihood):
    model, _ = make(likelihood)
    x = model(batch_size=13)
    assert x.shape == (13, 50)
    if likelihood == "bernoulli":
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    trace = poutine.trace(model).get_trace(batch_size=4)
    assert not trace.nodes["x"]["is_observed"]
    assert trace.nodes["z"]["value"].shape == (4, 2)


def test_generation_is_reproducible_for_a_seed():
    model, _ = make()
    pyro.set_rng_seed(11)
    first = model(batch_size=5)
    pyro.set_rng_seed(11)
    assert torch.equal(first, model(batch_size=5))


def test_decode_gives_pixel_probabilities():
    model, _ = make()
    mean = model.decode(torch.randn(6, 2))
    assert mean.shape == (6, 50)
    assert ((mean > 0) & (mean < 1)).all()


# ---------------------------------------------------------------------------------------------
# Bad input raises a clear error
# ---------------------------------------------------------------------------------------------

def test_wrong_data_shape_is_rejected():
    model, guide = make()
    with pytest.raises(ValueError, match=r"expected data of shape \(batch_size, 50\)"):
        model(torch.zeros(4, 49))
    with pytest.raises(ValueError, match=r"flatten each data point"):
        guide(torch.zeros(4, 5, 10))


def test_nan_in_data_is_rejected():
    model, _ = make()
    x = binary_data(4)
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values \(1 of 200 entries\)"):
        model(x)


def test_integer_data_is_rejected():
    model, _ = make()
    with pytest.raises(ValueError, match="floating-point data"):
        model(torch.zeros(4, 50, dtype=torch.long))


def test_bernoulli_likelihood_rejects_grey_levels():
    model, _ = make()
    message = r"needs binary data \(every value 0 or 1\).*--binarize dynamic or static"
    with pytest.raises(ValueError, match=message):
        model(torch.rand(4, 50))


def test_num_data_smaller_than_batch_is_rejected():
    model, _ = make()
    with pytest.raises(ValueError, match=r"num_data \(3\) is smaller than the minibatch \(4\)"):
        model(binary_data(4), num_data=3)


def test_guide_needs_data():
    _, guide = make()
    with pytest.raises(ValueError, match="a guide needs data"):
        guide(None)


def test_gaussian_likelihood_needs_positive_sigma():
    with pytest.raises(ValueError, match="sigma > 0"):
        build_model(small_config(likelihood="gaussian", likelihood_options={"sigma": 0.0}))


def test_unknown_component_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown prior 'gamma'.*standard"):
        PRIORS.get("gamma")
    with pytest.raises(ConfigError, match=r"unknown prior 'mg' \(did you mean 'mog'\?\)"):
        PRIORS.get("mg")
    with pytest.raises(ConfigError, match=r"bernoulli, continuous-bernoulli, gaussian"):
        build_model(small_config(likelihood="poisson"))


def test_each_likelihood_name_gives_the_density_docs_training_md_states():
    """log p(x | z) of each registered name with its default options, against the density
    written out by hand from its definition (docs/training.md, "The parts"), at fixed decoder
    outputs f(z) chosen away from lambda = 1/2 (where torch's continuous Bernoulli switches to
    a Taylor expansion)."""
    f = torch.tensor([[-2.0, -0.5, 0.7, 1.5], [2.5, -1.2, 0.3, -3.0]])
    raw = torch.tensor([[0.1, -1.0, 2.0, -3.0], [0.5, 0.0, -0.2, 1.0]])
    binary = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    grey = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.0, 1.0, 0.25, 0.6]])
    log_2pi = math.log(2 * math.pi)

    def normal(x, loc, scale):
        return (-0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * log_2pi).sum(-1)

    lam = torch.sigmoid(f)
    log_normalizer = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    cases = {  # name: (decoder output, data, log p(x | z) by hand)
        "bernoulli": (f, binary, (binary * torch.log(lam)
                                  + (1 - binary) * torch.log1p(-lam)).sum(-1)),
        "gaussian": (f, grey, normal(grey, f, torch.tensor(0.1))),  # sigma 0.1 by default
        "gaussian-learned": (torch.cat([f, raw], -1), grey,
                             normal(grey, f, torch.nn.functional.softplus(raw) + 0.01)),
        "continuous-bernoulli": (f, grey, (log_normalizer + grey * torch.log(lam)
                                           + (1 - grey) * torch.log1p(-lam)).sum(-1)),
    }
    assert LIKELIHOODS.names() == ", ".join(sorted(cases))
    for name, (output, x, expected) in cases.items():
        log_p = LIKELIHOODS.get(name)()(output).log_prob(x)
        assert torch.allclose(log_p, expected, rtol=1e-5, atol=1e-5), name


def test_guide_distribution_is_a_diagonal_gaussian():
    _, guide = make()
    q = guide.distribution(binary_data(3))
    assert isinstance(q.base_dist, dist.Normal)
    assert q.batch_shape == (3,) and q.event_shape == (2,)
    assert (q.base_dist.scale >= 1e-4).all()

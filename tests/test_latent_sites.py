"""AIS and quadrature on Pyro models whose latent sites have any names, and several of them:
Pyro's own VAE example (sites "latent" and "obs"), a two-layer linear-Gaussian model with a
closed-form log p(x), data simulated from a model, and models they must refuse."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from conftest import small_config
from evaluation.estimators import estimate
from evaluation.log_density import GuideLogDensity, LatentLogDensity, simulate
from inference.build import build

X_DIM, Z_DIM, HIDDEN = 20, 2, 8


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, x_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, x_dim)

    def forward(self, z):
        return self.fc2(nn.functional.softplus(self.fc1(z)))


class Encoder(nn.Module):
    def __init__(self, x_dim, hidden_dim, z_dim):
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden_dim)
        self.fc_loc = nn.Linear(hidden_dim, z_dim)
        self.fc_scale = nn.Linear(hidden_dim, z_dim)

    def forward(self, x):
        hidden = nn.functional.softplus(self.fc1(x))
        return self.fc_loc(hidden), torch.exp(self.fc_scale(hidden))


class PyroExampleVAE(nn.Module):
    """The VAE of Pyro's tutorial, written as the tutorial writes it; the site names are
    parameters so that the same network can be scored under the project's names "z" and "x"."""

    def __init__(self, latent="latent", observed="obs", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = Encoder(X_DIM, HIDDEN, Z_DIM)
        self.decoder = Decoder(Z_DIM, HIDDEN, X_DIM)
        # Large weights, so that the posterior differs clearly from the prior.
        with torch.no_grad():
            self.decoder.fc2.weight.mul_(4.0)
        self.latent, self.observed = latent, observed

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], Z_DIM)))
            z_scale = x.new_ones(torch.Size((x.shape[0], Z_DIM)))
            z = pyro.sample(self.latent, dist.Normal(z_loc, z_scale).to_event(1))
            logits = self.decoder(z)
            pyro.sample(self.observed, dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample(self.latent, dist.Normal(z_loc, z_scale).to_event(1))


@pytest.fixture
def pyro_example():
    """Pyro's example VAE, its twin with the sites named "z" and "x", and binary data."""
    example, renamed = PyroExampleVAE(), PyroExampleVAE("z", "x")
    torch.manual_seed(1)
    x = torch.bernoulli(torch.full((4, X_DIM), 0.4))
    return example, renamed, x


def two_layer(z_dims=(2, 2), x_dim=4, seed=0, noise=0.5, top_noise=0.7):
    """z1 ~ N(0, I), z2 | z1 ~ N(A z1, s2^2 I), x | z2 ~ N(B z2, s^2 I), all in the data plate;
    returns the Pyro model and the exact log p(x) as a function of x: x is Gaussian with
    covariance B (A A^T + s2^2 I) B^T + s^2 I."""
    generator = torch.Generator().manual_seed(seed)
    top = torch.randn(z_dims[1], z_dims[0], generator=generator)
    bottom = torch.randn(x_dim, z_dims[1], generator=generator)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(z_dims[0]), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(z1 @ top.T, top_noise).to_event(1))
            pyro.sample("x", dist.Normal(z2 @ bottom.T, noise).to_event(1), obs=x)

    def log_marginal(x):
        latent_covariance = top @ top.T + top_noise ** 2 * torch.eye(z_dims[1])
        covariance = bottom @ latent_covariance @ bottom.T + noise ** 2 * torch.eye(x_dim)
        return dist.MultivariateNormal(torch.zeros(x_dim, dtype=torch.float64),
                                       covariance.double()).log_prob(x.double())

    def draw(num_data):
        z1 = torch.randn(num_data, z_dims[0], generator=generator)
        z2 = z1 @ top.T + top_noise * torch.randn(num_data, z_dims[1], generator=generator)
        return z2 @ bottom.T + noise * torch.randn(num_data, x_dim, generator=generator)

    model.top, model.bottom, model.top_noise, model.noise = top, bottom, top_noise, noise
    return model, log_marginal, draw


# ---------------------------------------------------------------------------------------------
# Pyro's VAE example: the names of its sites change nothing
# ---------------------------------------------------------------------------------------------

def test_quadrature_and_ais_do_not_depend_on_site_names(pyro_example):
    example, renamed, x = pyro_example
    results = {}
    for vae in (example, renamed):
        pyro.set_rng_seed(3)
        quadrature = estimate("quadrature", vae.model, vae.guide, x, None)
        pyro.set_rng_seed(3)
        ais = estimate("ais", vae.model, vae.guide, x, 16, ais_steps=50, ais_leapfrog=4)
        results[vae.latent] = quadrature.estimate, ais.estimate, ais.stderr
    for named, renamed_result in zip(results["latent"], results["z"]):
        assert torch.allclose(named, renamed_result, rtol=0, atol=1e-6)
    quadrature, ais, ais_stderr = results["latent"]
    assert torch.isfinite(quadrature).all() and torch.isfinite(ais).all()
    # Quadrature is exact to its tolerance (1e-4); a short AIS run lands within a few of its
    # standard errors (about 0.15 here), give or take a little annealing bias.
    assert ((ais - quadrature).abs() <= 4 * ais_stderr + 0.1).all(), (ais, quadrature)


def test_guide_density_of_a_pyro_guide_is_its_normal(pyro_example):
    example, _, x = pyro_example
    density = LatentLogDensity(example.model, x)
    assert density.sites == [("latent", torch.Size([Z_DIM]))]
    start = GuideLogDensity(example.guide, x, density)
    z = start.sample(3)
    assert z.shape == (3, 4, Z_DIM) and not z.requires_grad
    z = z.requires_grad_(True)
    loc, scale = example.encoder(x)
    expected = dist.Normal(loc, scale).to_event(1).log_prob(z)
    assert torch.allclose(start(z), expected, atol=1e-5)
    gradient, = torch.autograd.grad(start(z).sum(), z)
    assert torch.allclose(gradient, -(z - loc) / scale ** 2, atol=1e-4)
    draws = start.sample(4000)
    # 4000 draws: the sample mean is within 0.1 sd of loc by more than six standard errors.
    assert ((draws.mean(0) - loc).abs() < 0.1 * scale).all()


def test_guide_density_through_pyro_equals_the_guides_distribution():
    model, guide = build(small_config(z_dim=2, x_dim=20, hidden_dims=[16]))
    x = torch.bernoulli(torch.full((5, 20), 0.4))
    density = LatentLogDensity(model, x)
    direct = GuideLogDensity(guide, x, density)
    traced = GuideLogDensity(lambda data: guide(data), x, density)
    assert direct.distribution is not None and traced.distribution is None
    z = torch.randn(3, 5, 2)
    assert torch.allclose(direct(z), traced(z), atol=1e-5)
    assert traced.sample((4,)).shape == (4, 5, 2)


def test_ais_from_a_pyro_guide(pyro_example):
    example, _, x = pyro_example
    quadrature = estimate("quadrature", example.model, example.guide, x, None).estimate
    result = estimate("ais", example.model, example.guide, x, 16, ais_steps=50, ais_leapfrog=4,
                      ais_start="guide")
    assert ((result.estimate - quadrature).abs() <= 4 * result.stderr + 0.1).all()


# ---------------------------------------------------------------------------------------------
# Several latent sites: a two-layer linear-Gaussian model
# ---------------------------------------------------------------------------------------------

def test_split_and_join_follow_the_order_of_the_sites():
    model, _, draw = two_layer()
    density = LatentLogDensity(model, draw(5).float())
    assert density.sites == [("z1", torch.Size([2])), ("z2", torch.Size([2]))]
    assert density.z_dim == 4
    z = torch.randn(3, 5, 4)
    parts = density.split(z)
    assert torch.equal(parts["z1"], z[..., :2]) and torch.equal(parts["z2"], z[..., 2:])
    assert torch.equal(density.join(parts), z)
    with pytest.raises(ValueError, match="last dimension of D = 4"):
        density.split(torch.zeros(3, 5, 3))


def test_log_density_of_a_hierarchical_prior():
    model, _, draw = two_layer()
    x = draw(5).float()
    density = LatentLogDensity(model, x)
    z = torch.randn(2, 3, 5, 4)
    log_prior, log_likelihood = density(z)
    assert log_prior.shape == log_likelihood.shape == (2, 3, 5)
    z1, z2 = z[..., :2], z[..., 2:]
    expected_prior = (dist.Normal(0.0, 1.0).log_prob(z1).sum(-1)
                      + dist.Normal(z1 @ model.top.T, model.top_noise).log_prob(z2).sum(-1))
    expected_likelihood = dist.Normal(z2 @ model.bottom.T, model.noise).log_prob(x).sum(-1)
    assert torch.allclose(log_prior, expected_prior, atol=1e-4)
    assert torch.allclose(log_likelihood, expected_likelihood, atol=1e-4)


def test_prior_draws_of_several_sites_follow_the_joint_prior():
    model, _, draw = two_layer()
    density = LatentLogDensity(model, draw(2).float())
    z = density.sample_prior(4000)
    assert z.shape == (4000, 2, 4)
    flat = z.reshape(-1, 4)
    # z = (z1, z2) is Gaussian with mean 0 and covariance [[I, A^T], [A, A A^T + s2^2 I]].
    top = model.top
    covariance = torch.cat([torch.cat([torch.eye(2), top.T], 1),
                            torch.cat([top, top @ top.T + model.top_noise ** 2 * torch.eye(2)],
                                      1)])
    # 8000 draws: the sample moments are off by about sd / 90; 0.1 of the largest variance
    # is many standard errors.
    assert flat.mean(0).abs().max() < 0.1
    assert (torch.cov(flat.T) - covariance).abs().max() < 0.1 * covariance.diagonal().max()


def test_ais_over_two_latent_sites_matches_the_closed_form():
    model, log_marginal, draw = two_layer()
    x = draw(20).float()
    exact = log_marginal(x)
    result = estimate("ais", model, None, x, 64, ais_steps=200, ais_leapfrog=5)
    gap = result.estimate - exact
    # The reported s.e. of a point is about 0.1 nats (up to about 1 where the chains' weights
    # have a heavy tail), that of the mean over the 20 points about 0.04: the mean lies within
    # three of it and each point within four of its own, with 0.01-0.02 nats to spare for the
    # annealing bias of 200 steps on a 4-D Gaussian posterior.
    stderr_of_mean = result.summary()["log_px_stderr"]
    assert stderr_of_mean < 0.05
    assert gap.mean().abs() < 3 * stderr_of_mean + 0.01, (gap, stderr_of_mean)
    assert (gap.abs() <= 4 * result.stderr + 0.02).all(), (gap, result.stderr)


def test_quadrature_over_two_one_dimensional_sites_matches_the_closed_form():
    model, log_marginal, draw = two_layer(z_dims=(1, 1), x_dim=3)
    x = draw(4).float()
    result = estimate("quadrature", model, None, x, None)
    assert torch.allclose(result.estimate, log_marginal(x), atol=1e-3)
    big, _, _ = two_layer()
    with pytest.raises(ValueError, match="at most 2 latent dimensions but this model has z_dim=4 "
                       "\\(latent sites: z1 \\(2,\\), z2 \\(2,\\)\\)"):
        estimate("quadrature", big, None, x.new_zeros(2, 4), None)


# ---------------------------------------------------------------------------------------------
# Data simulated from the model
# ---------------------------------------------------------------------------------------------

def _check_simulated(model, x, z, num_data, x_dim, z_dim):
    assert x.shape == (num_data, x_dim) and z.shape == (num_data, z_dim)
    density = LatentLogDensity(model, x)
    _, at_truth = density(z.unsqueeze(0))
    _, at_prior = density(density.sample_prior(10))
    assert torch.isfinite(at_truth).all()
    # The latents that made x explain it better than fresh draws from the prior: by about a
    # nat for these decoders, where the difference of the means has a s.e. of about 0.2.
    assert at_truth.mean() > at_prior.mean() + 0.5


def test_simulate_from_a_project_vae():
    model, _ = build(small_config(z_dim=2, x_dim=20, hidden_dims=[16]))
    with torch.no_grad():
        # A decoder whose output depends clearly on z (the random start's barely does).
        model.decoder[-1].weight.mul_(5.0)
    pyro.set_rng_seed(5)
    x, z = simulate(model, 200)
    _check_simulated(model, x, z, 200, 20, 2)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    # The same draws as the model telling its story forwards (finding the sites draws nothing).
    pyro.set_rng_seed(5)
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(batch_size=200)
    assert torch.equal(x, trace.nodes["x"]["value"]) and torch.equal(z, trace.nodes["z"]["value"])


def test_simulate_from_pyro_example_needs_a_data_shape(pyro_example):
    example, _, data = pyro_example
    with pytest.raises(ValueError, match="pass like=<data of the model's shape>"):
        simulate(example.model, 10)
    x, z = simulate(example.model, 200, like=data[:1])
    _check_simulated(example.model, x, z, 200, X_DIM, Z_DIM)
    assert simulate(example.model, 3, like=data[0])[0].shape == (3, X_DIM)


def test_simulate_from_two_sites_gives_their_joint():
    model, _, draw = two_layer()
    x, z = simulate(model, 2000, like=draw(1))
    # x = B z2 + noise: the residual of x given the returned z2 has the noise's spread.
    residual = x - z[:, 2:] @ model.bottom.T
    assert abs(residual.std().item() - model.noise) < 0.03
    assert abs(z[:, :2].std().item() - 1.0) < 0.05


# ---------------------------------------------------------------------------------------------
# Models AIS and quadrature cannot take
# ---------------------------------------------------------------------------------------------

def _discrete_latent_model(x):
    with pyro.plate("data", x.shape[0]):
        switch = pyro.sample("switch", dist.Bernoulli(x.new_full((x.shape[0],), 0.5)))
        pyro.sample("x", dist.Normal(switch.unsqueeze(-1).expand(x.shape), 1.0).to_event(1),
                    obs=x)


def _positive_latent_model(x):
    with pyro.plate("data", x.shape[0]):
        scale = pyro.sample("scale", dist.Gamma(x.new_ones(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(0.0, scale.unsqueeze(-1).expand(x.shape)).to_event(1),
                    obs=x)


def _no_latent_model(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(torch.zeros_like(x), 1.0).to_event(1), obs=x)


def _global_latent_model(x):
    shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(shift.expand(x.shape), 1.0).to_event(1), obs=x)


def _two_observed_sites_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.expand(x.shape), 1.0).to_event(1), obs=x)
        pyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=x[..., :1])


def test_models_without_continuous_per_point_latents_are_refused():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="need continuous latents; the latent site 'switch' is "
                       "discrete .* use importance sampling"):
        LatentLogDensity(_discrete_latent_model, x)
    with pytest.raises(ValueError, match="continuous"):
        estimate("ais", _discrete_latent_model, None, x, 4, ais_steps=2)
    with pytest.raises(ValueError, match="whole real line; the latent site 'scale' has support"):
        estimate("quadrature", _positive_latent_model, None, x, None)
    with pytest.raises(ValueError, match="this model has no latent site"):
        LatentLogDensity(_no_latent_model, x)
    with pytest.raises(ValueError, match="latent site 'shift' is not inside a vectorized "
                       "pyro.plate\\('data', N\\)"):
        LatentLogDensity(_global_latent_model, x)
    with pytest.raises(ValueError, match="one observed site, the data x; this model has 2"):
        simulate(_two_observed_sites_model, 5, like=x)
    with pytest.raises(ValueError, match="positive whole number of points, got 0"):
        simulate(_two_observed_sites_model, 0, like=x)


def test_a_guide_over_other_sites_is_refused(pyro_example):
    example, renamed, x = pyro_example
    density = LatentLogDensity(example.model, x)
    with pytest.raises(ValueError, match="the guide's latent sites \\{'z': \\(2,\\)\\} differ "
                       "from the model's \\{'latent': \\(2,\\)\\}"):
        GuideLogDensity(renamed.guide, x, density)

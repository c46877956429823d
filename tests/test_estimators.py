"""Estimators of log p(x) against known answers: the linear-Gaussian model (exact), a nonlinear
VAE with a 2-D latent (quadrature), invariants, and bad inputs."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from evaluation.ais import bdmc
from evaluation.estimators import ESTIMATORS, estimate
from evaluation.log_density import LatentLogDensity
from conftest import linear_gaussian, small_config
from evaluation.quadrature import quadrature_log_marginal
from inference.build import build
from models.data import load_dataset
from inference.guides import DiagonalGaussianGuide, ExactPosteriorGuide, Guide
from inference.log_weights import log_importance_weights, log_joint
from models.base.config import DataConfig
from models.linear_gaussian import log_marginal, posterior


class WidePosteriorGuide(Guide):
    """The exact posterior with its covariance inflated: a good but imperfect proposal."""

    def __init__(self, model, inflation=2.0):
        super().__init__(model.x_dim, model.z_dim)
        self._model, self.inflation = (model,), inflation

    def distribution(self, x):
        exact = posterior(self._model[0], x)
        return dist.MultivariateNormal(exact.loc, exact.covariance_matrix * self.inflation)


@pytest.fixture
def ppca():
    model = linear_gaussian()
    with torch.no_grad():
        x = model(batch_size=12)
    return model, x, log_marginal(model, x)


def within(result, reference, num_stderr=4.0, slack=0.02):
    """Each per-point estimate agrees with the reference within a few standard errors."""
    gap = (result.estimate - reference).abs()
    return bool((gap <= num_stderr * result.stderr + slack).all()), gap.max().item()


# ---------------------------------------------------------------------------------------------
# Linear-Gaussian model: the exact answer is known
# ---------------------------------------------------------------------------------------------

def test_exact_matches_direct_multivariate_normal(ppca):
    model, x, _ = ppca
    weight, bias = model.decoder.weight.double(), model.decoder.bias.double()
    covariance = weight @ weight.T + 0.25 * torch.eye(10, dtype=torch.float64)
    direct = dist.MultivariateNormal(bias, covariance).log_prob(x.double())
    result = estimate("exact", model, None, x, None)
    assert torch.allclose(result.estimate, direct, atol=1e-9)
    assert (result.stderr == 0).all()


def test_exact_refuses_nonlinear_models():
    model, guide = build(small_config(z_dim=2, x_dim=10, hidden_dims=[8]))
    with pytest.raises(ValueError, match="the exact log p\\(x\\) needs a linear-Gaussian model"):
        estimate("exact", model, guide, torch.zeros(3, 10), None)


def test_importance_with_exact_posterior_has_zero_spread(ppca):
    model, x, exact = ppca
    result = estimate("importance", model, ExactPosteriorGuide(model), x, 50)
    assert torch.allclose(result.estimate, exact, atol=1e-3)
    log_weights = log_importance_weights(model, ExactPosteriorGuide(model), x, 50)
    assert (log_weights.std(0) < 1e-3).all()
    assert torch.allclose(result.ess, torch.full_like(result.ess, 50.0), rtol=1e-3)


@pytest.mark.parametrize("name,num_samples", [("importance", 2000), ("mixture", 2000),
                                              ("prior", 20000)])
def test_sampling_estimators_agree_with_exact(ppca, name, num_samples):
    model, x, exact = ppca
    result = estimate(name, model, WidePosteriorGuide(model), x, num_samples)
    ok, worst = within(result, exact)
    assert ok, (name, worst, result.stderr.max().item())
    if name != "prior":
        # A proposal wider than the posterior has light-tailed weights. (Prior weights are
        # bounded but so concentrated that PSIS rightly flags many of them at this K.)
        assert result.summary()["khat_frac_above_0_7"] == 0.0


def test_ais_agrees_with_exact(ppca):
    model, x, exact = ppca
    result = estimate("ais", model, None, x, 8, ais_steps=1000, ais_leapfrog=5)
    ok, worst = within(result, exact, slack=0.1)
    assert ok, (worst, result.stderr)
    # The mean over the points within 4 Monte Carlo standard errors of the mean, and a little
    # for AIS's downward bias at 1000 steps (a stochastic lower bound).
    summary = result.summary()
    assert abs(summary["log_px_mean"] - exact.mean().item()) < \
        4 * summary["log_px_stderr"] + 0.05, summary
    assert 0.3 < result.info["acceptance"].mean().item() < 0.95


def test_ais_started_from_the_guide_agrees_with_exact(ppca):
    model, x, exact = ppca
    result = estimate("ais", model, WidePosteriorGuide(model), x, 8, ais_steps=100,
                      ais_leapfrog=5, ais_start="guide")
    ok, worst = within(result, exact, slack=0.05)
    assert ok, worst


def test_quadrature_agrees_with_exact_to_a_thousandth_of_a_nat(ppca):
    model, x, exact = ppca
    result = estimate("quadrature", model, None, x, None)
    assert (result.estimate - exact).abs().max() < 1e-3
    one_dim = linear_gaussian(z_dim=1)
    with torch.no_grad():
        x1 = one_dim(batch_size=5)
    values, _, _ = quadrature_log_marginal(one_dim, x1)
    assert (values - log_marginal(one_dim, x1)).abs().max() < 1e-3


def test_bdmc_sandwiches_the_exact_value():
    model = linear_gaussian()
    pyro.set_rng_seed(4)
    result = bdmc(model, 10, num_chains=4, num_steps=1000, num_leapfrog=5)
    exact = log_marginal(model, result["x"])
    # Both bounds are stochastic: on average they bracket log p(x), up to their Monte Carlo
    # error (about 0.05 nats for the mean of 10 points here), and the gap is small.
    assert result["lower"].mean() <= exact.mean() + 0.1
    assert result["upper"].mean() >= exact.mean() - 0.1
    assert result["gap"].mean() < 0.3


class OffsetGuide(Guide):
    """The exact posterior moved by ``shift`` posterior standard deviations along its first
    axis, with its covariance shrunk by ``shrink``: a poor proposal, narrower than the
    posterior and beside it, which importance sampling alone gets wrong by a nat or more."""

    def __init__(self, model, shift=2.0, shrink=0.3):
        super().__init__(model.x_dim, model.z_dim)
        self._model, self.shift, self.shrink = (model,), shift, shrink

    def distribution(self, x):
        exact = posterior(self._model[0], x)
        return dist.MultivariateNormal(exact.loc + self.shift * exact.scale_tril[..., 0],
                                       scale_tril=exact.scale_tril * math.sqrt(self.shrink))


def test_ais_from_the_guide_converges_to_the_exact_value_as_the_steps_grow():
    model = linear_gaussian()
    torch.manual_seed(1)
    with torch.no_grad():
        x = model(batch_size=20)
    exact = log_marginal(model, x)
    guide = OffsetGuide(model)
    errors, stderrs = [], []
    for steps in (1, 30, 300):
        pyro.set_rng_seed(0)
        result = estimate("ais", model, guide, x, 16, ais_steps=steps, ais_leapfrog=5,
                          ais_start="guide")
        errors.append((result.estimate - exact).mean().item())
        stderrs.append(result.summary()["log_px_stderr"])
    # Measured: -1.25, +0.05, +0.04 nats (s.e. of the mean 0.13, 0.06, 0.03): one step is
    # importance sampling from the poor guide, a nat low; the annealing removes that bias.
    assert errors[0] < -0.8
    assert abs(errors[1]) < abs(errors[0]) / 4
    assert abs(errors[2]) <= 3 * stderrs[2] + 0.02, (errors, stderrs)


def test_bdmc_from_the_guide_brackets_the_exact_value_and_its_gap_shrinks_with_the_steps():
    """The reverse chains end at the guide's q(z | x), where the forward ones begin: the gap
    is that of the setting that made a guide-started estimate."""
    model = linear_gaussian()
    guide = OffsetGuide(model)
    gaps = []
    for steps in (3, 300):
        pyro.set_rng_seed(2)
        result = bdmc(model, 30, num_chains=8, guide=guide, start="guide", num_steps=steps,
                      num_leapfrog=5)
        exact = log_marginal(model, result["x"]).mean().item()
        lower, upper = result["lower"].mean().item(), result["upper"].mean().item()
        # stochastic bounds: each on its side up to the Monte Carlo error of a mean over 30
        # points (measured about 0.03 nats at 300 steps)
        assert lower <= exact + 0.1 and upper >= exact - 0.1, (steps, lower, exact, upper)
        gaps.append(upper - lower)
    # measured over seeds 2-5: 0.45-0.93 nats at 3 steps, 0.01-0.20 at 300
    assert gaps[0] > 0.3 and gaps[1] < 0.25 and gaps[1] < gaps[0] / 2, gaps
    with pytest.raises(ValueError, match="needs a guide"):
        bdmc(model, 3, guide=None, start="guide")
    with pytest.raises(ValueError, match="unknown AIS start 'encoder'; valid: prior, guide"):
        bdmc(model, 3, guide=guide, start="encoder")


# ---------------------------------------------------------------------------------------------
# A nonlinear VAE with a 2-D latent: quadrature is the reference
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nonlinear():
    """The true story of the synthetic data and a guide trained on its data by SVI."""
    pyro.set_rng_seed(0)
    dataset = load_dataset(DataConfig(dataset="synthetic", synthetic_num_train=1000,
                                      synthetic_z_dim=2, synthetic_x_dim=30))
    model = dataset.true_model
    guide = DiagonalGaussianGuide(30, 2, [64])
    pyro.clear_param_store()
    svi = SVI(model, guide, Adam({"lr": 3e-3}), Trace_ELBO())
    train = dataset.train.data()
    for step in range(600):
        svi.step(train[torch.randint(0, 1000, (100,))], num_data=1000)
    pyro.clear_param_store()
    return model, guide.eval().requires_grad_(False), dataset.test.data()[:15]


def test_importance_and_ais_agree_with_quadrature_on_a_nonlinear_vae(nonlinear):
    model, guide, x = nonlinear
    reference = estimate("quadrature", model, guide, x, None)
    assert (reference.stderr < 1e-3).all()
    importance = estimate("importance", model, guide, x, 5000)
    ok, worst = within(importance, reference.estimate, slack=0.02)
    assert ok, worst
    ais = estimate("ais", model, guide, x, 8, ais_steps=300, ais_leapfrog=5)
    ok, worst = within(ais, reference.estimate, slack=0.1)
    assert ok, worst
    assert abs(ais.estimate.mean() - reference.estimate.mean()) < 0.1


def test_elbo_is_below_importance_and_importance_grows_with_k(nonlinear):
    model, guide, x = nonlinear
    means = {}
    for k in (1, 10, 100):
        repeats = [log_importance_weights(model, guide, x, k) for _ in range(20)]
        means[k] = torch.stack([torch.logsumexp(w.double(), 0) - math.log(k)
                                for w in repeats]).mean().item()
    assert means[1] < means[10] < means[100] + 1e-3, means
    pyro.set_rng_seed(1)
    elbo = estimate("elbo", model, guide, x, 100).estimate.mean()
    pyro.set_rng_seed(1)
    iwae = estimate("importance", model, guide, x, 100).estimate.mean()
    assert elbo <= iwae


def test_same_seed_gives_the_same_numbers(nonlinear):
    model, guide, x = nonlinear
    first, second = [], []
    for store in (first, second):
        for name in ("importance", "prior", "mixture", "ais"):
            pyro.set_rng_seed(7)
            options = {"ais_steps": 10} if name == "ais" else {}
            store.append(estimate(name, model, guide, x[:4], 20, **options).estimate)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Identities of the machinery
# ---------------------------------------------------------------------------------------------

class RecordingGuide(DiagonalGaussianGuide):
    """Remembers the z it drew last, to recompute the weights by hand."""

    def forward(self, x, num_data=None, batch_size=None):
        self.last_z = super().forward(x, num_data, batch_size)
        return self.last_z


def test_vectorized_log_weights_match_hand_written_torch():
    model, _ = build(small_config(z_dim=3, x_dim=20, hidden_dims=[16]))
    guide = RecordingGuide(20, 3, [16])
    x = torch.bernoulli(torch.full((6, 20), 0.4))
    log_weights = log_importance_weights(model, guide, x, 4)
    z = guide.last_z
    assert z.shape == (4, 6, 3)
    z_loc, z_scale = guide.encode(x)
    log_q = torch.distributions.Normal(z_loc, z_scale).log_prob(z).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    logits = model.decoder(z)
    log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x.expand_as(logits), reduction="none").sum(-1)
    assert torch.allclose(log_weights, log_lik + log_prior - log_q, atol=1e-4)


class DeltaGuide(DiagonalGaussianGuide):
    """A deterministic proposal z = z_loc(x), so that every chunking sees the same draws."""

    def distribution(self, x):
        z_loc, _ = self.encode(x)
        return dist.Delta(z_loc, event_dim=1)


@pytest.mark.parametrize("budget", [1, 5, 7, 40, 10 ** 6])
def test_chunking_does_not_change_results(budget):
    model, _ = build(small_config(z_dim=2, x_dim=20, hidden_dims=[16]))
    guide = DeltaGuide(20, 2, [16])
    x = torch.bernoulli(torch.full((9, 20), 0.4))
    whole = log_importance_weights(model, guide, x, 6, max_batch_elements=10 ** 6)
    chunked = log_importance_weights(model, guide, x, 6, max_batch_elements=budget)
    # Equal up to float rounding: matrix products of other shapes may round differently.
    assert torch.allclose(whole, chunked, rtol=0, atol=1e-5)
    assert not torch.equal(whole[:, 0], whole[:, 1])


def test_quadrature_chunking_does_not_change_results():
    model, _ = build(small_config(z_dim=2, x_dim=20, hidden_dims=[16]))
    x = torch.bernoulli(torch.full((3, 20), 0.4))
    assert torch.allclose(
        quadrature_log_marginal(model, x, max_batch_elements=10 ** 6)[0],
        quadrature_log_marginal(model, x, max_batch_elements=500)[0], atol=1e-9)


def test_model_parts_and_pyro_trace_give_the_same_log_density():
    model, _ = build(small_config(z_dim=2, x_dim=20, hidden_dims=[16]))
    x = torch.bernoulli(torch.full((5, 20), 0.4))
    z = torch.randn(3, 5, 2)
    direct = LatentLogDensity(model, x)(z)
    traced = LatentLogDensity(model, x, use_model_parts=False)(z)
    for a, b in zip(direct, traced):
        assert torch.allclose(a, b, atol=1e-5)
    # log_joint is the traced path: its log p(z) is the standard normal's.
    log_prior, _ = log_joint(model, x, {"z": z})
    assert torch.allclose(log_prior, torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1),
                          atol=1e-5)


def test_prior_draws_through_the_trace_follow_the_prior():
    model, _ = build(small_config(z_dim=2, x_dim=20, hidden_dims=[16]))
    x = torch.bernoulli(torch.full((4, 20), 0.4))
    z = LatentLogDensity(model, x, use_model_parts=False).sample_prior(5000)
    assert z.shape == (5000, 4, 2)
    assert z.mean().abs() < 0.03 and (z.std() - 1).abs() < 0.03


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

def test_bad_inputs_get_clear_errors(ppca):
    model, x, _ = ppca
    guide = WidePosteriorGuide(model)
    with pytest.raises(ValueError, match="number of samples K must be a positive integer"):
        estimate("importance", model, guide, x, 0)
    with pytest.raises(ValueError, match="unknown estimator 'harmonic'; valid estimators: ais, "
                       "elbo, exact, importance, mixture, prior, quadrature"):
        estimate("harmonic", model, guide, x, 10)
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate("importance", model, guide, bad, 10)
    with pytest.raises(ValueError, match="mixture weight a must lie in \\(0, 1\\)"):
        estimate("mixture", model, guide, x, 10, mixture_weight=1.5)
    with pytest.raises(ValueError, match="unknown AIS schedule 'cosine'"):
        estimate("ais", model, guide, x, 2, ais_schedule="cosine")
    with pytest.raises(ValueError, match="the importance estimator has no option 'ais_steps'; "
                       "its options: max_batch_elements"):
        estimate("importance", model, guide, x, 10, ais_steps=10)
    big = linear_gaussian(z_dim=3)
    with pytest.raises(ValueError, match="quadrature integrates over at most 2 latent "
                       "dimensions but this model has z_dim=3"):
        estimate("quadrature", big, None, torch.zeros(2, 10), None)
    assert set(ESTIMATORS) == {"elbo", "importance", "prior", "mixture", "ais", "exact",
                               "quadrature"}


class _NaNFarOut(dist.TorchDistribution):
    """A distribution that is ``base`` except that its log density is NaN more than ``reach``
    standard deviations from its mean, as a flow guide's inverse overflows far outside q."""

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, base, reach):
        self.base, self.reach = base, reach
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def sample(self, sample_shape=torch.Size()):
        return self.base.sample(sample_shape)

    def log_prob(self, value):
        log_density = self.base.log_prob(value)
        spread = self.base.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
        far = ((value - self.base.mean).abs() / spread).amax(-1) > self.reach
        return torch.where(far, torch.full_like(log_density, math.nan), log_density)


class NaNFarOutGuide(ExactPosteriorGuide):
    def distribution(self, x):
        return _NaNFarOut(super().distribution(x), reach=8.0)


def test_the_mixture_takes_a_guide_whose_density_fails_far_outside_it():
    # Prior draws far outside q (8 posterior standard deviations and more, where q is below
    # e^-32 of its peak) get q(z) = 0 instead of NaN: the estimate is that of the guide whose
    # density is computed everywhere, to rounding, and the far draws are many (the posterior
    # is narrow), so the NaN path is taken.
    model = linear_gaussian()
    with torch.no_grad():
        x = model(batch_size=8)
    exact_guide, failing = ExactPosteriorGuide(model), NaNFarOutGuide(model)
    estimates = []
    for guide in (exact_guide, failing):
        pyro.set_rng_seed(3)
        estimates.append(estimate("mixture", model, guide, x, 400).estimate)
    assert torch.isfinite(estimates[1]).all()
    assert torch.allclose(estimates[1], estimates[0], atol=1e-6)
    pyro.set_rng_seed(3)
    latents = dist.Normal(0.0, 1.0).sample((400, 8, model.z_dim))
    posterior_sd = failing.distribution(x).base.covariance_matrix.diagonal(
        dim1=-2, dim2=-1).sqrt()
    assert ((latents - failing.distribution(x).base.mean).abs() / posterior_sd
            ).amax(-1).gt(8).float().mean() > 0.2

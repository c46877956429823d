"""Swappable priors, guides, likelihoods, architectures and objectives: exact densities against
independent computations, every valid combination end to end, and the user extension point."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

from pyro.poutine.messenger import Messenger

from conftest import SMALL, linear_gaussian, refused, run_main, small_config
from evaluation.estimators import estimate, options_for
from evaluation.gaps import gap_decomposition, summarize_gaps
from inference.build import build, build_guide
from inference.checkpoint import load_checkpoint, restore, save_checkpoint
from models.data import load_dataset
from inference.guides import (DiagonalGaussianGuide, FullCovarianceGuide, IAFGuide, LocalGuide)
from inference.local import fit_local_guide
from inference.log_weights import log_importance_weights, log_joint
from inference.objectives import IWAELoss, ScaleLatents, kl_weight, make_objective, warmed
from inference.training import fit
from models import ConfigError
from models.base.config import TrainingConfig
from models.distributions import (DiagonalNormalMixture, LeanMultivariateNormal, LeanNormal,
                                  StandardNormal)
from models.likelihoods import (ContinuousBernoulliLikelihood, LearnedGaussianLikelihood)
from models.linear_gaussian import log_marginal, posterior
from models.networks import ConvDecoder, ConvEncoder
from models.priors import FlowPrior, MixtureOfGaussiansPrior, VampPrior

PRIORS = ("standard", "mog", "vamp", "flow")
GUIDES = ("diagonal", "fullcov", "iaf", "local")
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian-learned", "continuous-bernoulli")


def data_for(likelihood, num_data=12, x_dim=50):
    x = torch.rand(num_data, x_dim)
    return x.bernoulli() if likelihood == "bernoulli" else x


# ---------------------------------------------------------------------------------------------
# Priors: exact log densities

def test_a_diagonal_normal_mixture_draws_each_component_with_its_weight():
    # Two far-apart components in two dimensions, weights 0.3 and 0.7: the share of draws near
    # each is its weight, and the draws near each have its mean and scales (four standard
    # errors of 200,000 draws), also batched by expand.
    locs = torch.tensor([[-20.0, 5.0], [20.0, -5.0]])
    scales = torch.tensor([[1.0, 0.5], [2.0, 3.0]])
    mixture = DiagonalNormalMixture(torch.tensor([0.3, 0.7]).log(), locs, scales)
    pyro.set_rng_seed(0)
    z = mixture.expand((2,)).sample((100000,)).reshape(-1, 2)
    assert z.shape == (200000, 2)
    first = z[:, 0] < 0
    share = first.double().mean().item()
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 200000)
    for component, points in ((0, z[first]), (1, z[~first])):
        count = points.shape[0]
        assert torch.allclose(points.mean(0), locs[component],
                              atol=4 * scales[component].max().item() / math.sqrt(count))
        assert torch.allclose(points.std(0), scales[component], rtol=4 / math.sqrt(2 * count))


def test_mog_log_prob_matches_the_mixture_formula():
    prior = MixtureOfGaussiansPrior(z_dim=3, num_components=4)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(4))
        prior.raw_scales.copy_(torch.randn(4, 3))
    z = torch.randn(7, 5, 3)
    log_weights = torch.log_softmax(prior.logits, 0)
    scales = prior.scales()
    by_component = torch.stack([
        log_weights[k] + (-0.5 * ((z - prior.locs[k]) / scales[k]) ** 2
                          - scales[k].log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        for k in range(4)])
    expected = torch.logsumexp(by_component, 0)
    assert torch.allclose(prior().log_prob(z), expected, atol=1e-5)
    assert prior().sample((6,)).shape == (6, 3)


def float64_mixture(logits, locs, scales):
    return dist.MixtureSameFamily(dist.Categorical(logits=logits.double()),
                                  dist.Normal(locs.double(), scales.double()).to_event(1))


def test_diagonal_mixture_log_prob_by_matrix_products_matches_broadcasting_in_float64():
    logits, locs, scales = torch.randn(30), 2 * torch.randn(30, 8), 0.05 + torch.rand(30, 8)
    # A narrow component far from the origin, scored at points right next to it: the case where
    # the expanded square cancels large terms.
    locs[0], scales[0] = 8.0, 1e-3
    z = torch.cat([2 * torch.randn(40, 8), locs[0] + 1e-3 * torch.randn(5, 8)]).reshape(9, 5, 8)
    mixture = DiagonalNormalMixture(logits, locs, scales)
    expected = float64_mixture(logits, locs, scales).log_prob(z.double())
    assert mixture.log_prob(z).dtype == torch.float32
    assert torch.allclose(mixture.log_prob(z).double(), expected, rtol=1e-6, atol=1e-4)
    assert expected.max() > 30  # the narrow component was scored where it is high


def test_diagonal_mixture_expands_like_a_pyro_distribution_and_keeps_gradients():
    locs = torch.randn(4, 3, requires_grad=True)
    mixture = DiagonalNormalMixture(torch.zeros(4), locs, torch.ones(4, 3))
    expanded = mixture.expand([2, 5])
    z = torch.randn(7, 1, 5, 3)
    assert isinstance(expanded, DiagonalNormalMixture) and expanded.batch_shape == (2, 5)
    assert expanded.log_prob(z).shape == (7, 2, 5)
    assert expanded.sample().shape == (2, 5, 3)
    mixture.log_prob(z).sum().backward()
    reference = torch.randn(4, 3).copy_(locs.detach()).requires_grad_()
    float64_mixture(torch.zeros(4), reference, torch.ones(4, 3)).log_prob(z.double()).sum() \
        .backward()
    assert torch.allclose(locs.grad.double(), reference.grad.double(), atol=1e-4)
    with pytest.raises(ValueError, match=r"logits \(K,\), locs and scales \(K, D\)"):
        DiagonalNormalMixture(torch.zeros(3), torch.zeros(4, 2), torch.ones(4, 2))


def test_the_standard_normal_is_torchs_normal_bit_for_bit_and_broadcasts_like_it():
    z = 3 * torch.randn(7, 4, 5, 3)
    z[0, 0, 0, 0] = -0.0
    ours = StandardNormal(torch.zeros(3), torch.ones(3)).to_event(1).expand([4, 5])
    torchs = dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1).expand([4, 5])
    assert isinstance(ours.base_dist, StandardNormal) and ours.batch_shape == (4, 5)
    assert torch.equal(ours.log_prob(z), torchs.log_prob(z))
    assert ours.log_prob(z[0, 0, 0]).shape == (4, 5)      # one z broadcast over the batch
    torch.manual_seed(3)
    drawn = ours.rsample([7])
    torch.manual_seed(3)
    assert torch.equal(drawn, torchs.rsample([7])) and drawn.shape == (7, 4, 5, 3)
    with pytest.raises(ValueError, match="takes loc 0 and scale 1"):
        StandardNormal(torch.zeros(3), 2 * torch.ones(3), validate_args=True)


@pytest.mark.parametrize("loc_shape, scale_shape", [((5, 3), (5, 3)), ((5, 3), ()), ((), (5, 3))])
def test_the_lean_normal_is_torchs_normal_bit_for_bit(loc_shape, scale_shape):
    torch.manual_seed(0)
    loc = 2 * torch.randn(loc_shape)
    scale = torch.rand(scale_shape) * 3 + 1e-4
    z = 40 * torch.randn(7, 5, 3)
    z[0, 0, 0] = -0.0
    for batch in ([5], [7, 5], [2, 7, 5]):     # as given, and expanded to particles, twice
        ours = LeanNormal(loc, scale).to_event(1).expand(batch)
        torchs = dist.Normal(loc, scale).to_event(1).expand(batch)
        assert isinstance(ours.base_dist, LeanNormal) and ours.batch_shape == tuple(batch)
        assert torch.equal(ours.log_prob(z), torchs.log_prob(z)), batch
        torch.manual_seed(3)
        drawn = ours.rsample([4])
        torch.manual_seed(3)
        assert torch.equal(drawn, torchs.rsample([4])) and drawn.shape == (4, *batch, 3)
    expanded = LeanNormal(loc, scale).expand([7, 5, 3])
    assert torch.equal(expanded.log_prob(z[0, 0, 0]), dist.Normal(loc, scale).expand(
        [7, 5, 3]).log_prob(z[0, 0, 0]))                  # one z broadcast over the batch
    with pytest.raises(ValueError, match="scale"):
        LeanNormal(loc, -scale, validate_args=True)


def test_the_lean_multivariate_normal_draws_torchs_numbers_and_traces_without_a_check():
    torch.manual_seed(0)
    loc = torch.randn(5, 3)
    scale_tril = torch.randn(5, 3, 3).tril(-1) + torch.diag_embed(torch.rand(5, 3) + 0.1)
    ours = LeanMultivariateNormal(loc, scale_tril=scale_tril).expand([7, 5])
    torchs = dist.MultivariateNormal(loc, scale_tril=scale_tril).expand([7, 5])
    assert isinstance(ours, LeanMultivariateNormal)
    torch.manual_seed(3)
    drawn = ours.rsample([4])
    torch.manual_seed(3)
    assert torch.equal(drawn, torchs.rsample([4])) and drawn.shape == (4, 7, 5, 3)
    assert torch.equal(ours.log_prob(drawn), torchs.log_prob(drawn))
    # Traced, torch's sampler calls normal(zeros, ones), whose check of the ones waits for a
    # GPU at every draw; this one draws with randn.
    graph = torch.jit.trace(lambda m: LeanMultivariateNormal(m, scale_tril=scale_tril).rsample(),
                            (loc,), check_trace=False).graph
    assert "aten::normal" not in str(graph) and "aten::randn" in str(graph)


def test_mog_components_start_as_unit_gaussians():
    assert torch.allclose(MixtureOfGaussiansPrior(2, 3).scales(), torch.ones(3, 2), atol=1e-3)


def test_vamp_prior_is_the_average_of_encoder_densities_at_the_pseudo_inputs():
    guide = DiagonalGaussianGuide(x_dim=6, z_dim=2, hidden_dims=[8])
    prior = VampPrior(z_dim=2, guide=guide, x_dim=6, num_components=5)
    with torch.no_grad():
        prior.pseudo_inputs.copy_(torch.rand(5, 6))
    z = torch.randn(4, 3, 2)
    per_input = torch.stack([guide.distribution(prior.pseudo_inputs[k:k + 1]).log_prob(z)
                             for k in range(5)])
    expected = torch.logsumexp(per_input, 0) - math.log(5)
    assert torch.allclose(prior().log_prob(z), expected, atol=1e-5)


def test_vamp_prior_shares_the_encoder_and_svi_trains_it_once():
    config = small_config(prior="vamp", prior_options={"num_components": 7})
    model, guide = build(config)
    assert not any(p is q for p in model.parameters() for q in guide.parameters())
    x = data_for("bernoulli")
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    before = {name: p.detach().clone() for name, p in guide.named_parameters()}
    svi.step(x)
    store = pyro.get_param_store()
    names = list(store.keys())
    assert "model$$$prior.pseudo_inputs" in names
    # One entry per encoder weight, owned by the guide, even though the model uses it too.
    assert sum(name.startswith("guide$$$encoder") for name in names) == len(before)
    assert not any(name.startswith("model$$$prior.encoder") for name in names)
    # The prior's term alone moves the encoder: train with a guide that does not use it.
    pyro.clear_param_store()

    def fixed_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    before = {name: p.detach().clone() for name, p in guide.named_parameters()}
    SVI(model, fixed_guide, Adam({"lr": 1e-2}), Trace_ELBO()).step(x)
    assert any(not torch.equal(before[name], p) for name, p in guide.named_parameters())


def test_vamp_prior_needs_an_amortized_guide():
    with pytest.raises(ValueError, match="vamp prior needs an amortized guide"):
        VampPrior(2, None, 6)


def flow_prior_2d():
    torch.manual_seed(3)
    prior = FlowPrior(z_dim=2, num_flows=3, flow_hidden=16)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return prior


def test_flow_prior_density_integrates_to_one_on_a_grid():
    prior = flow_prior_2d()
    edges = torch.linspace(-10, 10, 801)
    step = (edges[1] - edges[0]).item()
    z = torch.stack(torch.meshgrid(edges, edges, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = prior().log_prob(z).exp().sum().item() * step ** 2
    assert abs(mass - 1.0) < 5e-3


def test_flow_prior_sample_and_log_prob_agree_by_change_of_variables():
    prior = flow_prior_2d()
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)

    def push(e):
        # The sampling direction, layer by layer, as the transformed distribution defines it.
        for layer in prior.layers:
            e = layer.inv(e)
        return e

    for _ in range(5):
        e = torch.randn(2)
        z = push(e).detach()
        jacobian = torch.autograd.functional.jacobian(push, e)
        expected = base.log_prob(e) - torch.linalg.slogdet(jacobian)[1]
        assert torch.allclose(prior().log_prob(z.clone()), expected, atol=1e-4)
    assert prior().sample((9,)).shape == (9, 2)


# ---------------------------------------------------------------------------------------------
# Guides: exact log densities of their own samples

def test_fullcov_log_prob_matches_the_gaussian_formula():
    guide = FullCovarianceGuide(x_dim=6, z_dim=3, hidden_dims=[8])
    x = torch.rand(5, 6)
    q = guide.distribution(x)
    z = q.sample((4,))
    z_loc, scale_tril = guide.encode(x)
    assert torch.equal(scale_tril, scale_tril.tril())
    assert (scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    covariance = (scale_tril @ scale_tril.transpose(-1, -2)).double()
    diff = (z - z_loc).double()
    solved = torch.linalg.solve(covariance, diff.unsqueeze(-1)).squeeze(-1)
    expected = -0.5 * ((diff * solved).sum(-1) + torch.logdet(covariance)
                       + 3 * math.log(2 * math.pi))
    assert torch.allclose(q.log_prob(z).double(), expected, atol=1e-4)


def test_fullcov_represents_correlations():
    guide = FullCovarianceGuide(x_dim=6, z_dim=3, hidden_dims=[8])
    _, scale_tril = guide.encode(torch.rand(5, 6))
    assert scale_tril.tril(-1).abs().sum() > 0


@pytest.mark.parametrize("cached", [True, False], ids=["own-sample", "fresh-tensor"])
def test_iaf_log_prob_matches_change_of_variables(cached):
    torch.manual_seed(1)
    guide = IAFGuide(x_dim=6, z_dim=3, hidden_dims=[8], num_flows=2, flow_hidden=16)
    x = torch.rand(4, 6)
    q = guide.distribution(x)
    z_loc, z_scale, context = guide.encode(x)
    base = dist.Normal(z_loc, z_scale).to_event(1)
    for n in range(x.shape[0]):
        z0 = base.sample()[n]

        def push(value, n=n):
            for flow in guide.flows:
                value = flow.condition(context[n]).__call__(value)
            return value

        z = push(z0)
        jacobian = torch.autograd.functional.jacobian(push, z0)
        expected = base.log_prob(z0.expand(4, 3))[n] - torch.linalg.slogdet(jacobian)[1]
        # The own-sample path reuses the flow's cache; a fresh tensor forces the inversion.
        if cached:
            transforms = [flow.condition(context[n]) for flow in guide.flows]
            value = z0
            for transform in transforms:
                value = transform(value)
            own = dist.TransformedDistribution(dist.Normal(z_loc[n], z_scale[n]).to_event(1),
                                               transforms)
            actual = own.log_prob(value)
        else:
            actual = q.log_prob(z.detach().clone().expand(4, 3))[n]
        assert torch.allclose(actual, expected, atol=1e-4), (actual, expected)


def test_iaf_guide_samples_score_their_own_density_in_the_model_trace():
    model, guide = build(small_config(guide="iaf"))
    x = data_for("bernoulli")
    trace = pyro.poutine.trace(guide).get_trace(x)
    site = trace.nodes["z"]
    fresh = site["fn"].log_prob(site["value"].detach().clone())
    assert torch.allclose(site["fn"].log_prob(site["value"]), fresh, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Likelihoods

def test_learned_gaussian_matches_the_normal_density():
    likelihood = LearnedGaussianLikelihood(min_scale=0.05)
    output = torch.randn(3, 8)
    x = torch.rand(3, 4)
    loc, raw = output[:, :4], output[:, 4:]
    scale = F.softplus(raw) + 0.05
    expected = (-0.5 * ((x - loc) / scale) ** 2 - scale.log()
                - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(likelihood(output).log_prob(x), expected, atol=1e-5)
    assert torch.equal(likelihood.mean(output), loc)


def test_continuous_bernoulli_density_integrates_to_one_and_its_mean_is_not_sigmoid():
    likelihood = ContinuousBernoulliLikelihood()
    logits = torch.tensor([[-3.0], [0.4], [2.5]])
    grid = torch.linspace(0, 1, 20001)[1:-1]
    density = likelihood(logits.expand(3, 1)).base_dist.log_prob(
        grid.reshape(-1, 1, 1).expand(-1, 3, 1)).exp()
    mass = density.mean(0).squeeze(-1)
    assert torch.allclose(mass, torch.ones(3), atol=1e-3)
    assert not torch.allclose(likelihood.mean(logits), torch.sigmoid(logits), atol=1e-2)


def test_continuous_bernoulli_rejects_values_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"needs values in \[0, 1\]"):
        ContinuousBernoulliLikelihood().check_data(torch.tensor([[0.5, 1.5]]))


def test_learned_gaussian_needs_a_positive_floor():
    with pytest.raises(ValueError, match="min_scale > 0"):
        LearnedGaussianLikelihood(min_scale=0.0)


# ---------------------------------------------------------------------------------------------
# Architectures

def test_conv_networks_keep_leading_dimensions_and_mirror_each_other():
    encoder = ConvEncoder((28, 28), out_features=10, hidden=16)
    decoder = ConvDecoder(z_dim=5, image_shape=(28, 28), params_per_pixel=2, hidden=16)
    assert encoder(torch.rand(3, 4, 784)).shape == (3, 4, 10)
    assert decoder(torch.randn(3, 4, 5)).shape == (3, 4, 2 * 784)


def test_conv_architecture_builds_a_conv_encoder_and_decoder():
    config = small_config(architecture="conv", x_dim=784, image_shape=[28, 28], z_dim=3,
                          likelihood="gaussian-learned")
    model, guide = build(config)
    assert isinstance(guide.encoder, ConvEncoder)
    x = torch.rand(5, 784)
    with torch.no_grad():
        log_weights = log_importance_weights(model, guide, x, 3)
    assert log_weights.shape == (3, 5) and log_weights.isfinite().all()


def test_conv_architecture_refuses_data_that_are_not_images():
    with pytest.raises(ValueError, match="multiples of 4"):
        build(small_config(architecture="conv", image_shape=None))


# ---------------------------------------------------------------------------------------------
# Every valid combination: a training step, an importance estimate, a checkpoint round trip

def components(prior, count):
    return {"num_components": count} if prior in ("mog", "vamp") else {}


class RecordLatents(Messenger):
    """Keeps the first value of the site "z" that passes, the one the guide draws."""

    def __init__(self):
        super().__init__()
        self.z = None

    def _postprocess_message(self, msg):
        if msg["type"] == "sample" and msg["name"] == "z" and self.z is None:
            self.z = msg["value"].detach()


def matrix_parts(prior, guide_name, likelihood):
    config = small_config(prior=prior, likelihood=likelihood,
                          prior_options=components(prior, 5),
                          guide="diagonal" if guide_name == "local" else guide_name)
    model, guide = build(config)
    x = data_for(likelihood)
    if guide_name == "local":
        guide = LocalGuide(guide, x)
    return config, model, guide, x


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("guide_name", GUIDES)
@pytest.mark.parametrize("prior", PRIORS)
def test_every_prior_guide_and_likelihood_trains_evaluates_and_round_trips(
        prior, guide_name, likelihood, tmp_path):
    config, model, guide, x = matrix_parts(prior, guide_name, likelihood)
    svi = SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())
    before = [p.detach().clone() for p in guide.parameters()]
    loss = svi.step(x)
    assert math.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, guide.parameters()))

    # The per-point log weights equal log p(z) + log p(x | z) - log q(z | x) computed from the
    # parts' own distributions at the z the guide drew.
    recorder = RecordLatents()
    with torch.no_grad(), recorder:
        log_weights = log_importance_weights(model, guide, x, 16)
    z = recorder.z
    assert z.shape == (16, x.shape[0], 2) and log_weights.shape == (16, x.shape[0])
    with torch.no_grad():
        expected = (model.prior().log_prob(z)
                    + model.likelihood(model.decoder(z)).log_prob(x)
                    - guide.distribution(x).log_prob(z.clone()))
    assert torch.allclose(log_weights, expected, rtol=1e-4, atol=1e-2), \
        (log_weights - expected).abs().max()

    # Rebuild from the saved config under another seed (flows draw their orderings at random):
    # the loaded states must give the same numbers.
    if guide_name == "local":
        rebuilt_model, base = build(config)
        rebuilt_guide = LocalGuide(base, x)
        rebuilt_model.load_state_dict(model.state_dict())
        rebuilt_guide.load_state_dict(guide.state_dict())
        base.load_state_dict(guide._base[0].state_dict())
    else:
        path = tmp_path / "checkpoint.pt"
        save_checkpoint(path, config=config, model=model, guide=guide, optimizer=None, epoch=1,
                        metrics=[], best={})
        torch.manual_seed(123)
        rebuilt_model, rebuilt_guide, _ = restore(load_checkpoint(str(path)))
    pyro.set_rng_seed(5)
    with torch.no_grad():
        expected = log_importance_weights(model, guide, x, 4)
    pyro.set_rng_seed(5)
    with torch.no_grad():
        actual = log_importance_weights(rebuilt_model, rebuilt_guide, x, 4)
    assert torch.allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("prior", PRIORS)
def test_every_prior_works_with_ais_and_the_mixture_proposal(prior):
    config = small_config(prior=prior, prior_options=components(prior, 5),
                          guide="iaf" if prior == "vamp" else "diagonal")
    model, guide = build(config)
    x = data_for("bernoulli", num_data=4)
    # At z_dim 2 grid integration is the reference: its error (the change under refinement)
    # is below 1e-3 nats here.
    reference = estimate("quadrature", model, guide, x, None, quadrature_tolerance=1e-2)
    assert (reference.stderr < 1e-2).all()
    options = {"ais_steps": 10, "ais_leapfrog": 2}
    for name, num_samples in (("mixture", 500), ("ais", 32)):
        result = estimate(name, model, guide, x, num_samples, **options_for(name, options))
        # Within 4 of its own standard errors of the reference, plus 0.02 nats for the
        # downward bias of a log of a mean; measured: at most 2.2 standard errors off.
        difference = (result.estimate - reference.estimate).abs()
        allowed = 4 * result.stderr + 0.02 + reference.stderr
        assert (difference <= allowed).all(), (name, difference, result.stderr)


@pytest.mark.slow
def test_mog_prior_beats_the_standard_prior_on_data_from_a_mixture_story(tmp_path):
    results = {}
    for prior in ("standard", "mog"):
        pyro.set_rng_seed(0)
        pyro.clear_param_store()
        config = small_config(dataset="synthetic", synthetic_prior="mixture", prior=prior,
                              prior_options=components(prior, 8), hidden_dims=[64],
                              num_epochs=10, synthetic_num_train=2000, learning_rate=3e-3)
        dataset = load_dataset(config, "cpu")
        model, guide = build(config)
        fit(model, guide, dataset, config, str(tmp_path / prior), progress=False,
            log=lambda *args: None)
        model.eval(), guide.eval()
        results[prior] = estimate("importance", model, guide, dataset.test.data()[:500],
                                  500).estimate
    difference = results["mog"] - results["standard"]
    stderr = difference.std().item() / math.sqrt(difference.numel())
    # Measured: +0.14 nats per point (s.e. 0.014) for the same budget.
    assert difference.mean().item() > 0.07
    assert difference.mean().item() > 4 * stderr


# ---------------------------------------------------------------------------------------------
# Objectives

def test_iwae_loss_with_the_exact_posterior_is_minus_the_scaled_log_marginal():
    from inference.guides import ExactPosteriorGuide

    model = linear_gaussian()
    with torch.no_grad():
        x = model(batch_size=6)
    loss = IWAELoss(num_particles=5)(model, ExactPosteriorGuide(model), x, num_data=60)
    expected = -10.0 * log_marginal(model, x).sum()
    assert torch.allclose(loss.double(), expected, rtol=1e-5)


def test_iwae_loss_is_the_per_point_log_mean_exp_of_the_same_weights():
    model, guide = build(small_config())
    x = data_for("bernoulli", num_data=8)
    pyro.set_rng_seed(2)
    loss = IWAELoss(num_particles=7)(model, guide, x, num_data=80)
    pyro.set_rng_seed(2)
    log_weights = log_importance_weights(model, guide, x, 7)
    expected = -10.0 * (torch.logsumexp(log_weights, 0) - math.log(7)).sum()
    assert torch.allclose(loss, expected, atol=1e-4)
    assert loss.requires_grad


def test_iwae_loss_and_its_gradient_are_those_of_the_weights_bit_for_bit():
    """-sum_n log (1/K) sum_k w[k, n], computed here from log_importance_weights at the same
    seed: the same value and the same gradients, to the bit (with num_data = B, no scaling)."""
    model, guide = build(small_config())
    x = data_for("bernoulli", num_data=8)
    params = list(model.parameters()) + list(guide.parameters())
    pyro.set_rng_seed(2)
    loss = IWAELoss(num_particles=7)(model, guide, x)
    loss.backward()
    gradients = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    pyro.set_rng_seed(2)
    log_weights = log_importance_weights(model, guide, x, 7)
    by_hand = -(torch.logsumexp(log_weights, 0) - math.log(7))
    by_hand.sum().backward()
    assert torch.equal(loss, by_hand.sum())
    assert loss.item() / 8 == pytest.approx(by_hand.mean().item(), rel=1e-6)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, gradients))


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("prior", ["standard", "mog"])     # analytic KL; none (sampled)
def test_the_plain_losses_are_pyros_trace_elbo_and_trace_meanfield_elbo(prior, num_particles):
    """The elbo and meanfield objectives without the JIT are written on Pyro's public API; they
    compute what Trace_ELBO and TraceMeanField_ELBO compute, at the same draws."""
    model, guide = build(small_config(prior=prior, prior_options=components(prior, 3)))
    x = data_for("bernoulli", num_data=6)
    params = list(model.parameters()) + list(guide.parameters())
    settings = dict(num_particles=num_particles, vectorize_particles=num_particles > 1,
                    max_plate_nesting=1)
    for name, pyros in (("elbo", Trace_ELBO), ("meanfield", TraceMeanField_ELBO)):
        results = []
        for loss_function in (
                make_objective(TrainingConfig(objective={
                    "name": name, "options": {"num_particles": num_particles}}))[0]
                .loss_function(jit=False),
                pyros(**settings).differentiable_loss):
            pyro.set_rng_seed(4)
            loss = loss_function(model, guide, x, num_data=60)
            loss.backward()
            results.append((loss.item(), [p.grad.clone() for p in params]))
            for p in params:
                p.grad = None
        (ours, our_grads), (theirs, their_grads) = results
        assert ours == pytest.approx(theirs, rel=1e-6), name
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7)
                   for a, b in zip(our_grads, their_grads)), name


def test_the_plain_elbo_has_trace_elbos_score_function_terms():
    """A latent that cannot be reparameterized (a Bernoulli z_n in the data plate) next to a
    global one (mu): the gradient takes Trace_ELBO's score-function terms, each weighted by
    log p - log q summed over the plates the site is not in."""
    from torch.distributions import constraints

    def model(x, num_data=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(mu + 2.0 * z, 1.0), obs=x)

    def guide(x, num_data=None):
        loc = pyro.param("loc", torch.tensor(0.2))
        probs = pyro.param("probs", torch.full((x.shape[0],), 0.4),
                           constraint=constraints.unit_interval)
        pyro.sample("mu", dist.Normal(loc, 0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(probs))

    x = torch.tensor([0.3, 2.1, -0.4, 1.7])
    results = []
    for loss_function in (
            make_objective(TrainingConfig(objective={"name": "elbo",
                                                     "options": {"num_particles": 3}}))[0]
            .loss_function(jit=False),
            Trace_ELBO(num_particles=3, vectorize_particles=True,
                       max_plate_nesting=1).differentiable_loss):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        loss = loss_function(model, guide, x)
        names = sorted(pyro.get_param_store().keys())
        unconstrained = [pyro.param(name).unconstrained() for name in names]
        results.append((loss.item(), torch.autograd.grad(loss, unconstrained)))
    (ours, our_grads), (theirs, their_grads) = results
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert our_grads[1].abs().sum() > 0            # the score-function gradient is there
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(our_grads, their_grads))


def test_iwae_bound_is_tighter_than_the_elbo_in_expectation():
    model, guide = build(small_config())
    x = data_for("bernoulli", num_data=8)
    with torch.no_grad():
        iwae = torch.stack([IWAELoss(20)(model, guide, x) for _ in range(30)])
        plain = torch.stack([IWAELoss(1)(model, guide, x) for _ in range(30)])
    assert iwae.mean() < plain.mean() - 3 * (iwae.std() + plain.std()) / math.sqrt(30)


def test_latent_scaling_weights_prior_and_guide_terms_only():
    model, guide = build(small_config())
    x = data_for("bernoulli", num_data=5)
    scaler = ScaleLatents(0.3)
    with torch.no_grad():
        z = guide.distribution(x).sample((3,))
        scaled = log_joint(warmed(model, scaler), x, {"z": z}, guide=warmed(guide, scaler))
        plain = log_joint(model, x, {"z": z}, guide=guide)
    for term, factor in zip(range(3), (0.3, 1.0, 0.3)):  # log p(z), log p(x | z), log q(z | x)
        assert torch.allclose(scaled[term], factor * plain[term], atol=1e-5)


def test_kl_weight_grows_linearly_to_one_over_the_warmup():
    weights = [kl_weight(2, epoch, step, 4) for epoch in (1, 2, 3) for step in (1, 2, 3, 4)]
    assert weights[:8] == [k / 8 for k in range(1, 9)]
    assert weights[8:] == [1.0] * 4
    assert kl_weight(0, 1, 1, 4) == 1.0


def test_meanfield_objective_agrees_with_trace_elbo_in_expectation():
    model, guide = build(small_config())
    x = data_for("bernoulli", num_data=8)
    with torch.no_grad():
        meanfield = torch.tensor([TraceMeanField_ELBO().loss(model, guide, x)
                                  for _ in range(200)])
        sampled = torch.tensor([Trace_ELBO().loss(model, guide, x) for _ in range(200)])
    stderr = math.sqrt((meanfield.var() + sampled.var()).item() / 200)
    assert abs(meanfield.mean() - sampled.mean()) < 4 * stderr
    assert meanfield.std() < sampled.std()  # the analytic KL removes part of the noise


@pytest.mark.parametrize("objective", ["elbo", "meanfield", "iwae"])
def test_every_objective_trains_with_warmup(objective, tmp_path):
    config = small_config(objective=objective, objective_options={"num_particles": 3},
                          kl_warmup_epochs=2, prior="mog", prior_options={"num_components": 3},
                          synthetic_num_train=300)
    dataset = load_dataset(config, "cpu")
    model, guide = build(config)
    summary = fit(model, guide, dataset, config, str(tmp_path), progress=False,
                  log=lambda *args: None)
    assert math.isfinite(summary["test_elbo"])
    metrics = (tmp_path / "metrics.csv").read_text().splitlines()
    assert metrics[0] == "epoch,train_elbo,validation_elbo,kl_weight,seconds,run"
    # The weight at the end of each epoch: half way through a warm-up of two epochs, then 1.
    assert [float(row.split(",")[3]) for row in metrics[1:]] == [0.5, 1.0]


def test_warmup_scales_the_training_objective_of_the_first_step():
    """With KL weight w, the loss of one step is -(log p(x|z) + w (log p(z) - log q(z|x))),
    summed over the minibatch: check it against the terms computed at the same z."""
    config = small_config(kl_warmup_epochs=4)
    model, guide = build(config)
    x = data_for("bernoulli", num_data=10)
    scaler = ScaleLatents(0.25)
    objective, _ = make_objective(config.training)
    recorder = RecordLatents()
    with recorder:
        value = objective.loss_function()(warmed(model, scaler), warmed(guide, scaler), x).item()
    with torch.no_grad():
        log_prior, log_likelihood, log_q = log_joint(model, x, {"z": recorder.z.unsqueeze(0)},
                                                     guide=guide)
    expected = -(log_likelihood + 0.25 * (log_prior - log_q)).sum().item()
    assert value == pytest.approx(expected, rel=1e-5)


def test_bad_objective_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown objective 'renyi'; valid objectives: elbo"):
        make_objective(TrainingConfig(objective="renyi"))
    with pytest.raises(ConfigError, match="--num-particles must be a whole number of at least"):
        make_objective(TrainingConfig(objective={"name": "iwae",
                                                 "options": {"num_particles": 0}}))
    with pytest.raises(ConfigError, match="drop --jit"):
        make_objective(TrainingConfig(objective="iwae", jit=True))
    with pytest.raises(ConfigError, match="drop --jit"):
        make_objective(TrainingConfig(kl_warmup_epochs=2, jit=True))
    with pytest.raises(ConfigError, match="the iwae objective has no option 'num_particle' "
                       r"\(did you mean 'num_particles'\?\)"):
        make_objective(TrainingConfig(objective={"name": "iwae",
                                                 "options": {"num_particle": 5}}))
    # By default the JIT is used where the objective allows it, and never under warm-up.
    assert make_objective(TrainingConfig())[1] is True
    assert make_objective(TrainingConfig(objective="iwae"))[1] is False
    assert make_objective(TrainingConfig(kl_warmup_epochs=1))[1] is False
    assert make_objective(TrainingConfig(jit=False))[1] is False


# ---------------------------------------------------------------------------------------------
# The local guide and the gap decomposition

def test_local_guide_starts_at_the_encoder_and_answers_only_for_its_points():
    for cls in (DiagonalGaussianGuide, FullCovarianceGuide):
        guide = cls(x_dim=6, z_dim=3, hidden_dims=[8])
        x = torch.rand(5, 6)
        local = LocalGuide(guide, x)
        z = torch.randn(2, 5, 3)
        order = torch.tensor([3, 0, 4])
        assert torch.allclose(local.distribution(x[order]).log_prob(z[:, order]),
                              guide.distribution(x[order]).log_prob(z[:, order]), atol=1e-5)
        with pytest.raises(ValueError, match="parameters only for the 5 points"):
            local.distribution(torch.rand(1, 6))
    with pytest.raises(ConfigError, match="Gaussian guide families"):
        LocalGuide(IAFGuide(6, 3, [8]), x)
    with pytest.raises(ConfigError, match="fitted on the evaluation points"):
        build_guide(small_config(guide="local"))


def test_gap_decomposition_matches_the_closed_form_kl_divergences_of_ppca():
    """For probabilistic PCA the posterior p(z | x) = N(m, S) is known, and for a Gaussian q,
    log p(x) - ELBO(q) = KL(q || p(z | x)). So the inference gap of the encoder is
    KL(q_phi || posterior); the approximation gap is that of the best diagonal Gaussian, whose
    precisions are diag(S^-1): (log det S + sum log (S^-1)_ii) / 2; and the amortization gap
    is their difference. Each is checked against these closed forms, computed by torch's
    kl_divergence and linear algebra, not by the estimators."""
    model = linear_gaussian(z_dim=3, x_dim=10)
    with torch.no_grad():
        x = model(batch_size=10)
    guide = DiagonalGaussianGuide(x_dim=10, z_dim=3, hidden_dims=[16])
    local, history = fit_local_guide(model, guide, x, num_steps=400, learning_rate=5e-2,
                                     num_particles=16)
    assert history[-1] > history[0]
    summary = summarize_gaps(gap_decomposition(model, guide, local, x, 4000))
    exact_posterior = posterior(model, x)
    covariance = exact_posterior.covariance_matrix[0].double()
    best_diagonal_kl = 0.5 * (torch.logdet(covariance)
                              + torch.linalg.inv(covariance).diagonal().log().sum()).item()
    with torch.no_grad():
        z_loc, z_scale = guide.encode(x)
        encoder = torch.distributions.MultivariateNormal(
            z_loc.double(), scale_tril=torch.diag_embed(z_scale.double()))
        target = torch.distributions.MultivariateNormal(
            exact_posterior.loc.double(), covariance_matrix=covariance)
        encoder_kl = torch.distributions.kl_divergence(encoder, target).mean().item()
    exact = log_marginal(model, x).mean().item()

    def close(name, value, slack):
        stderr = summary[f"{name}_stderr"]
        assert abs(summary[name] - value) < slack + 4 * stderr, (name, summary[name], value)

    close("log_px", exact, 0.01)
    close("inference_gap", encoder_kl, 0.01)
    close("approximation_gap", best_diagonal_kl, 0.02)
    close("amortization_gap", encoder_kl - best_diagonal_kl, 0.02)
    assert encoder_kl - best_diagonal_kl > 0.5  # an untrained encoder is far from the best


# ---------------------------------------------------------------------------------------------
# Through the command line

@pytest.mark.parametrize("likelihood, binarize, needs", [
    ("continuous-bernoulli", "dynamic", "--binarize none"),
    ("gaussian-learned", "static", "--binarize none"),
    ("bernoulli", "none", "--binarize dynamic or static"),
])
def test_likelihoods_refuse_a_binarization_they_cannot_explain(
        likelihood, binarize, needs, tmp_path, capsys):
    line = refused(capsys, "train", *SMALL, "--likelihood", likelihood, "--binarize", binarize,
                   "--out", tmp_path / "r")
    assert f"the {likelihood} likelihood needs {needs}" in line


def test_components_train_and_evaluate_with_the_local_guide_through_the_command_line(
        tmp_path, capsys):
    out = tmp_path / "run"
    run_main("train", *SMALL, "--prior", "vamp", "--prior-components", "20", "--guide",
             "fullcov", "--objective", "iwae", "--num-particles", "3", "--kl-warmup-epochs", "1",
             "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["prior"] == {"name": "vamp", "options": {"num_components": 20}}
    assert config["training"]["objective"] == {"name": "iwae", "options": {"num_particles": 3}}
    report = run_main("evaluate", out, "--guide", "local", "--local-steps", "20",
                      "--num-samples", "50", "--num-data", "8", "--no-progress")
    assert "approximation gap" in capsys.readouterr().out
    assert set(report["gaps"]) >= {"approximation_gap", "amortization_gap", "inference_gap"}
    line = refused(capsys, "train", *SMALL, "--guide", "local", "--out", tmp_path / "l")
    assert "--guide local has no encoder to train" in line
    line = refused(capsys, "evaluate", out, "--guide", "iaf", "--num-data", "2")
    assert "the run's own guide (fullcov) or a local guide" in line
    line = refused(capsys, "evaluate", out, "--local-steps", "5", "--num-data", "2")
    assert "--local-steps apply to --guide local" in line
    run_main("train", *SMALL, "--architecture", "conv", "--likelihood", "continuous-bernoulli",
             "--out", tmp_path / "c")

"""Likelihoods p(x | z): how the decoder output f(z; theta) becomes a distribution over x.

A likelihood is an ``nn.Module``; calling it on the decoder output (..., params_per_feature * x_dim)
returns a Pyro distribution with event shape (x_dim,). It also states which data it can explain
(``binarize``: the ``--binarize`` settings that produce such data) and checks a batch of data,
raising a clear error instead of letting a density be evaluated outside its support.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.utils import broadcast_all
import pyro.distributions as dist

from models.base.registry import Registry
from models.distributions import LeanNormal


class Likelihood(nn.Module):
    """Base class of p(x | z). The keyword parameters of a subclass's ``__init__`` are its
    options (``--likelihood-option key=value``); :meth:`build` calls ``cls(**options)``."""

    #: how many decoder outputs parametrize one feature of x
    params_per_feature = 1
    #: the ``--binarize`` settings whose data this likelihood can explain
    binarize = ("none",)
    #: constructor parameters filled by the builder, not by options
    context_parameters = ()

    @classmethod
    def build(cls, context, **options):
        return cls(**options)

    def forward(self, decoder_output):
        raise NotImplementedError

    def mean(self, decoder_output):
        """E[x | z], the decoded blueprint shown in reconstructions and manifolds."""
        return self(decoder_output).mean

    def check_data(self, x):
        """Raise ``ValueError`` if ``x`` lies outside the support of this likelihood."""


class IndependentBernoulli(dist.Independent):
    """prod_d Bernoulli(x_d | sigmoid(logits_d)): ``Bernoulli(logits=...).to_event(1)``, whose
    ``log_prob`` sums the binary cross-entropy before negating it rather than negating the whole
    (..., x_dim) array first (the same numbers; one pass less over the largest tensor of an
    evaluation)."""

    def log_prob(self, value):
        if self._validate_args:
            self.base_dist._validate_sample(value)
        logits, value = broadcast_all(self.base_dist.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


class BernoulliLikelihood(Likelihood):
    """x_d ~ Bernoulli(mu_d) with mu = sigmoid(f(z)): the decoder outputs logits, for stability."""

    binarize = ("dynamic", "static")

    def forward(self, logits):
        return IndependentBernoulli(dist.Bernoulli(logits=logits), 1)

    def mean(self, logits):
        return torch.sigmoid(logits)

    def check_data(self, x):
        bad = (x != 0) & (x != 1)
        if bad.any():
            example = x[bad].flatten()[0].item()
            raise ValueError(
                "the bernoulli likelihood needs binary data (every value 0 or 1) but got values "
                f"such as {example:.4g}; binarize the pixels (--binarize dynamic or static) or "
                "choose a likelihood for grey levels (--likelihood gaussian)")


class GaussianLikelihood(Likelihood):
    """x ~ N(f(z), sigma^2 I) with a fixed sigma: the textbook formulation."""

    def __init__(self, sigma=0.1):
        super().__init__()
        if not 0 < sigma < float("inf"):
            raise ValueError(f"the gaussian likelihood needs sigma > 0, got {sigma}")
        self.register_buffer("sigma", torch.tensor(float(sigma)))

    def forward(self, loc):
        return LeanNormal(loc, self.sigma).to_event(1)

    def mean(self, loc):
        return loc


class LearnedGaussianLikelihood(Likelihood):
    """x ~ N(f_mu(z), diag f_sigma(z)^2): the decoder outputs a mean and a scale for every feature.

    The scale is softplus(raw) + ``min_scale``. Without the floor, pixels that are always 0 (the
    border of MNIST) let sigma shrink towards 0 and log p(x | z) grow without bound, so the
    likelihood would measure the floor rather than the model; state it when comparing numbers.
    """

    params_per_feature = 2

    def __init__(self, min_scale=0.01):
        super().__init__()
        if not 0 < min_scale < float("inf"):
            raise ValueError(
                f"the gaussian-learned likelihood needs min_scale > 0, got {min_scale}")
        self.min_scale = float(min_scale)

    def split(self, decoder_output):
        """(loc, scale), each of shape (..., x_dim)."""
        loc, raw_scale = decoder_output.chunk(2, dim=-1)
        return loc, torch.nn.functional.softplus(raw_scale) + self.min_scale

    def forward(self, decoder_output):
        loc, scale = self.split(decoder_output)
        return LeanNormal(loc, scale).to_event(1)

    def mean(self, decoder_output):
        return decoder_output.chunk(2, dim=-1)[0]


class ContinuousBernoulliLikelihood(Likelihood):
    """x_d ~ ContinuousBernoulli(lambda_d) on [0, 1] with logits f(z) (Loaiza-Ganem & Cunningham
    2019): the Bernoulli likelihood corrected by its normalizing constant, so that it is a proper
    density for grey levels. Its mean is not sigmoid(f(z)); :meth:`mean` returns the true mean."""

    def forward(self, logits):
        return dist.ContinuousBernoulli(logits=logits).to_event(1)

    def check_data(self, x):
        bad = (x < 0) | (x > 1)
        if bad.any():
            example = x[bad].flatten()[0].item()
            raise ValueError(
                "the continuous-bernoulli likelihood needs values in [0, 1] but got values such "
                f"as {example:.4g}; rescale the data to [0, 1] or use --likelihood gaussian")


LIKELIHOODS = Registry("likelihood", {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "gaussian-learned": LearnedGaussianLikelihood,
    "continuous-bernoulli": ContinuousBernoulliLikelihood,
}, base=Likelihood, allow_custom=True)

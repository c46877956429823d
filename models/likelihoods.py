"""Likelihoods p(x | z): how the decoder output f(z; theta) becomes a distribution over x.

A likelihood is an ``nn.Module``; calling it on the decoder output (..., params_per_feature * x_dim)
returns a Pyro distribution with event shape (x_dim,). It also states which data it can explain
(``binarize``: the ``--binarize`` settings that produce such data) and checks a batch of data,
raising a clear error instead of letting a density be evaluated outside its support.
"""

import torch
from torch import nn
import pyro.distributions as dist


class Likelihood(nn.Module):
    """Base class of p(x | z)."""

    #: how many decoder outputs parametrize one feature of x
    params_per_feature = 1
    #: the ``--binarize`` settings whose data this likelihood can explain
    binarize = ("none",)

    @classmethod
    def from_config(cls, config):
        return cls()

    def forward(self, decoder_output):
        raise NotImplementedError

    def mean(self, decoder_output):
        """E[x | z], the decoded blueprint shown in reconstructions and manifolds."""
        return self(decoder_output).mean

    def check_data(self, x):
        """Raise ``ValueError`` if ``x`` lies outside the support of this likelihood."""


class BernoulliLikelihood(Likelihood):
    """x_d ~ Bernoulli(mu_d) with mu = sigmoid(f(z)): the decoder outputs logits, for stability."""

    binarize = ("dynamic", "static")

    def forward(self, logits):
        return dist.Bernoulli(logits=logits).to_event(1)

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
        if not sigma > 0:
            raise ValueError(f"the gaussian likelihood needs sigma > 0, got {sigma}")
        self.register_buffer("sigma", torch.tensor(float(sigma)))

    @classmethod
    def from_config(cls, config):
        return cls(config.get("sigma", 0.1))

    def forward(self, loc):
        return dist.Normal(loc, self.sigma).to_event(1)

    def mean(self, loc):
        return loc


LIKELIHOODS = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
}

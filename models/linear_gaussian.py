"""The linear-Gaussian VAE (probabilistic PCA), whose marginal likelihood is known exactly.

    z ~ N(0, I_D),    x | z ~ N(W z + b, sigma^2 I)    =>    p(x) = N(x | b, W W^T + sigma^2 I),

and the posterior is p(z | x) = N(z | S W^T (x - b) / sigma^2, S) with S = (I + W^T W / sigma^2)^-1
(Tipping & Bishop 1999). The model is an ordinary :class:`models.VAE` with
``--architecture linear --likelihood gaussian --prior standard``: it trains with the same SVI code
and works with every estimator, and these closed forms are the reference they are tested against.
"""

import math

import torch
import pyro.distributions as dist

from models.architectures import LinearDecoder
from models.likelihoods import GaussianLikelihood
from models.priors import StandardNormalPrior


def is_linear_gaussian(model):
    return (isinstance(getattr(model, "prior", None), StandardNormalPrior)
            and isinstance(getattr(model, "decoder", None), LinearDecoder)
            and isinstance(getattr(model, "likelihood", None), GaussianLikelihood))


def check_linear_gaussian(model):
    if not is_linear_gaussian(model):
        raise ValueError(
            "the exact log p(x) needs a linear-Gaussian model (--prior standard --architecture "
            "linear --likelihood gaussian); for other models use importance, ais or, with a "
            "latent dimension of at most 2, quadrature")


def _parts(model):
    check_linear_gaussian(model)
    weight = model.decoder.weight.double()          # (x_dim, z_dim)
    bias = model.decoder.bias.double()              # (x_dim,)
    variance = model.likelihood.sigma.double() ** 2
    return weight, bias, variance


def log_marginal(model, x):
    """log p(x_n) = log N(x_n | b, W W^T + sigma^2 I) for each row of x, shape (N,), float64.

    Computed through the D x D matrix I + W^T W / sigma^2 (matrix determinant lemma and Woodbury
    identity), so that a 784-dimensional x costs no 784 x 784 factorization.
    """
    weight, bias, variance = _parts(model)
    x_dim, z_dim = weight.shape
    centered = x.double() - bias
    identity = torch.eye(z_dim, dtype=weight.dtype, device=weight.device)
    inner = identity + weight.T @ weight / variance
    cholesky = torch.linalg.cholesky(inner)
    log_det = 2 * cholesky.diagonal().log().sum() + x_dim * variance.log()
    projected = centered @ weight                                   # (N, z_dim): W^T (x - b)
    solved = torch.cholesky_solve(projected.T, cholesky).T          # (I + W^T W / s)^-1 W^T (x - b)
    # Woodbury: (W W^T + s I)^-1 = I / s - W (I + W^T W / s)^-1 W^T / s^2
    quadratic = (centered ** 2).sum(-1) / variance - (projected * solved).sum(-1) / variance ** 2
    return -0.5 * (x_dim * math.log(2 * math.pi) + log_det + quadratic)


def posterior(model, x):
    """The exact posterior p(z | x_n) for each row of x: a MultivariateNormal with batch shape
    (N,) and event shape (z_dim,), in the dtype of the model."""
    weight, bias, variance = _parts(model)
    z_dim = weight.shape[1]
    precision = torch.eye(z_dim, dtype=weight.dtype, device=weight.device) + \
        weight.T @ weight / variance
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    loc = (x.double() - bias) @ weight @ covariance / variance
    dtype = model.decoder.weight.dtype
    return dist.MultivariateNormal(loc.to(dtype), covariance_matrix=covariance.to(dtype))

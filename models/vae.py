"""The VAE's generative story, written literally as a Pyro model.

For each data point x_n:

1. draw a latent blueprint        z_n ~ p(z)
2. decode it                      mu_n = f(z_n; theta)
3. draw the data point            x_n ~ p(x | mu_n)

All three steps sit in one ``pyro.plate("data", N, subsample=...)`` over the B points of the
minibatch: Pyro scales the log densities of a minibatch of B points by N / B, so the minibatch
ELBO is an unbiased estimate of the ELBO of the whole data set (Kingma & Welling 2014; Hoffman
et al. 2013).
"""

import itertools

import pyro
import torch
from pyro.poutine.util import is_validation_enabled
from torch import nn


def data_plate(num_data, batch_size, device):
    """``pyro.plate("data", N, ...)`` for a minibatch of ``batch_size`` of the N = ``num_data``
    points (N = B when ``num_data`` is None).

    The minibatch itself is passed in, so the plate is given its positions 0..B-1 as the
    subsample rather than left to draw a random subsample of N that nothing would use: the
    scale N / B is the same, and no ``randperm(N)`` is drawn at every step.
    """
    # (Under the JIT's tracer the batch size is a traced value; the check is for users' calls.)
    if not torch.jit.is_tracing() and num_data is not None and num_data < batch_size:
        raise ValueError(f"num_data ({num_data}) is smaller than the minibatch ({batch_size})")
    positions = torch.arange(batch_size, device=device)
    return pyro.plate("data", num_data or batch_size, subsample=positions, dim=-1)


def check_batch(x, x_dim):
    """Raise ``ValueError`` unless ``x`` is a (batch_size, x_dim) tensor of finite numbers."""
    if not hasattr(x, "dim") or x.dim() != 2 or x.shape[-1] != x_dim:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(
            f"expected data of shape (batch_size, {x_dim}), got {shape}; "
            f"flatten each data point to a vector of {x_dim} values")
    if not x.is_floating_point():
        raise ValueError(f"expected floating-point data, got dtype {x.dtype}; "
                         "convert it with x.float()")
    finite = x.isfinite()
    if not finite.all():
        count = int((~finite).sum())
        raise ValueError(
            f"data contains NaN or infinite values ({count} of {x.numel()} entries); "
            "remove or impute them first")


class VAE(nn.Module):
    """The generative model p(x, z) = p(z) p(x | z) with swappable parts.

    :param prior: a :class:`models.priors.Prior`; calling it gives p(z).
    :param decoder: the network f(z; theta).
    :param likelihood: a :class:`models.likelihoods.Likelihood`; calling it on f(z) gives p(x | z).
    :param int x_dim: the number of features of one data point (784 for MNIST).

    Calling the module runs the Pyro model. With data it scores the data; with ``x=None`` it tells
    the story forwards and returns ``batch_size`` freshly generated data points.
    """

    def __init__(self, prior, decoder, likelihood, x_dim):
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.x_dim = int(x_dim)
        self.z_dim = prior.z_dim

    def forward(self, x=None, num_data=None, batch_size=None):
        """The Pyro model.

        :param x: a minibatch of shape (batch_size, x_dim), or ``None`` to generate data.
        :param int num_data: the size N of the whole data set the minibatch was drawn from
            (default: the minibatch is the whole data set).
        :param int batch_size: how many data points to generate when ``x`` is ``None``.
        :returns: the observed or generated x, of shape (batch_size, x_dim).
        """
        pyro.module("model", self)
        for name, module in self.prior.shared_modules().items():
            pyro.module(name, module)
        if x is not None:
            if is_validation_enabled():
                check_batch(x, self.x_dim)
                self.likelihood.check_data(x)
            batch_size, device = x.shape[0], x.device
        else:
            batch_size = 1 if batch_size is None else batch_size
            device = next(itertools.chain(self.parameters(), self.buffers())).device
        with data_plate(num_data, batch_size, device):
            z = pyro.sample("z", self.prior())                        # z ~ p(z)
            mu = self.decoder(z)                                      # mu = f(z; theta)
            return pyro.sample("x", self.likelihood(mu), obs=x)       # x ~ p(x | z)

    def decode(self, z):
        """E[x | z]: the decoded blueprint f(z; theta) on the scale of the data."""
        return self.likelihood.mean(self.decoder(z))

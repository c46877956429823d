"""Guides q(z | x): amortized encoders that propose the latent blueprint z for a data point x.

A guide is an ``nn.Module`` whose call is the Pyro guide: it samples the site ``"z"`` in the same
``"data"`` plate as the model, so Pyro pairs each data point with its own z. Amortized guides also
expose ``distribution(x)``, the distribution q(z | x) with batch shape (batch_size,) and event
shape (z_dim,), so that evaluation and figures can use its exact ``log_prob``.
"""

import pyro
import pyro.distributions as dist
import torch.nn.functional as F
from pyro.poutine.util import is_validation_enabled
from torch import nn

from models.networks import MLP
from models.vae import check_batch

# q(z | x) keeps a little spread even where the encoder is sure, so that log q stays finite.
MIN_SCALE = 1e-4


class Guide(nn.Module):
    """Base class of amortized guides; subclasses implement ``distribution(x)``."""

    def __init__(self, x_dim, z_dim):
        super().__init__()
        self.x_dim = int(x_dim)
        self.z_dim = int(z_dim)

    @classmethod
    def from_config(cls, config):
        return cls(config["x_dim"], config["z_dim"], config["hidden_dims"],
                   config.get("activation", "relu"))

    def distribution(self, x):
        raise NotImplementedError

    def forward(self, x, num_data=None, batch_size=None):
        """The Pyro guide: z ~ q(z | x) for each data point of the minibatch ``x``."""
        pyro.module("guide", self)
        if x is None:
            raise ValueError("a guide needs data: call guide(x) with a (batch_size, x_dim) tensor")
        if is_validation_enabled():
            check_batch(x, self.x_dim)
        with pyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0], dim=-1):
            return pyro.sample("z", self.distribution(x))


class DiagonalGaussianGuide(Guide):
    """q(z | x) = N(z | mu_phi(x), diag sigma_phi(x)^2), the encoder of Kingma & Welling (2014)."""

    def __init__(self, x_dim, z_dim, hidden_dims=(512, 256), activation="relu"):
        super().__init__(x_dim, z_dim)
        self.encoder = MLP(self.x_dim, hidden_dims, 2 * self.z_dim, activation)

    def encode(self, x):
        """Return (z_loc, z_scale), each of shape (..., z_dim)."""
        z_loc, z_raw_scale = self.encoder(x).split(self.z_dim, dim=-1)
        return z_loc, F.softplus(z_raw_scale) + MIN_SCALE

    def distribution(self, x):
        z_loc, z_scale = self.encode(x)
        return dist.Normal(z_loc, z_scale).to_event(1)


GUIDES = {
    "diagonal": DiagonalGaussianGuide,
}


class ExactPosteriorGuide(Guide):
    """q(z | x) = p(z | x), the exact posterior of a linear-Gaussian model (probabilistic PCA).

    Importance sampling with this proposal has weights p(x, z) / p(z | x) = p(x) for every z: a
    zero-variance estimator, and a check of the estimators. It has no parameters of its own.
    """

    def __init__(self, model):
        from models.linear_gaussian import check_linear_gaussian

        check_linear_gaussian(model)
        super().__init__(model.x_dim, model.z_dim)
        # Held in a tuple so that the model's parameters are not registered as the guide's.
        self._model = (model,)

    def distribution(self, x):
        from models.linear_gaussian import posterior

        return posterior(self._model[0], x)

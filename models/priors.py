"""Priors p(z) over the latent blueprint z.

A prior is an ``nn.Module`` with an attribute ``z_dim`` whose call returns a Pyro distribution over
z with ``batch_shape == ()`` and ``event_shape == (z_dim,)``. The model samples it inside the data
plate, so Pyro broadcasts it to every data point (and every particle during evaluation). Learnable
priors keep their parameters as module parameters: the model registers the whole module with
Pyro, so SVI trains them with the decoder. ``log_prob`` must be exact, because every estimator of
log p(x) evaluates it.
"""

import torch
from torch import nn
import pyro.distributions as dist


class Prior(nn.Module):
    """Base class: subclasses implement ``forward() -> Distribution`` with event shape (z_dim,).

    ``from_config(config, **context)`` builds the prior from the flat run configuration (a plain
    dict saved with every checkpoint); override it when a prior needs more than ``z_dim``.
    """

    def __init__(self, z_dim):
        super().__init__()
        if int(z_dim) < 1:
            raise ValueError(f"z_dim must be a positive integer, got {z_dim}")
        self.z_dim = int(z_dim)

    @classmethod
    def from_config(cls, config, **context):
        return cls(config["z_dim"])

    def forward(self):
        raise NotImplementedError


class StandardNormalPrior(Prior):
    """p(z) = N(z | 0, I)."""

    def __init__(self, z_dim):
        super().__init__(z_dim)
        # Buffers, not constants: they follow the module to the training device.
        self.register_buffer("loc", torch.zeros(self.z_dim))
        self.register_buffer("scale", torch.ones(self.z_dim))

    def forward(self):
        return dist.Normal(self.loc, self.scale).to_event(1)


PRIORS = {
    "standard": StandardNormalPrior,
}

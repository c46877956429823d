"""Distributions of the story with leaner arithmetic than their Pyro counterparts, and the same
numbers bit for bit.

During evaluation a sample site is broadcast to K particles: Pyro expands the parameters of
q(z | x) from (N, z_dim) to (K, N, z_dim) as views, and torch's ``Normal.log_prob`` then computes
s^2 and log s at that size. Computed at the parameters' own size and broadcast, they are the same
numbers, K times fewer times.
"""

import math

import pyro.distributions as dist
import torch

LOG_SQRT_TWO_PI = math.log(math.sqrt(2 * math.pi))


class LeanNormal(dist.Normal):
    """``dist.Normal(loc, scale)``: the same density, samples and random stream, with
    log N(z | m, s) = (z - m)^2 / (-2 s^2) - log s - log sqrt(2 pi) computed in five passes over
    z instead of nine. s^2 and log s are taken at the size of the parameters as given, before
    they are broadcast to each other or expanded to particles (:meth:`expand`). Torch's
    -(z - m)^2 / (2 s^2) and this (z - m)^2 / (-2 s^2) round alike, so the values are bit for
    bit those of ``dist.Normal``. Sampling draws with ``torch.randn``, the stream of Normal's
    ``normal_()``, which a JIT trace records as one operation (Normal's sampler traces as
    three)."""

    def __init__(self, loc, scale, validate_args=None):
        super().__init__(loc, scale, validate_args=validate_args)
        # Normal broadcasts loc and scale to one shape (a scalar sigma to every pixel, say).
        if torch.is_tensor(loc) and torch.is_tensor(scale):
            self._unexpanded = (loc, scale)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LeanNormal, _instance)
        new = super().expand(batch_shape, _instance=new)
        new._unexpanded = self._parameters()
        return new

    def _parameters(self):
        """(loc, scale) at the size they were given."""
        return getattr(self, "_unexpanded", (self.loc, self.scale))

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + eps * self.scale

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        loc, scale = self._parameters()
        deviation = value - loc
        log_density = (deviation * deviation) / (-2 * (scale * scale)) - scale.log() \
            - LOG_SQRT_TWO_PI
        return log_density.expand(torch.broadcast_shapes(value.shape, self.batch_shape))


class LeanMultivariateNormal(dist.MultivariateNormal):
    """``dist.MultivariateNormal``, drawing its standard normal noise with ``torch.randn``: the
    same numbers as torch's sampler, whose workaround for the JIT's tracer (``torch.normal`` of
    a tensor of zeros and one of ones) checks that the ones are not negative, and on a GPU waits
    for that check at every draw of a traced training step or evaluation chunk."""

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + torch.matmul(self._unbroadcasted_scale_tril,
                                       eps.unsqueeze(-1)).squeeze(-1)

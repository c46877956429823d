"""The distributions of the story, each with leaner arithmetic than its Pyro counterpart and the
same numbers: the guides' and likelihoods' Normal (:class:`LeanNormal`), the full-covariance
guide's :class:`LeanMultivariateNormal`, the standard prior's :class:`StandardNormal` and the
mixture priors' :class:`DiagonalNormalMixture`.

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


class DiagonalNormalMixture(dist.MixtureSameFamily):
    """p(z) = sum_k pi_k N(z | m_k, diag s_k^2): a mixture of K diagonal Gaussians with
    ``logits`` (K,), ``locs`` and ``scales`` (K, D), and an exact ``log_prob`` computed as
    matrix products.

    ``torch.distributions.MixtureSameFamily`` scores M points by broadcasting an (M, K, D) tensor,
    which for the VampPrior (K = 500) and evaluation chunks of thousands of (particle, data point)
    pairs is hundreds of megabytes per chunk. Expanding the square,
    sum_d (z_d - m_kd)^2 / s_kd^2 = z^2 . s_k^-2 - 2 z . (m_k s_k^-2) + m_k^2 . s_k^-2,
    is two (M, D) x (D, K) products instead. The expansion cancels large terms when z is near a
    narrow, far-out component, so it is computed in float64 and the result returned in the
    value's dtype.

    Sampling draws the component k of each z, then z = m_k + s_k eps: the parent's draws every
    one of the K components for every z and keeps one (K = 500 for the VampPrior made the
    defensive mixture estimator 15 times slower than importance sampling).
    """

    def __init__(self, logits, locs, scales, validate_args=None):
        # (Under the JIT's tracer shapes are traced values; the check is for users' calls.)
        if not torch.jit.is_tracing() and (locs.dim() != 2 or scales.shape != locs.shape
                                           or logits.shape != locs.shape[:1]):
            raise ValueError("DiagonalNormalMixture takes logits (K,), locs and scales (K, D); "
                             f"got {tuple(logits.shape)}, {tuple(locs.shape)}, "
                             f"{tuple(scales.shape)}")
        super().__init__(dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1),
                         validate_args=validate_args)
        self._mixture_parameters = (logits, locs, scales)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        new = super().expand(batch_shape, _instance=new)
        # Expanding only repeats the mixture, so every batch element keeps these parameters.
        new._mixture_parameters = self._mixture_parameters
        return new

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            logits, locs, scales = self._mixture_parameters
            shape = self._extended_shape(sample_shape)
            index = dist.Categorical(logits=logits).sample(shape[:-1])
            noise = torch.randn(shape, dtype=locs.dtype, device=locs.device)
            return locs[index] + scales[index] * noise

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits, locs, scales = (t.double() for t in self._mixture_parameters)
        z_dim = locs.shape[-1]
        z = value.double().reshape(-1, z_dim)
        precisions = scales.pow(-2)
        scaled_locs = locs * precisions
        squared_distances = ((z * z) @ precisions.T - 2 * z @ scaled_locs.T
                             + (locs * scaled_locs).sum(-1)).clamp_min(0.0)
        # log sqrt(2 pi) added per dimension rather than z_dim times: under the JIT's tracer
        # z_dim is a tensor, which a Python float would multiply in float32, and a tensor made
        # from a Python number would be copied to the GPU at every call, waiting for it.
        log_normalizers = -(scales.log() + 0.5 * math.log(2 * math.pi)).sum(-1)
        log_components = -0.5 * squared_distances + log_normalizers + logits.log_softmax(-1)
        log_density = torch.logsumexp(log_components, -1).to(value.dtype)
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        return log_density.reshape(value.shape[:-1]).expand(shape)


class StandardNormal(dist.Normal):
    """``dist.Normal(0, 1)`` (broadcast to any batch shape) whose density takes three passes
    over z instead of nine: log N(z | 0, 1) = -z^2 / 2 - log sqrt(2 pi). Normal's own formula,
    -(z - m)^2 / (2 s^2) - log s - log sqrt(2 pi), on a distribution broadcast to z's shape
    (K x N x z_dim during evaluation) also computes s^2, 2 s^2 and log s at that size and
    subtracts m and log s; with m = 0 and s = 1 each of those steps is exact in floating point,
    so the numbers are bit for bit Normal's. Sampling draws the same standard normal numbers as
    Normal, without adding 0 and multiplying by 1."""

    def __init__(self, loc, scale, validate_args=None):
        super().__init__(loc, scale, validate_args=validate_args)
        # Checked with the distributions' validation only: reading the check waits for the device.
        if self._validate_args and not torch.jit.is_tracing() and (
                bool((self.loc != 0).any()) or bool((self.scale != 1).any())):
            raise ValueError("StandardNormal takes loc 0 and scale 1; use dist.Normal otherwise")

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StandardNormal, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        return torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        # (z * z) * -0.5 rounds as -(z ** 2) / 2 does: halving is exact.
        log_density = (value * value) * -0.5 - math.log(math.sqrt(2 * math.pi))
        return log_density.expand(torch.broadcast_shapes(value.shape, self.batch_shape))

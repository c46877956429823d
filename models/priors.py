"""Priors p(z) over the latent blueprint z.

A prior is an ``nn.Module`` with an attribute ``z_dim`` whose call returns a Pyro distribution over
z with ``batch_shape == ()`` and ``event_shape == (z_dim,)``. The model samples it inside the data
plate, so Pyro broadcasts it to every data point (and every particle during evaluation). Learnable
priors keep their parameters as module parameters: the model registers the whole module with
Pyro, so SVI trains them with the decoder. ``log_prob`` must be exact, because every estimator of
log p(x) evaluates it.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
import pyro.distributions as dist
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN

from models.base.registry import Registry
from models.distributions import DiagonalNormalMixture, StandardNormal


class Prior(nn.Module):
    """Base class: subclasses implement ``forward() -> Distribution`` with event shape (z_dim,).

    The keyword parameters of a subclass's ``__init__`` after ``z_dim`` are its options
    (``--prior-option key=value``; their defaults are the options' defaults). :meth:`build`
    calls ``cls(z_dim, **options)``; override it, and list the extra parameters it fills in
    ``context_parameters``, when a prior needs more of the build context (see
    :class:`VampPrior`).
    """

    #: constructor parameters filled by :meth:`build` from the context, not by options
    context_parameters = ("z_dim",)

    def __init__(self, z_dim):
        super().__init__()
        if isinstance(z_dim, bool) or int(z_dim) != z_dim or int(z_dim) < 1:
            raise ValueError(f"z_dim must be a positive integer, got {z_dim}")
        self.z_dim = int(z_dim)

    @classmethod
    def build(cls, context, **options):
        """The prior for a :class:`models.assembly.BuildContext` and its options."""
        return cls(context.z_dim, **options)

    def forward(self):
        raise NotImplementedError

    def shared_modules(self):
        """{name: module} of modules this prior uses but does not own (such as the encoder of a
        VampPrior). The model registers them with Pyro under these names, so SVI trains them
        once, together with the owner that registers the same name."""
        return {}


class StandardNormalPrior(Prior):
    """p(z) = N(z | 0, I)."""

    def __init__(self, z_dim):
        super().__init__(z_dim)
        # Buffers, not constants: they follow the module to the training device.
        self.register_buffer("loc", torch.zeros(self.z_dim))
        self.register_buffer("scale", torch.ones(self.z_dim))

    def forward(self):
        return StandardNormal(self.loc, self.scale).to_event(1)


_SOFTPLUS_OF_ONE = math.log(math.e - 1.0)


class MixtureOfGaussiansPrior(Prior):
    """p(z) = sum_k pi_k N(z | m_k, diag s_k^2) with learnable weights pi (softmax of logits),
    means m_k and scales s_k: a prior that can put its mass into clusters
    (e.g. Dilokthanakul et al. 2016)."""

    def __init__(self, z_dim, num_components=10, init_spread=1.0):
        super().__init__(z_dim)
        if int(num_components) < 1:
            raise ValueError(f"the mog prior needs at least one component, got {num_components}")
        self.num_components = int(num_components)
        self.logits = nn.Parameter(torch.zeros(self.num_components))
        # Spread the means so that the components do not start identical (they would stay so).
        self.locs = nn.Parameter(init_spread * torch.randn(self.num_components, self.z_dim))
        self.raw_scales = nn.Parameter(torch.zeros(self.num_components, self.z_dim))

    def scales(self):
        # The shift makes raw 0 a unit scale, so components start as unit Gaussians.
        return F.softplus(self.raw_scales + _SOFTPLUS_OF_ONE) + 1e-4

    def forward(self):
        return DiagonalNormalMixture(self.logits, self.locs, self.scales())


class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k), the guide's
    Gaussian encoder evaluated at K learnable pseudo-inputs u_k.

    The encoder is the guide's, shared rather than copied: the prior keeps a reference to the
    guide and registers it with Pyro under the guide's own name (see :meth:`shared_modules`), so
    SVI trains one set of encoder weights from both the prior and the guide terms. For a guide
    with flow steps (``iaf``) the components are its Gaussian base encoder q_0(z | u_k), whose
    density needs no inversion of the flow. Pseudo-inputs are kept in [0, 1] with a hard tanh and
    start near 0.05, as in the paper.
    """

    def __init__(self, z_dim, guide, x_dim, num_components=500):
        super().__init__(z_dim)
        if guide is None or not hasattr(guide, "encoder_distribution"):
            raise ValueError("the vamp prior needs an amortized guide with encoder_distribution(x)"
                             " (such as --guide diagonal, fullcov or iaf)")
        if guide.z_dim != self.z_dim:
            raise ValueError(f"the guide's z_dim {guide.z_dim} differs from the prior's {z_dim}")
        if int(num_components) < 1:
            raise ValueError(f"the vamp prior needs at least one pseudo-input, got "
                             f"{num_components}")
        self.num_components = int(num_components)
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(self.num_components, x_dim))
        # A tuple keeps the guide out of this module's parameters: the guide owns them.
        self._guide = (guide,)

    context_parameters = ("z_dim", "guide", "x_dim")

    @classmethod
    def build(cls, context, **options):
        return cls(context.z_dim, context.guide, context.x_dim, **options)

    def shared_modules(self):
        return {"guide": self._guide[0]}

    def forward(self):
        u = F.hardtanh(self.pseudo_inputs, 0.0, 1.0)
        components = self._guide[0].encoder_distribution(u)
        logits = torch.zeros(self.num_components, device=u.device)
        if isinstance(components, dist.Independent) and isinstance(components.base_dist,
                                                                   dist.Normal):
            return DiagonalNormalMixture(logits, components.base_dist.loc,
                                         components.base_dist.scale)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)


class FlowPrior(Prior):
    """p(z): N(0, I) pushed through learnable masked autoregressive flow layers (MAF,
    Papamakarios et al. 2017), z = T_L(... T_1(e)), e ~ N(0, I).

    Each layer is an affine autoregressive transform of ``pyro.distributions.transforms`` used in
    the density direction: the density log p(z) = log N(T^-1(z)) + log |det dT^-1/dz| takes one
    network pass per layer, which matters because every estimator evaluates log p(z) at many z;
    sampling (only for generating data) takes z_dim passes per layer. Each layer orders the
    dimensions by its own random permutation, saved with the checkpoint.
    """

    def __init__(self, z_dim, num_flows=4, flow_hidden=None):
        super().__init__(z_dim)
        if int(num_flows) < 1:
            raise ValueError(f"the flow prior needs at least one layer, got {num_flows}")
        if flow_hidden is not None and int(flow_hidden) < 1:
            raise ValueError(f"flow_hidden must be a positive integer, got {flow_hidden}")
        hidden_dims = [int(flow_hidden or max(64, 4 * self.z_dim))]
        self.layers = nn.ModuleList(
            AffineAutoregressive(AutoRegressiveNN(self.z_dim, hidden_dims), stable=False)
            for _ in range(int(num_flows)))
        self.register_buffer("loc", torch.zeros(self.z_dim))
        self.register_buffer("scale", torch.ones(self.z_dim))

    def forward(self):
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, [layer.inv for layer in self.layers])


PRIORS = Registry("prior", {
    "standard": StandardNormalPrior,
    "mog": MixtureOfGaussiansPrior,
    "vamp": VampPrior,
    "flow": FlowPrior,
}, base=Prior, allow_custom=True)

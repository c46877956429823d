"""Guides q(z | x): encoders that propose the latent blueprint z for a data point x.

A guide is an ``nn.Module`` whose call is the Pyro guide: it samples the site ``"z"`` in the same
``"data"`` plate as the model, so Pyro pairs each data point with its own z. Every guide exposes
``distribution(x)``, the distribution q(z | x) with batch shape (batch_size,) and event shape
(z_dim,), so that evaluation and figures can use its exact ``log_prob``.

``GUIDES`` maps command-line names to classes: ``diagonal`` (Kingma & Welling 2014), ``fullcov``
(a Cholesky-factor Gaussian), ``iaf`` (inverse autoregressive flow, Kingma et al. 2016) and
``local`` (free per-point parameters fitted at evaluation, for the gap decomposition of Cremer
et al. 2018). The encoder network is an MLP or, with ``architecture: conv``, a small CNN.
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import conditional_affine_autoregressive
from pyro.poutine.util import is_validation_enabled
from torch import nn

from models.base.config import ConfigError
from models.base.registry import Registry
from models.distributions import LeanMultivariateNormal, LeanNormal
from models.networks import MLP
from models.vae import check_batch, data_plate

# q(z | x) keeps a little spread even where the encoder is sure, so that log q stays finite.
MIN_SCALE = 1e-4


class Guide(nn.Module):
    """Base class of guides; subclasses implement ``distribution(x)``.

    ``distribution(x)`` is q(z | x) for a batch x of shape (B, x_dim): batch shape (B,), event
    shape (z_dim,), with an exact ``log_prob``. Amortized Gaussian guides also give
    ``encoder_distribution(x)``, the Gaussian produced by the encoder network (the whole guide for
    ``diagonal`` and ``fullcov``, the base of the flow for ``iaf``); the VampPrior uses it.

    The keyword parameters of a subclass's ``__init__`` after ``x_dim`` and ``z_dim`` are its
    options (``--guide-option key=value``). :meth:`build` calls ``cls(x_dim, z_dim, **options)``;
    override it (and ``context_parameters``) to take more from the build context, such as an
    encoder body of the run's architecture: ``context.encoder(out_features)``.
    """

    #: the name under which the guide registers its parameters with Pyro
    pyro_name = "guide"
    #: constructor parameters filled by :meth:`build` from the context, not by options
    context_parameters = ("x_dim", "z_dim")

    def __init__(self, x_dim, z_dim):
        super().__init__()
        self.x_dim = int(x_dim)
        self.z_dim = int(z_dim)

    @classmethod
    def build(cls, context, **options):
        """The guide for a :class:`models.assembly.BuildContext` and its options."""
        return cls(context.x_dim, context.z_dim, **options)

    def distribution(self, x):
        raise NotImplementedError

    def forward(self, x, num_data=None, batch_size=None):
        """The Pyro guide: z ~ q(z | x) for each data point of the minibatch ``x``."""
        pyro.module(self.pyro_name, self)
        if x is None:
            raise ValueError("a guide needs data: call guide(x) with a (batch_size, x_dim) tensor")
        if is_validation_enabled():
            check_batch(x, self.x_dim)
        with data_plate(num_data, x.shape[0], x.device):
            return pyro.sample("z", self.distribution(x))


class AmortizedGuide(Guide):
    """Base of the project's amortized guides: an encoder network of the run's architecture
    (``network``; by default an MLP of ``hidden_dims``) whose outputs parametrize q(z | x)."""

    context_parameters = ("x_dim", "z_dim", "hidden_dims", "activation", "network")

    @classmethod
    def build(cls, context, **options):
        network = context.encoder(cls.encoder_outputs(context.z_dim, **options))
        return cls(context.x_dim, context.z_dim, network=network, **options)

    @classmethod
    def encoder_outputs(cls, z_dim, **options):
        """How many numbers the encoder outputs per data point."""
        return 2 * z_dim


class DiagonalGaussianGuide(AmortizedGuide):
    """q(z | x) = N(z | mu_phi(x), diag sigma_phi(x)^2), the encoder of Kingma & Welling (2014)."""

    def __init__(self, x_dim, z_dim, hidden_dims=(512, 256), activation="relu", network=None):
        super().__init__(x_dim, z_dim)
        self.encoder = network or MLP(self.x_dim, hidden_dims, 2 * self.z_dim, activation)

    def encode(self, x):
        """Return (z_loc, z_scale), each of shape (..., z_dim)."""
        z_loc, z_raw_scale = self.encoder(x).split(self.z_dim, dim=-1)
        return z_loc, F.softplus(z_raw_scale) + MIN_SCALE

    def distribution(self, x):
        z_loc, z_scale = self.encode(x)
        return LeanNormal(z_loc, z_scale).to_event(1)

    def encoder_distribution(self, x):
        return self.distribution(x)


class FullCovarianceGuide(AmortizedGuide):
    """q(z | x) = N(z | mu_phi(x), L_phi(x) L_phi(x)^T) with L lower triangular: the encoder
    outputs the mean, the log-scale of the diagonal of L (through softplus) and the entries below
    it, so that q can express correlations between latent dimensions."""

    def __init__(self, x_dim, z_dim, hidden_dims=(512, 256), activation="relu", network=None):
        super().__init__(x_dim, z_dim)
        outputs = self.z_dim + self.z_dim * (self.z_dim + 1) // 2
        self.encoder = network or MLP(self.x_dim, hidden_dims, outputs, activation)
        rows, cols = torch.tril_indices(self.z_dim, self.z_dim, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @classmethod
    def encoder_outputs(cls, z_dim, **options):
        return z_dim + z_dim * (z_dim + 1) // 2

    def encode(self, x):
        """Return (z_loc, z_scale_tril) of shapes (..., z_dim) and (..., z_dim, z_dim)."""
        output = self.encoder(x)
        z_dim = self.z_dim
        z_loc, raw_diagonal, below = output.split([z_dim, z_dim, output.shape[-1] - 2 * z_dim],
                                                  dim=-1)
        diagonal = F.softplus(raw_diagonal) + MIN_SCALE
        strictly_lower = below.new_zeros(*below.shape[:-1], z_dim, z_dim)
        strictly_lower[..., self.rows, self.cols] = below
        return z_loc, strictly_lower + torch.diag_embed(diagonal)

    def distribution(self, x):
        z_loc, z_scale_tril = self.encode(x)
        return LeanMultivariateNormal(z_loc, scale_tril=z_scale_tril)

    def encoder_distribution(self, x):
        return self.distribution(x)


class IAFGuide(AmortizedGuide):
    """q(z | x): the diagonal Gaussian encoder followed by inverse autoregressive flow steps
    conditioned on x (Kingma et al. 2016).

    The encoder outputs (mu, sigma, h); z_0 ~ N(mu, diag sigma^2), then z_t = IAF_t(z_{t-1}; h)
    with Pyro's conditional affine autoregressive transforms (the numerically stable, gated form
    of the paper), so that log q(z_T | x) = log N(z_0) - sum_t log |det dz_t / dz_{t-1}|. Scoring
    the guide's own samples reuses the cached z_0; scoring any other z inverts the flow, which
    takes z_dim network passes per step (exact but slow; AIS and the mixture proposal do this).
    """

    def __init__(self, x_dim, z_dim, hidden_dims=(512, 256), activation="relu", network=None,
                 num_flows=2, context_dim=None, flow_hidden=None):
        super().__init__(x_dim, z_dim)
        for name, value in (("num_flows", num_flows), ("context_dim", context_dim),
                            ("flow_hidden", flow_hidden)):
            if value is not None and int(value) < 1:
                raise ValueError(f"the iaf guide's {name} must be a positive integer, got {value}")
        self.context_dim = int(context_dim or self.z_dim)
        self.encoder = network or MLP(self.x_dim, hidden_dims, 2 * self.z_dim + self.context_dim,
                                      activation)
        flow_hidden = [int(flow_hidden or max(64, 4 * self.z_dim))]
        self.flows = nn.ModuleList(
            conditional_affine_autoregressive(self.z_dim, self.context_dim, flow_hidden,
                                              stable=True)
            for _ in range(int(num_flows)))

    @classmethod
    def encoder_outputs(cls, z_dim, context_dim=None, **options):
        return 2 * z_dim + int(context_dim or z_dim)

    def encode(self, x):
        """Return (z_loc, z_scale, context), the base Gaussian and the flows' context h."""
        z_loc, z_raw_scale, context = self.encoder(x).split(
            [self.z_dim, self.z_dim, self.context_dim], dim=-1)
        return z_loc, F.softplus(z_raw_scale) + MIN_SCALE, context

    def encoder_distribution(self, x):
        z_loc, z_scale, _ = self.encode(x)
        return LeanNormal(z_loc, z_scale).to_event(1)

    def distribution(self, x):
        z_loc, z_scale, context = self.encode(x)
        base = LeanNormal(z_loc, z_scale).to_event(1)
        return dist.TransformedDistribution(base, [flow.condition(context) for flow in self.flows])


class LocalGuide(Guide):
    """Non-amortized q(z | x_n): free variational parameters for each of N fixed data points,
    in the family of an amortized Gaussian guide, warm-started from its encoder.

    Optimizing them on the evaluation points (:func:`inference.local.fit_local_guide`) gives the
    best guide of the family for each point, which separates the two parts of the gap
    log p(x) - ELBO (Cremer et al. 2018): the approximation gap (best guide of the family vs. the
    true posterior) and the amortization gap (the encoder vs. the best guide of the family).
    The guide answers only for the rows it was made for (in any order or subset).
    """

    # Its own name: a VampPrior of the model registers the amortized guide as "guide".
    pyro_name = "local_guide"
    context_parameters = ("base", "x")

    def __init__(self, base, x):
        super().__init__(base.x_dim, base.z_dim)
        if isinstance(base, FullCovarianceGuide):
            self.family = "fullcov"
        elif isinstance(base, DiagonalGaussianGuide):
            self.family = "diagonal"
        else:
            raise ConfigError("the local guide is defined for the Gaussian guide families "
                              f"diagonal and fullcov, not {type(base).__name__}")
        check_batch(x, base.x_dim)
        self._base = (base,)
        self.register_buffer("data", x.detach().clone())
        with torch.no_grad():
            z_loc, z_scale = base.encode(x)
        self.z_loc = nn.Parameter(z_loc.clone())
        if self.family == "diagonal":
            # The inverse of softplus(raw) + MIN_SCALE, so that the start is the encoder's q.
            self.z_raw_scale = nn.Parameter(_softplus_inverse(z_scale - MIN_SCALE))
        else:
            diagonal = z_scale.diagonal(dim1=-2, dim2=-1) - MIN_SCALE
            self.z_scale_tril = nn.Parameter(z_scale.tril(-1) + torch.diag_embed(diagonal))
        self._index = None

    @classmethod
    def build(cls, context, **options):
        raise ConfigError(
            "--guide local has no encoder to train: it is fitted on the evaluation points "
            "(scripts/evaluate.py RUN --guide local); train with diagonal, fullcov or iaf")

    def rows(self, x):
        """The indices of the rows of ``x`` among the points this guide was made for."""
        if self._index is None or self._index[0] is not self.data:
            keys = self.data.cpu().numpy()
            self._index = (self.data, {row.tobytes(): i for i, row in enumerate(keys)})
        index = self._index[1]
        try:
            found = [index[row.tobytes()] for row in x.detach().cpu().numpy()]
        except KeyError:
            raise ValueError(f"the local guide has parameters only for the {self.data.shape[0]} "
                             "points it was fitted on; this batch holds other points") from None
        return torch.tensor(found, device=self.z_loc.device)

    def distribution(self, x):
        rows = self.rows(x)
        z_loc = self.z_loc[rows]
        if self.family == "diagonal":
            z_scale = F.softplus(self.z_raw_scale[rows]) + MIN_SCALE
            return LeanNormal(z_loc, z_scale).to_event(1)
        scale_tril = self.z_scale_tril[rows].tril(-1)
        diagonal = self.z_scale_tril[rows].diagonal(dim1=-2, dim2=-1).abs() + MIN_SCALE
        return LeanMultivariateNormal(z_loc, scale_tril=scale_tril + torch.diag_embed(diagonal))


def _softplus_inverse(y):
    return y + torch.log(-torch.expm1(-y))


GUIDES = Registry("guide", {
    "diagonal": DiagonalGaussianGuide,
    "fullcov": FullCovarianceGuide,
    "iaf": IAFGuide,
    "local": LocalGuide,
}, base=Guide, allow_custom=True)


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

"""The assembly of the generative model p(z) p(x | z) from its parts, as a
:class:`models.base.config.ModelConfig` describes it (:func:`build_model`); the guide joins it
in :mod:`inference.build`, which builds the model and the guide of a run together.

Every part is built by its family's base class from a :class:`BuildContext` (the dimensions, the
architecture and, for parts shared with the guide, the guide) and the part's own options, which
:meth:`models.base.registry.Registry.resolve` has checked and completed with the part's defaults.
"""

from dataclasses import dataclass
from typing import Any, Optional

import torch

from models.base.config import ConfigError, ModelConfig
from models.architectures import ARCHITECTURES
from models.likelihoods import LIKELIHOODS
from models.priors import PRIORS
from models.vae import VAE


@dataclass
class BuildContext:
    """What a part may need from the rest of the run to build itself."""

    z_dim: int
    x_dim: int
    image_shape: Optional[tuple]
    #: the :class:`models.architectures.Architecture` of the run (makes decoders and encoders)
    architecture: Any
    #: the run's guide, for priors that share its encoder (the VampPrior); None otherwise
    guide: Any = None

    def encoder(self, out_features):
        """An encoder body x (..., x_dim) -> (..., out_features) of the run's architecture."""
        return self.architecture.encoder(self.x_dim, out_features, self.image_shape)


def resolve_model_config(config):
    """``config`` (a ModelConfig or a dict) with the options of its architecture, prior and
    likelihood checked and completed (the guide's are the guide family's business, see
    :func:`inference.build.resolve`)."""
    config = ModelConfig.of(config)
    return ModelConfig(
        z_dim=config.z_dim, x_dim=config.x_dim, image_shape=config.image_shape,
        architecture=ARCHITECTURES.resolve(config.architecture),
        prior=PRIORS.resolve(config.prior),
        likelihood=LIKELIHOODS.resolve(config.likelihood),
        guide=config.guide)


def build_context(config, guide=None):
    config = ModelConfig.of(config)
    if config.x_dim is None:
        raise ConfigError("the model configuration lacks x_dim, the number of features of a data "
                          "point; it is set from the data set when a run is made")
    spec = ARCHITECTURES.resolve(config.architecture)
    architecture = ARCHITECTURES.get(spec.name).build(None, **spec.options)
    return BuildContext(config.z_dim, config.x_dim, config.image_shape, architecture, guide)


def build_part(registry, spec, context):
    """Build the member of ``registry`` that ``spec`` names with its resolved options, and check
    that the result keeps the family's contract."""
    spec = registry.resolve(spec)
    cls = registry.get(spec.name)
    part = cls.build(context, **spec.options)
    if registry.base is not None and not isinstance(part, registry.base):
        raise ConfigError(f"building the {registry.kind} {spec.name!r} gave a "
                          f"{type(part).__name__}, not a {registry.base.__name__}")
    if isinstance(part, torch.nn.Module) and hasattr(part, "z_dim") and \
            getattr(part, "z_dim") != context.z_dim:
        raise ConfigError(f"the {registry.kind} {spec.name!r} has z_dim {part.z_dim}, expected "
                          f"{context.z_dim}; pass z_dim to the base class")
    return part


def build_prior(config, guide=None):
    """The prior p(z) that ``config`` names (a registered name or a user's ``module:Class``)."""
    config = resolve_model_config(config)
    return build_part(PRIORS, config.prior, build_context(config, guide))


def build_model(config, guide=None):
    """The VAE p(z) p(x | z) that ``config`` describes. ``guide`` is passed to parts that share
    it (the VampPrior uses its encoder)."""
    config = resolve_model_config(config)
    context = build_context(config, guide)
    likelihood = build_part(LIKELIHOODS, config.likelihood, context)
    decoder = context.architecture.decoder(
        config.z_dim, config.x_dim * likelihood.params_per_feature, config.image_shape)
    prior = build_part(PRIORS, config.prior, context)
    return VAE(prior, decoder, likelihood, config.x_dim)

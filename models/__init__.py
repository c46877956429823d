"""Generative models: the VAE story p(z) p(x | z) and its swappable parts."""

from models.decoders import DECODERS, MLPDecoder
from models.likelihoods import LIKELIHOODS, BernoulliLikelihood, GaussianLikelihood, Likelihood
from models.priors import (PRIORS, FlowPrior, MixtureOfGaussiansPrior, Prior,
                           StandardNormalPrior, VampPrior)
from models.registry import ConfigError, lookup
from models.vae import VAE, check_batch

__all__ = [
    "DECODERS", "LIKELIHOODS", "PRIORS", "VAE", "BernoulliLikelihood", "ConfigError",
    "FlowPrior", "GaussianLikelihood", "Likelihood", "MLPDecoder", "MixtureOfGaussiansPrior",
    "Prior", "StandardNormalPrior", "VampPrior", "build_model", "build_prior", "check_batch",
    "check_part", "lookup",
]


def build_model(config, **context):
    """Build the VAE that a run configuration (a plain dict) describes.

    Keys used: ``prior``, ``architecture``, ``likelihood``, ``z_dim``, ``x_dim``,
    ``hidden_dims``, ``activation`` and the options of the chosen parts (e.g. ``sigma``).
    ``context`` passes objects that a part shares with the guide (e.g. an encoder).
    """
    likelihood = lookup(LIKELIHOODS, config.get("likelihood", "bernoulli"), "likelihood")
    likelihood = likelihood.from_config(config)
    decoder = lookup(DECODERS, config.get("architecture", "mlp"), "architecture")
    out_features = config["x_dim"] * likelihood.params_per_feature
    decoder = decoder.from_config(config, out_features=out_features)
    prior = build_prior(config, **context)
    return VAE(prior, decoder, likelihood, config["x_dim"])


def build_prior(config, **context):
    """The prior named by ``config["prior"]``: a registered name or a user's ``module:Class``.

    A class is built with ``from_config(config, **context)`` when it has one (subclasses of
    :class:`Prior` do), else as ``cls(z_dim)``; either way the result must be a ``Prior``-like
    ``nn.Module`` with the right ``z_dim``."""
    name = config.get("prior", "standard")
    cls = lookup(PRIORS, name, "prior", allow_custom=True)
    if hasattr(cls, "from_config"):
        prior = cls.from_config(config, **context)
    else:
        prior = cls(config["z_dim"])
    check_part(prior, name, "prior", config["z_dim"])
    if not hasattr(prior, "shared_modules"):
        raise ConfigError(f"the prior {name!r} lacks shared_modules(); derive it from "
                          "models.priors.Prior")
    return prior


def check_part(part, name, kind, z_dim):
    """Refuse a prior or guide that does not keep the contract of its family."""
    import torch

    if not isinstance(part, torch.nn.Module):
        raise ConfigError(f"the {kind} {name!r} must be a torch.nn.Module (derive it from the "
                          f"project's base class), got {type(part).__name__}")
    if getattr(part, "z_dim", None) != int(z_dim):
        raise ConfigError(f"the {kind} {name!r} has z_dim {getattr(part, 'z_dim', None)}, "
                          f"expected {z_dim}; pass z_dim to the base class")

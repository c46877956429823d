"""Generative models: the VAE story p(z) p(x | z) and its swappable parts."""

from models.decoders import DECODERS, MLPDecoder
from models.likelihoods import LIKELIHOODS, BernoulliLikelihood, GaussianLikelihood, Likelihood
from models.priors import PRIORS, Prior, StandardNormalPrior
from models.registry import ConfigError, lookup
from models.vae import VAE, check_batch

__all__ = [
    "DECODERS", "LIKELIHOODS", "PRIORS", "VAE", "BernoulliLikelihood", "ConfigError",
    "GaussianLikelihood", "Likelihood", "MLPDecoder", "Prior", "StandardNormalPrior",
    "build_model", "check_batch", "lookup",
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
    prior = lookup(PRIORS, config.get("prior", "standard"), "prior").from_config(config, **context)
    return VAE(prior, decoder, likelihood, config["x_dim"])

"""Generative models: the VAE story p(z) p(x | z), its swappable parts (priors, architectures,
likelihoods), the linear-Gaussian reference model, and the shared base in ``models.base``."""

from models.base.config import ConfigError, ModelConfig, PartSpec, RunConfig
from models.assembly import BuildContext, build_model, build_prior, resolve_model_config
from models.architectures import ARCHITECTURES, Architecture
from models.likelihoods import LIKELIHOODS, Likelihood
from models.priors import PRIORS, Prior
from models.vae import VAE, check_batch

__all__ = [
    "ARCHITECTURES", "Architecture", "BuildContext", "ConfigError", "LIKELIHOODS", "Likelihood",
    "ModelConfig", "PRIORS", "PartSpec", "Prior", "RunConfig", "VAE", "build_model",
    "build_prior", "check_batch", "resolve_model_config",
]

"""Build the model and guide that a configuration describes, and resolve a whole run
configuration (every part's options checked and completed with the part's defaults)."""

import dataclasses

import torch

from inference.guides import GUIDES
from inference.objectives import OBJECTIVES
from models.architectures import ARCHITECTURES
from models.base.config import ConfigError, ModelConfig, RunConfig
from models.likelihoods import LIKELIHOODS
from models.priors import PRIORS
from models.utilities.device import MemoryTooSmall, check_fits
from models.assembly import build_context, build_model, build_part, resolve_model_config

#: the registry of each family of parts, by the family's name in the configuration
FAMILY_REGISTRIES = {"architecture": ARCHITECTURES, "prior": PRIORS, "likelihood": LIKELIHOODS,
                     "guide": GUIDES, "objective": OBJECTIVES}


def takes_option(family, name, option):
    """Whether the registered part ``name`` of ``family`` takes ``option`` (a keyword parameter
    of its class): where the part options of a flat version-1 configuration go (see
    :func:`models.base.config.from_flat`). A name not registered, such as a user's
    ``module:Class``, takes none: reading a configuration imports nothing."""
    registry = FAMILY_REGISTRIES[family]
    return isinstance(name, str) and name in registry and option in registry.options(name)


def resolve(config):
    """A :class:`RunConfig` (from a RunConfig or a dict, nested or flat) whose parts all carry
    their complete, checked options. Resolving twice changes nothing."""
    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config, takes=takes_option)
    model = dataclasses.replace(resolve_model_config(config.model),
                                guide=GUIDES.resolve(config.model.guide))
    training = dataclasses.replace(config.training,
                                   objective=OBJECTIVES.resolve(config.training.objective))
    return dataclasses.replace(config, model=model, training=training)


def build_guide(config):
    """The guide q(z | x) that ``config`` names: a registered name or a user's
    ``module:Class``."""
    config = resolve_model_config(ModelConfig.of(config, takes_option))
    return build_part(GUIDES, config.guide, build_context(config))


def build(config):
    """Return (model, guide) for ``config`` (a RunConfig, a ModelConfig or a dict). Parts the
    model shares with the guide (such as the encoder of a VampPrior) get the guide.

    Sizes that cannot fit (``z_dim`` 10^12, a hidden layer of 10^12 units, 10^9 features) are
    refused with one line before anything is allocated: the parts are first built on torch's
    ``meta`` device, which allocates nothing, and their parameters are counted."""
    config = ModelConfig.of(config, takes_option)
    check_model_fits(config)
    try:
        guide = build_guide(config)
        model = build_model(config, guide=guide)
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        raise MemoryTooSmall(f"the model's sizes do not fit in memory ({_sizes(config)}): "
                             f"{' '.join(str(error).split())[:160]}; choose smaller "
                             "sizes") from None
    return model, guide


def check_model_fits(config):
    """Refuse a model whose parameters (with the gradients and the two Adam moments that
    training adds: four copies) cannot fit in the memory that is free."""
    try:
        with torch.device("meta"):
            guide = build_guide(config)
            model = build_model(config, guide=guide)
    except (ConfigError, MemoryError):
        raise
    except Exception:
        return   # a part that cannot be built on the meta device is sized when it is built
    params = {id(p): p for module in (model, guide) for p in module.parameters()}
    num_bytes = sum(p.numel() * p.element_size() for p in params.values())
    check_fits(4 * num_bytes, f"training a model of {sum(p.numel() for p in params.values()):,} "
               f"parameters ({_sizes(config)})", "choose smaller sizes")


def _sizes(config):
    hidden = config.architecture.options.get("hidden_dims") if config.architecture else None
    shown = f"z_dim={config.z_dim}, x_dim={config.x_dim}"
    return shown + (f", hidden_dims={list(hidden)}" if hidden is not None else "")


def _out_of_memory(error):
    text = str(error)
    return isinstance(error, MemoryError) or any(
        words in text for words in ("can't allocate memory", "out of memory",
                                    "not enough memory", "numel", "overflow"))

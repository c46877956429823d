"""Build the model and guide that a configuration describes, and resolve a whole run
configuration (every part's options checked and completed with the part's defaults)."""

import dataclasses

from inference.guides import GUIDES
from inference.objectives import OBJECTIVES
from models.base.config import ModelConfig, RunConfig
from models.build import build_context, build_model, build_part, resolve_model_config


def resolve(config):
    """A :class:`RunConfig` (from a RunConfig or a dict, nested or flat) whose parts all carry
    their complete, checked options. Resolving twice changes nothing."""
    config = RunConfig.from_dict(config) if not isinstance(config, RunConfig) else config
    model = dataclasses.replace(resolve_model_config(config.model),
                                guide=GUIDES.resolve(config.model.guide))
    training = dataclasses.replace(config.training,
                                   objective=OBJECTIVES.resolve(config.training.objective))
    return dataclasses.replace(config, model=model, training=training)


def build_guide(config):
    """The guide q(z | x) that ``config`` names: a registered name or a user's
    ``module:Class``."""
    config = resolve_model_config(config)
    return build_part(GUIDES, config.guide, build_context(config))


def build(config):
    """Return (model, guide) for ``config`` (a RunConfig, a ModelConfig or a dict). Parts the
    model shares with the guide (such as the encoder of a VampPrior) get the guide."""
    config = ModelConfig.of(config)
    guide = build_guide(config)
    model = build_model(config, guide=guide)
    return model, guide

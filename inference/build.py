"""Build the model and guide that a run configuration (a plain dict) describes."""

from inference.guides import GUIDES
from models import build_model, lookup


def build_guide(config):
    return lookup(GUIDES, config.get("guide", "diagonal"), "guide").from_config(config)


def build(config):
    """Return (model, guide) for ``config``. Parts the model shares with the guide (such as the
    encoder of a VampPrior) are passed to the model builder as context."""
    guide = build_guide(config)
    model = build_model(config, guide=guide)
    return model, guide

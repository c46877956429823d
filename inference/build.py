"""Build the model and guide that a run configuration (a plain dict) describes."""

from inference.guides import GUIDES
from models import build_model, check_part, lookup


def build_guide(config):
    """The guide named by ``config["guide"]``: a registered name or a user's ``module:Class``,
    built with ``from_config(config)`` when the class has one, else as ``cls(x_dim, z_dim)``."""
    name = config.get("guide", "diagonal")
    cls = lookup(GUIDES, name, "guide", allow_custom=True)
    if hasattr(cls, "from_config"):
        guide = cls.from_config(config)
    else:
        guide = cls(config["x_dim"], config["z_dim"])
    check_part(guide, name, "guide", config["z_dim"])
    return guide


def build(config):
    """Return (model, guide) for ``config``. Parts the model shares with the guide (such as the
    encoder of a VampPrior) are passed to the model builder as context."""
    guide = build_guide(config)
    model = build_model(config, guide=guide)
    return model, guide

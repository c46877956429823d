"""Name registries for the swappable parts of the story (priors, decoders, likelihoods, guides,
estimators): every family maps command-line names to classes or functions.

Besides the registered names, :func:`lookup` accepts ``module:Name`` for priors, guides and the
other families that allow it: the class ``Name`` is imported from ``module``, found on the Python
path or in the working directory. This is the extension point for parts written by users; the
name is stored in the run configuration, so checkpoints rebuild such parts when the module can
still be imported.
"""

import importlib
import os
import sys


class ConfigError(ValueError):
    """A configuration names something that does not exist or does not fit together."""


def import_object(spec, kind):
    """Import ``Name`` from ``module`` for a spec ``module:Name`` (``Name`` may be dotted)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"a custom {kind} is given as module:Name, got {spec!r}")
    # Scripts run as ``python scripts/x.py`` have scripts/ on the path, not the working directory.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        found = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"cannot import module {module_name!r} for the {kind} {spec!r} ({error}); run from "
            f"the folder that holds {module_name.replace('.', '/')}.py or add that folder to "
            "PYTHONPATH") from error
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no {attribute!r} for the {kind} "
                              f"{spec!r}") from None
    return found


def lookup(registry, name, kind, allow_custom=False):
    """Return ``registry[name]``; an unknown name gets an error that lists the valid ones. With
    ``allow_custom``, a name ``module:Name`` imports a user's class instead."""
    if allow_custom and isinstance(name, str) and ":" in name:
        return import_object(name, kind)
    try:
        return registry[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(registry))
        extra = " or module:Class for your own" if allow_custom else ""
        raise ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {valid}{extra}") from None

"""Name registries for the swappable parts of the story (priors, decoders, likelihoods, guides,
estimators): every family maps command-line names to classes or functions."""


class ConfigError(ValueError):
    """A configuration names something that does not exist or does not fit together."""


def lookup(registry, name, kind):
    """Return ``registry[name]``; an unknown name gets an error that lists the valid ones."""
    try:
        return registry[name]
    except KeyError:
        valid = ", ".join(sorted(registry))
        raise ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {valid}") from None

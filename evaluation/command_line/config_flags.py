"""From flags to the run configuration: which flag sets which setting of a
:class:`models.base.config.RunConfig` (``CONFIG_PATHS``), which part options the part-option
flags set (``OPTION_FLAGS``, read from :data:`models.base.config.PART_OPTION_KEYS`), the
changes a command line makes (:func:`config_changes`), the estimators it names and their
options, and what it allows a run to import (:func:`trusted_parts`). Flags left out are None,
so that the configuration's defaults (or a resumed run's settings) apply, and so that an
explicit flag can be told from a default."""

import typing

from evaluation.estimators import ESTIMATORS
from inference.guides import GUIDES
from inference.objectives import OBJECTIVES
from models.base.config import PART_OPTION_KEYS, ConfigError, RunConfig, place_part_options
from models.utilities.entry_points import comma_list
from models.architectures import ARCHITECTURES
from models.likelihoods import LIKELIHOODS
from models.networks import ACTIVATIONS
from models.priors import PRIORS


#: flag destination -> dotted path in ``RunConfig.to_dict()``, for every setting that has a flag
#: (read from :meth:`models.base.config.RunConfig.settings`)
CONFIG_PATHS = {item.name: path for path, item in RunConfig.settings()
                if item.metadata.get("flag")}


#: the swappable families: registry and the dotted path of their PartSpec
FAMILIES = {
    "architecture": (ARCHITECTURES, "model.architecture"),
    "prior": (PRIORS, "model.prior"),
    "likelihood": (LIKELIHOODS, "model.likelihood"),
    "guide": (GUIDES, "model.guide"),
    "objective": (OBJECTIVES, "training.objective"),
}


class PartOptionFlag(typing.NamedTuple):
    """A flag that sets an option of a part: its type, its help, and the (family, option) pairs
    it sets; every chosen part that takes the option receives the value (``--flow-hidden``
    serves the flow prior and the iaf guide). Its default is the parts' own."""

    kind: typing.Any
    help: str
    targets: tuple


def _option_kind(dest, entry):
    """How the flag of a part option reads its value: as the type of the defaults of the parts
    that take it (a tuple: a comma-separated list of its items' type), or as its entry of
    PART_OPTION_KEYS says where those defaults are all None."""
    if entry.kind is not None:
        return entry.kind
    kinds = set()
    for family, option in entry.targets:
        registry = FAMILIES[family][0]
        for name in registry:
            default = registry.options(name).get(option)
            if isinstance(default, tuple) and default:
                kinds.add((tuple, type(default[0])))
            elif isinstance(default, (int, float, str)) and not isinstance(default, bool):
                kinds.add((type(default), None))
    if len(kinds) != 1:
        raise TypeError(f"the parts that take {dest} give no single type for its flag "
                        f"({sorted(map(str, kinds)) or 'no default'}); give its kind in "
                        "models.base.config.PART_OPTION_KEYS")
    kind, item = kinds.pop()
    return comma_list(item) if kind is tuple else kind


#: the part-option flags, by destination, each listed after the part it serves first
OPTION_FLAGS = {
    dest: PartOptionFlag(_option_kind(dest, entry),
                         entry.help.format(activations=ACTIVATIONS.names()), entry.targets)
    for dest, entry in PART_OPTION_KEYS.items()}


def flag(dest):
    return "--" + dest.replace("_", "-")


class Changes(dict):
    """{dotted path: value} of settings given on the command line; ``flags[path]`` is the flag
    that gave each, for messages."""

    def __init__(self):
        super().__init__()
        self.flags = {}

    def set(self, path, value, given_by):
        self[path] = value
        self.flags[path] = given_by


def _takes(family, name, option):
    """Whether the part ``name`` of ``family`` takes ``option``: a user's ``module:Class``,
    named on the command line, is imported to read its options."""
    return option in FAMILIES[family][0].options(name)


def config_changes(args, base):
    """{dotted path: value} of the RunConfig settings the user gave on the command line.

    :param base: the RunConfig the changes apply to (the defaults for a new run, the stored
        configuration for a resumed one): part-option flags go to the part the run will use.
    :returns: a :class:`Changes`.
    """
    values = vars(args)
    changes = Changes()
    for dest, path in CONFIG_PATHS.items():
        if values.get(dest) is not None:
            changes.set(path, values[dest], flag(dest))
    chosen = {family: changes.get(f"{path}.name", base.get(f"{path}.name"))
              for family, (_, path) in FAMILIES.items()}
    for family, (_, path) in FAMILIES.items():
        if chosen[family] != base.get(f"{path}.name"):
            # Another part than the base's: it starts from its own defaults, not the old options.
            changes.set(f"{path}.options", {}, flag(family))
        for key, value in values.get(f"{family}_option") or ():
            changes.set(f"{path}.options.{key}", value, f"--{family}-option {key}=")
    for dest, value, taken in place_part_options(values, chosen, _takes):
        if not taken:
            parts = " or ".join(f"the {chosen[family]} {family}"
                                for family, _ in OPTION_FLAGS[dest].targets)
            raise ConfigError(f"{flag(dest)} does not apply to {parts}; drop it")
        for family, option in taken:
            changes.set(f"{FAMILIES[family][1]}.options.{option}", value, flag(dest))
    return changes


def estimator_names(args, default):
    """The estimators ``--estimator`` names, in order, without repeats; an unknown name lists the
    valid ones. ``--estimator`` given with no name in it (``--estimator ,``) is an error, not the
    default."""
    names = [name for value in args.estimator for name in value]
    if args.estimator and not names:
        raise ConfigError(f"--estimator names no estimator; valid: {ESTIMATORS.names()}; give "
                          f"one or more, comma-separated, or drop the flag for the default "
                          f"({','.join(default)})")
    for name in names:
        ESTIMATORS.get(name)
    return list(dict.fromkeys(names)) or list(default)


def estimator_options(args, names, also=()):
    """The estimator options given on the command line, checked against the chosen estimators:
    an option that none of ``names`` takes is an error. ``also``: estimators whose options are
    used elsewhere in the script (such as ``ais`` by ``--bdmc``)."""
    values = vars(args)
    chosen = list(names) + list(also)
    options = {}
    for option, (_, takers) in estimator_option_defaults().items():
        value = values.get(option)
        if value is None:
            continue
        # A user's module:function takes the flags of the options it shares with ours.
        takers = takers + [name for name in chosen if name not in ESTIMATORS
                           and option in ESTIMATORS.options(name)]
        if not set(takers) & set(chosen):
            which = (f"{takers[0]}, which is not" if len(takers) == 1 else
                     f"{', '.join(takers)}, none of which is")
            raise ConfigError(f"{flag(option)} applies to {which} among the chosen estimators "
                              f"({', '.join(names)}); add one with --estimator or drop the flag")
        options[option] = value
    for name in ESTIMATORS:
        own = ESTIMATORS.own_samples_of(name)
        if own is not None and values.get(own.option) is not None and name not in chosen:
            raise ConfigError(f"{flag(own.option)} applies to {name}, which is not among the "
                              f"chosen estimators ({', '.join(names)}); add it with "
                              "--estimator or drop the flag")
    return options


def own_sample_flags():
    """The destinations of the flags of the estimators whose K is a setting of their own
    (``ais_chains``)."""
    return [own.option for own in ESTIMATORS.own_samples.values()]


def own_sample_counts(args):
    """{estimator: K} of the estimators whose K is a setting of their own, as the flags say."""
    return {name: num_samples_for(name, args) for name in ESTIMATORS.own_samples}


def num_samples_for(name, args):
    """K of estimator ``name``: its own setting where it declares one (``--ais-chains`` for
    ais, see :class:`evaluation.estimators.OwnSamples`), ``--num-samples`` otherwise."""
    own = ESTIMATORS.own_samples_of(name)
    if own is not None:
        value = getattr(args, own.option, None)
        return value if value is not None else own.default
    return args.num_samples


def trusted_parts(args):
    """What the user allows a run they open to import: every ``module:Class`` with
    ``--trust-run``, else those they name again with ``--prior``, ``--guide``, ..."""
    if getattr(args, "trust_run", False):
        return True
    return {getattr(args, family) for family in FAMILIES
            if isinstance(getattr(args, family, None), str) and ":" in getattr(args, family)}


def estimator_option_defaults():
    """{option: (default, [estimators that take it])} over every registered estimator."""
    options = {}
    for name in ESTIMATORS:
        for option, default in ESTIMATORS.options(name).items():
            options.setdefault(option, (default, []))[1].append(name)
    return options

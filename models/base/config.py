"""The run configuration: typed, frozen, with every default in one place.

A run is described by a :class:`RunConfig` made of three parts, each a frozen dataclass:

- :class:`DataConfig`: which data, where from, how binarized;
- :class:`ModelConfig`: the story and its encoder: z_dim, x_dim, and one :class:`PartSpec` (a
  registered name or ``module:Class``, plus that part's own options) for each swappable family:
  ``architecture``, ``prior``, ``likelihood`` and ``guide``;
- :class:`TrainingConfig`: epochs, minibatch, Adam step size, the objective (a PartSpec too),
  KL warm-up, JIT;

plus the ``seed`` and the ``device``. The options of a part are the keyword parameters of its
class (see :mod:`models.base.registry`), so a part's defaults live in its signature and nowhere
else; the defaults of everything else are the field defaults below.

``from_dict`` refuses unknown keys with a "did you mean" suggestion, and converts the flat dicts
that checkpoints of format version 1 stored (given ``takes``, the registries' word on which part
takes which option; see :func:`from_flat`). ``to_dict`` gives plain JSON-ready data, which is
what ``config.json`` and every checkpoint hold. :data:`PART_OPTION_KEYS` lists the part options
that have a flag (and a flat key) of their own, ``--sigma``, ``--prior-components``, ...

(Over 300 lines: each setting is written once, with its default, type, checks, help and resume
rule, so the whole schema is here; the part options with flags of their own and the conversion
of version-1 checkpoints are its last parts.)
"""

import dataclasses
import difflib
import hashlib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ConfigError", "DataConfig", "ModelConfig", "PartSpec", "RunConfig", "TrainingConfig",
           "did_you_mean"]


def setting(default, help, *, choices=None, resumable=False, flag=True):
    """A field of the configuration with what the command line needs to know of it, so that
    each setting is written in one place: ``help`` (its line in ``--help`` and docs/flags.md;
    ``{names}`` in the help of a part stands for the registered names of its family),
    ``choices`` (the values it may take, where they are few), ``resumable`` (whether
    ``--resume`` may change it) and ``flag`` (True: a flag of the data, model or training
    group; ``"own"``: a flag that a group of its own adds, such as ``--data-dir``, ``--seed``
    and ``--device``; False: no flag, for settings that come from the data)."""
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "resumable": resumable, "flag": flag})


#: the data sets, binarizations and synthetic priors of :class:`DataConfig`
DATASETS = ("mnist", "mnist-subset", "synthetic")
BINARIZATIONS = ("dynamic", "static", "none")
SYNTHETIC_PRIORS = ("standard", "mixture")


class ConfigError(ValueError):
    """A configuration names something that does not exist or does not fit together."""


def did_you_mean(name, valid):
    """`` (did you mean 'x'?)`` for the valid name most like ``name``, else ``''``."""
    found = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, Mapping):
        return types.MappingProxyType({key: _freeze(item) for key, item in value.items()})
    return value


def _thaw(value):
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class PartSpec:
    """One swappable part: its ``name`` (registered, or ``module:Class``) and its ``options``
    (keyword arguments of its class; see :meth:`models.base.registry.Registry.resolve`)."""

    name: str
    options: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a part is named by a non-empty string, got {self.name!r}")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"the options of {self.name!r} must be a mapping, got "
                              f"{type(self.options).__name__}")
        for key in self.options:
            if not isinstance(key, str):
                raise ConfigError(f"option names of {self.name!r} are strings, got {key!r}")
        object.__setattr__(self, "options", _freeze(self.options))

    @classmethod
    def of(cls, value, kind="part"):
        """A PartSpec from a PartSpec, a name, or a dict ``{"name": ..., "options": {...}}``."""
        if isinstance(value, PartSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"name", "options"})
            if unknown:
                raise ConfigError(f"unknown key {unknown[0]!r} in the {kind} "
                                  f"{did_you_mean(unknown[0], ('name', 'options'))}; a part is "
                                  "given as {\"name\": ..., \"options\": {...}}")
            if "name" not in value:
                raise ConfigError(f"the {kind} needs a name, got {dict(value)!r}")
            return cls(value["name"], value.get("options") or {})
        raise ConfigError(f"the {kind} is given as a name or as {{\"name\": ..., \"options\": "
                          f"{{...}}}}, got {value!r}")

    def with_options(self, **options):
        return PartSpec(self.name, {**self.options, **options})

    def to_dict(self):
        return {"name": self.name, "options": _thaw(self.options)}


def _type_name(annotation):
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
            tuple: "a list"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _check(value, annotation, where):
    """``value`` checked against a field's type (int, float, bool, str, tuple, PartSpec or
    Optional of one of them) and converted where that loses nothing."""
    optional = typing.get_origin(annotation) is typing.Union
    if optional:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        if value is None:
            return None
    if annotation is PartSpec:
        return PartSpec.of(value, where)
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{where} must be a finite number, got {value}")
    elif annotation is tuple:
        ok = isinstance(value, (list, tuple))
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, annotation)
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(annotation)}"
                          f"{' or null' if optional else ''}, got {value!r}")
    return value


class _Section:
    """from_dict / to_dict / type checks shared by the dataclasses of the configuration."""

    #: fields no command-line flag sets (they come from the data)
    NOT_FLAGS = ("x_dim", "image_shape")

    def _where(self, name):
        """How a field is named in messages: "z_dim (--z-dim)"."""
        return name if name in self.NOT_FLAGS else f"{name} (--{name.replace('_', '-')})"

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            value = _check(getattr(self, item.name), hints[item.name], self._where(item.name))
            object.__setattr__(self, item.name, value)
        self.validate()

    def validate(self):
        """Range checks beyond the types; subclasses add theirs."""

    def _at_least(self, name, minimum, optional=False):
        value = getattr(self, name)
        if optional and value is None:
            return
        if value < minimum:
            raise ConfigError(f"{self._where(name)} must be at least {minimum}, got {value}")

    @classmethod
    def from_dict(cls, data, where=None):
        where = where or cls.__name__
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping of settings, got "
                              f"{type(data).__name__}")
        names = [item.name for item in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(f"unknown setting {key!r} in {where}"
                                  f"{did_you_mean(key, names)}; valid settings: "
                                  f"{', '.join(names)}")
        values = {}
        for item in dataclasses.fields(cls):
            if item.name not in data:
                continue
            value = data[item.name]
            inner = typing.get_type_hints(cls)[item.name]
            if isinstance(inner, type) and issubclass(inner, _Section):
                value = inner.from_dict(value, item.name)
            values[item.name] = value
        return cls(**values)

    def to_dict(self):
        result = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            result[item.name] = value.to_dict() if hasattr(value, "to_dict") else _thaw(value)
        return result


@dataclass(frozen=True)
class DataConfig(_Section):
    """Which data set, read from where, binarized how (see :mod:`models.data`)."""

    dataset: str = setting(
        "mnist", "mnist: the full data set from --data-dir; mnist-subset: 2,000/500 images "
        "shipped with the package; synthetic: drawn from a known story", choices=DATASETS)
    #: folder holding MNIST/raw/; None: $VAE_DATA_DIR, else ./data (its flag: add_data_flags)
    data_dir: typing.Optional[str] = setting(None, "folder holding MNIST/raw/", flag="own",
                                             resumable=True)
    download: bool = setting(False, "download MNIST into --data-dir if it is missing (needs a "
                             "network)", resumable=True)
    binarize: typing.Optional[str] = setting(
        None, "dynamic: fresh Bernoulli draw per use; static: one fixed draw; none: grey levels "
        "(default: what the likelihood needs)", choices=BINARIZATIONS)
    num_validation: typing.Optional[int] = setting(
        None, "training images held out for validation (default: 10000 for mnist, 200 for "
        "mnist-subset)")
    synthetic_z_dim: int = setting(2, "latent dimension of the true story of --dataset "
                                   "synthetic")
    synthetic_x_dim: int = setting(50, "data dimension of the synthetic data")
    synthetic_num_train: int = setting(5000, "synthetic training points; validation and test: "
                                       "1000 each")
    synthetic_seed: int = setting(0, "seed of the true decoder and of the synthetic draws")
    synthetic_prior: str = setting(
        "standard", "the true prior of the synthetic story: N(0, I) or a mixture of 8 Gaussians "
        "on a circle", choices=SYNTHETIC_PRIORS)

    def validate(self):
        self._at_least("num_validation", 0, optional=True)
        for name in ("synthetic_z_dim", "synthetic_x_dim", "synthetic_num_train"):
            self._at_least(name, 1)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The generative story p(z) p(x | z) and the guide q(z | x): dimensions and parts."""

    z_dim: int = setting(50, "dimension of the latent z")
    #: features of one data point; None until the data set is known
    x_dim: typing.Optional[int] = setting(None, "features of one data point", flag=False)
    #: (height, width) of image data, for the conv architecture and the figures
    image_shape: typing.Optional[tuple] = setting(None, "(height, width) of image data",
                                                  flag=False)
    architecture: PartSpec = setting(
        PartSpec("mlp"), "the networks: one of {names} (conv: for 28x28 images; the encoder "
        "mirrors the decoder), or module:Class")
    prior: PartSpec = setting(PartSpec("standard"), "p(z): one of {names}, or module:Class for "
                              "your own")
    likelihood: PartSpec = setting(PartSpec("bernoulli"), "p(x | z): one of {names}, or "
                                   "module:Class")
    guide: PartSpec = setting(PartSpec("diagonal"), "q(z | x): one of {names} (local: at "
                              "evaluation only), or module:Class for your own")

    def validate(self):
        self._at_least("z_dim", 1)
        self._at_least("x_dim", 1, optional=True)
        if self.image_shape is not None:
            shape = self.image_shape
            if len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
                raise ConfigError(f"image_shape must be two positive whole numbers, got "
                                  f"{list(shape)}")

    @classmethod
    def of(cls, value, takes=None):
        """A ModelConfig from a ModelConfig, a RunConfig, or a dict (nested, of model settings,
        or a flat version-1 configuration, whose part options need ``takes``: see
        :func:`from_flat`)."""
        if isinstance(value, ModelConfig):
            return value
        if isinstance(value, RunConfig):
            return value.model
        if isinstance(value, Mapping):
            names = {item.name for item in dataclasses.fields(cls)}
            if set(value) <= names:
                return cls.from_dict(value, "the model configuration")
            return RunConfig.from_dict(value, takes=takes).model
        raise ConfigError(f"expected a model configuration, got {type(value).__name__}")


#: the learning-rate schedules of TrainingConfig.learning_rate_schedule
LEARNING_RATE_SCHEDULES = ("constant", "burda")


@dataclass(frozen=True)
class TrainingConfig(_Section):
    """How SVI trains the model and guide (see :mod:`inference.training`)."""

    num_epochs: int = setting(10, "passes over the training split, in total when resuming",
                              resumable=True)
    batch_size: int = setting(128, "minibatch size B")
    learning_rate: float = setting(1e-3, "Adam step size")
    #: how the step size changes with the epochs (see ``inference.training.learning_rate_at``)
    learning_rate_schedule: str = setting(
        "constant", "constant, or burda: the step size of Burda et al. (2016), learning_rate * "
        "10^(-i/7) for 3^i epochs (i = 0..7) laid over --num-epochs in proportion",
        choices=LEARNING_RATE_SCHEDULES)
    #: Adam's epsilon (Burda et al. used 1e-4; torch's default is 1e-8)
    adam_eps: float = setting(1e-8, "Adam's epsilon (Burda et al.: 1e-4)")
    objective: PartSpec = setting(
        PartSpec("elbo"), "one of {names}: elbo is Trace_ELBO, meanfield TraceMeanField_ELBO "
        "(analytic KL where it exists), iwae the importance-weighted bound")
    #: epochs over which the weight of log p(z) - log q(z | x) grows from ~0 to 1
    kl_warmup_epochs: float = setting(0.0, "scale log p(z) - log q(z|x) from ~0 to 1 over this "
                                      "many epochs (0: none)")
    #: None (default) where the objective allows it, True insists, False never
    jit: typing.Optional[bool] = setting(
        None, "compile the loss with the JIT (JitTrace_ELBO); --no-jit never does (default: "
        "where the objective allows it, falling back with a message when a model cannot be "
        "traced)")
    #: None (default) where the JIT compiles the loss, True insists (an error without CUDA or
    #: the JIT), False never (see inference.training.cuda_graphs)
    cuda_graph: typing.Optional[bool] = setting(
        None, "on CUDA, replay each training step's loss and gradients as one CUDA graph, "
        "captured after three steps of each minibatch size (one launch instead of hundreds); "
        "--no-cuda-graph never does (default: on CUDA where the JIT compiles the loss, falling "
        "back with a message where a step cannot be captured)")

    def validate(self):
        self._at_least("num_epochs", 1)
        self._at_least("batch_size", 1)
        if not self.learning_rate > 0:
            raise ConfigError(f"{self._where('learning_rate')} must be positive, got "
                              f"{self.learning_rate}")
        self._at_least("kl_warmup_epochs", 0)
        if self.learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
            raise ConfigError(f"{self._where('learning_rate_schedule')} must be one of "
                              f"{', '.join(LEARNING_RATE_SCHEDULES)}, got "
                              f"{self.learning_rate_schedule!r}")
        if not 0 < self.adam_eps < math.inf:
            raise ConfigError(f"{self._where('adam_eps')} must be a positive number, got "
                              f"{self.adam_eps}")


@dataclass(frozen=True)
class RunConfig(_Section):
    """Everything a training run is a function of."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    seed: int = setting(0, "seeds torch and Pyro", flag="own")
    #: auto, cpu, cuda or cuda:N
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", flag="own", resumable=True)

    def validate(self):
        check_seed(self.seed)

    @classmethod
    def from_dict(cls, data, where=None, *, takes=None):
        """A RunConfig from its nested dict, or from a flat one of version 1 (converted by
        :func:`from_flat`, with ``takes``)."""
        if isinstance(data, Mapping) and data and not set(data) & {"data", "model", "training"}:
            data = from_flat(data, takes)
        return super().from_dict(data, where or "the run configuration")

    def updated(self, changes):
        """A copy with ``changes`` applied: {"model.z_dim": 3, "model.prior.options.k": 2}."""
        data = self.to_dict()
        for path, value in changes.items():
            *parents, last = path.split(".")
            target = data
            for key in parents:
                target = target.setdefault(key, {})
            target[last] = value
        return RunConfig.from_dict(data)

    @classmethod
    def settings(cls):
        """(dotted path, field) of every setting, section by section in field order; the path
        of a part is that of its name (``model.prior.name``), which its flag sets."""
        for section in dataclasses.fields(cls):
            inner = typing.get_type_hints(cls)[section.name]
            if isinstance(inner, type) and issubclass(inner, _Section):
                for item in dataclasses.fields(inner):
                    part = typing.get_type_hints(inner)[item.name] is PartSpec
                    yield f"{section.name}.{item.name}{'.name' if part else ''}", item
            else:
                yield section.name, section

    @classmethod
    def resumable_paths(cls):
        """The settings that ``--resume`` may change: how long a run trains and where it runs
        and finds its data."""
        return tuple(path for path, item in cls.settings() if item.metadata.get("resumable"))

    def get(self, path):
        """The value at a dotted ``path`` of :meth:`to_dict` (KeyError if absent)."""
        value = self.to_dict()
        for key in path.split("."):
            value = value[key]
        return value


def check_seed(seed):
    """A seed torch, Pyro and NumPy all accept: a whole number in 0..2^32 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ConfigError(f"seed (--seed) must lie in 0..{2 ** 32 - 1}, got {seed}")
    return seed


def derived_seed(*parts):
    """A 63-bit seed derived from ``parts`` (a run's seed and the place of what it seeds: an
    epoch, a process, a chunk of data): the same parts give the same seed on every machine, and
    different parts independent-looking ones."""
    text = ":".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


# ---------------------------------------------------------------------------------------------
# The part options that have a flag of their own

class PartOptionKey(typing.NamedTuple):
    """An option of the parts with a flag of its own (``--sigma``), which is also a key of the
    flat configurations of version 1 (``sigma``): its ``help`` (``{activations}`` stands for
    the names of the activations), the (family, option) pairs it sets, the family it serves
    first leading (its flag is listed after that part), and the ``kind`` of value its flag reads
    where the defaults of the parts that take it cannot tell (they are all None); None: the
    type of those defaults."""

    help: str
    targets: tuple
    kind: typing.Any = None


#: the part options with a flag of their own, by flag destination and flat key: the flags
#: (``evaluation.command_line.config_flags.OPTION_FLAGS``) and the conversion of version-1
#: configurations (:func:`from_flat`) both read them, by the rule of :func:`place_part_options`
PART_OPTION_KEYS = {
    "prior_components": PartOptionKey(
        "components of the mog prior or pseudo-inputs of the vamp prior",
        (("prior", "num_components"),)),
    "prior_flows": PartOptionKey("masked autoregressive layers of the flow prior",
                                 (("prior", "num_flows"),)),
    "flow_hidden": PartOptionKey(
        "hidden units of the autoregressive networks of the flow prior and the iaf guide "
        "(default: max(64, 4 z_dim))", (("prior", "flow_hidden"), ("guide", "flow_hidden")),
        kind=int),
    "sigma": PartOptionKey("the fixed standard deviation of the gaussian likelihood",
                           (("likelihood", "sigma"),)),
    "min_scale": PartOptionKey("the smallest standard deviation of the gaussian-learned "
                               "likelihood", (("likelihood", "min_scale"),)),
    "guide_flows": PartOptionKey("inverse autoregressive flow steps of the iaf guide",
                                 (("guide", "num_flows"),)),
    "hidden_dims": PartOptionKey("encoder hidden sizes, comma-separated; the decoder mirrors "
                                 "them", (("architecture", "hidden_dims"),)),
    "activation": PartOptionKey("one of {activations}", (("architecture", "activation"),)),
    "num_particles": PartOptionKey("draws of z per data point and step, K of the iwae bound",
                                   (("objective", "num_particles"),)),
}


def place_part_options(values, parts, takes):
    """Where the values of the part-option keys go, by the one rule of their flags and of the
    conversion of version-1 configurations: every chosen part that takes the option receives
    the value (``flow_hidden`` serves the flow prior and the iaf guide).

    :param values: {key: value}; keys left out or None are skipped.
    :param parts: {family: the name of the chosen part}.
    :param takes: ``takes(family, name, option)``, whether that part takes the option (the
        registries of the parts know; this layer does not).
    :returns: an iterator of ``(key, value, taken)``, one for each key given, in the order of
        :data:`PART_OPTION_KEYS`, ``taken`` the (family, option) pairs of the chosen parts that
        take it; a key that no chosen part takes comes with none, for the caller to refuse (a
        flag) or drop (version 1 ignored such values).
    """
    for key, entry in PART_OPTION_KEYS.items():
        value = values.get(key)
        if value is not None:
            yield key, value, [(family, option) for family, option in entry.targets
                               if takes(family, parts[family], option)]


# ---------------------------------------------------------------------------------------------
# Flat configurations of checkpoint format version 1

_FLAT_DATA = ("dataset", "data_dir", "download", "binarize", "num_validation", "synthetic_z_dim",
              "synthetic_x_dim", "synthetic_num_train", "synthetic_seed", "synthetic_prior")
_FLAT_MODEL = ("z_dim", "x_dim", "image_shape")
_FLAT_TRAINING = ("num_epochs", "batch_size", "learning_rate", "kl_warmup_epochs", "jit")
_FLAT_PARTS = {"prior": "standard", "likelihood": "bernoulli", "guide": "diagonal",
               "architecture": "mlp", "objective": "elbo"}
_FLAT_OTHER = ("seed", "device", "title")
FLAT_KEYS = (_FLAT_DATA + _FLAT_MODEL + _FLAT_TRAINING + tuple(PART_OPTION_KEYS)
             + tuple(_FLAT_PARTS) + _FLAT_OTHER)


def _takes_unknown(family, name, option):
    raise ConfigError(f"a flat configuration (checkpoint format version 1) that sets options "
                      f"of its parts ({option} for the {family}) is converted where the parts "
                      "are known: pass it to inference.build.resolve or build, or read its run "
                      "with inference.checkpoint")


def from_flat(flat, takes=None):
    """Convert a flat configuration (checkpoint format version 1, and the README's examples of
    that time) into the nested form. Each part option goes to every chosen part that takes it,
    as its flag does (:func:`place_part_options`); ``takes(family, name, option)`` says which
    do (``inference.build.takes_option``, from the registries). A value no chosen part takes
    (``sigma`` of a Bernoulli likelihood) is dropped, as the old code ignored it. Without
    ``takes``, a flat configuration that sets part options is refused."""
    for key in flat:
        if key not in FLAT_KEYS:
            raise ConfigError(f"unknown setting {key!r} in the configuration"
                              f"{did_you_mean(key, FLAT_KEYS)}")
    parts = {family: flat.get(family) or default for family, default in _FLAT_PARTS.items()}
    options = {family: {} for family in parts}
    placed = list(place_part_options(flat, parts, takes or _takes_unknown))
    # Each part's options in the order version 1 gave them: those of the keys that serve its
    # family first, then those it takes besides (the iaf guide's flow_hidden).
    for first in (True, False):
        for key, value, taken in placed:
            for family, option in taken:
                if (family == PART_OPTION_KEYS[key].targets[0][0]) is first:
                    options[family][option] = value
    nested = {
        "data": {key: flat[key] for key in _FLAT_DATA if key in flat},
        "model": {key: flat[key] for key in _FLAT_MODEL if key in flat},
        "training": {key: flat[key] for key in _FLAT_TRAINING if key in flat},
    }
    for family in ("prior", "likelihood", "guide", "architecture"):
        nested["model"][family] = {"name": parts[family], "options": options[family]}
    nested["training"]["objective"] = {"name": parts["objective"],
                                       "options": options["objective"]}
    for key in ("seed", "device"):
        if key in flat:
            nested[key] = flat[key]
    return nested

"""Registries of the swappable parts (priors, architectures, likelihoods, guides, objectives,
estimators) and the options each part takes.

A :class:`Registry` maps command-line names to classes (or, for estimators, functions). A part's
*options* are the keyword parameters of its constructor (or function) that the build context does
not fill: ``MixtureOfGaussiansPrior(z_dim, num_components=10)`` takes the option
``num_components`` with default 10, and ``z_dim`` comes from the context. So a part's defaults
live in one place, its signature, and a user's own class declares its options just by writing
its ``__init__``.

Besides the registered names, a registry that allows it accepts ``module:Class``: the class is
imported from ``module`` (on the Python path or in the working directory) and must derive from
the family's base class. This is the extension point for parts written by users.
"""

import contextlib
import contextvars
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
from collections.abc import Mapping

from models.base.config import ConfigError, PartSpec, did_you_mean

__all__ = ["ConfigError", "Registry", "import_object", "option_defaults", "parse_option_value",
           "refuse_imports_from"]

#: marks an option without a default: the user must give it
REQUIRED = inspect.Parameter.empty


#: a folder whose modules must not be imported (the run folder being loaded), or None
_FORBIDDEN_FOLDER = contextvars.ContextVar("forbidden_folder", default=None)


@contextlib.contextmanager
def refuse_imports_from(folder):
    """Within this block, :func:`import_object` refuses any module that lives in ``folder``
    (a run folder being opened must not run code it ships)."""
    token = _FORBIDDEN_FOLDER.set(os.path.realpath(folder))
    try:
        yield
    finally:
        _FORBIDDEN_FOLDER.reset(token)


def _check_origin(module_name, kind, spec):
    """Refuse a module that would be loaded from the forbidden folder. Only the top-level
    package is located (locating it runs nothing); a package's own code runs on import."""
    forbidden = _FORBIDDEN_FOLDER.get()
    if forbidden is None:
        return
    top = module_name.split(".")[0]
    found = sys.modules.get(top)
    locations = []
    if found is not None:
        locations = [getattr(found, "__file__", None) or ""] + list(getattr(found, "__path__", []))
    else:
        try:
            module_spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            module_spec = None
        if module_spec is not None:
            locations = [module_spec.origin or ""] + list(
                module_spec.submodule_search_locations or [])
    for location in locations:
        real = os.path.realpath(location) if location else ""
        if real and (real == forbidden or real.startswith(forbidden + os.sep)):
            raise ConfigError(
                f"the {kind} {spec!r} would import module {top!r} from the run folder "
                f"{forbidden} itself; code shipped inside a run folder is never run. Copy the "
                "module elsewhere, read it, and put that folder on PYTHONPATH")


def import_object(spec, kind):
    """Import ``Name`` from ``module`` for a spec ``module:Name`` (``Name`` may be dotted)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"a custom {kind} is given as module:Name, got {spec!r}")
    # Scripts run as ``python scripts/x.py`` have scripts/ on the path, not the working directory;
    # it is searched too, for the duration of this import only.
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        _check_origin(module_name, kind, spec)
        found = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"cannot import module {module_name!r} for the {kind} {spec!r} ({error}); run from "
            f"the folder that holds {module_name.replace('.', '/')}.py or add that folder to "
            "PYTHONPATH") from error
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no {attribute!r} for the {kind} "
                              f"{spec!r}") from None
    return found


def option_defaults(target, context=()):
    """{option: default} of a class's constructor or a function, leaving out the parameters in
    ``context`` (filled by whoever builds the part). An option without a default maps to
    :data:`REQUIRED`. Returns ``(defaults, accepts_any)``; ``accepts_any`` is True when the
    signature has ``**kwargs``."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return {}, True
    if inspect.isclass(target) and parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    defaults, accepts_any = {}, False
    for parameter in parameters:
        if parameter.kind is parameter.VAR_KEYWORD:
            accepts_any = True
        elif parameter.kind is parameter.VAR_POSITIONAL or parameter.name in context:
            continue
        else:
            defaults[parameter.name] = parameter.default
    return defaults, accepts_any


def parse_option_value(text):
    """A command-line option value: JSON where it parses (numbers, lists, true, false, null),
    else the text itself. ``3`` -> 3, ``[64,32]`` -> [64, 32], ``relu`` -> 'relu'."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _coerce(value, default, where):
    """Check ``value`` against the type of the option's default and convert where lossless."""
    if default is REQUIRED or default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} takes true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} takes a whole number, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} takes a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} takes a finite number, got {value!r}")
        return float(value)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} takes a list such as {list(default)}, got {value!r}")
        return tuple(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where} takes a name, got {value!r}")
    return value


class Registry(Mapping):
    """The named members of one family of parts.

    :param str kind: the family's name in messages ("prior", "guide", ...).
    :param dict entries: name -> class or function.
    :param type base: the class every member (a user's too) must derive from, or None.
    :param bool allow_custom: accept ``module:Class`` for a user's own member.
    :param tuple context: parameter names filled by the builder rather than by options, used
        for members that do not declare ``context_parameters`` themselves (functions).
    """

    #: how a user names a member of their own, where ``allow_custom``
    custom_form = "module:Class"

    def __init__(self, kind, entries, *, base=None, allow_custom=False, context=()):
        self.kind = kind
        self._entries = dict(entries)
        self.base = base
        self.allow_custom = allow_custom
        self.context = tuple(context)

    def __getitem__(self, name):
        return self._entries[name]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def names(self):
        return ", ".join(sorted(self._entries))

    def get(self, name):
        """The member called ``name`` (or a user's ``module:Class``); an unknown name gets an
        error that lists the valid ones."""
        if self.allow_custom and isinstance(name, str) and ":" in name:
            member = import_object(name, self.kind)
            if self.base is not None and not (inspect.isclass(member)
                                              and issubclass(member, self.base)):
                raise ConfigError(
                    f"the {self.kind} {name!r} must be a class derived from "
                    f"{self.base.__module__}.{self.base.__name__}; got {member!r}")
            return member
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        extra = f" or {self.custom_form} for your own" if self.allow_custom else ""
        hint = did_you_mean(name, self._entries) if isinstance(name, str) else ""
        raise ConfigError(f"unknown {self.kind} {name!r}{hint}; valid {self.kind}s: "
                          f"{self.names()}{extra}")

    def options(self, name):
        """{option: default} of the member called ``name`` (:data:`REQUIRED` for none)."""
        member = self.get(name)
        context = getattr(member, "context_parameters", self.context)
        return option_defaults(member, context)[0]

    def describe(self, spec):
        return f"the {spec.name} {self.kind}"

    def resolve(self, spec):
        """``spec`` (a :class:`PartSpec`, a name or a dict) with every option of the part filled
        in: unknown options are refused with a suggestion, missing ones take the part's
        defaults, given ones are checked against the defaults' types."""
        spec = PartSpec.of(spec, self.kind)
        member = self.get(spec.name)
        context = getattr(member, "context_parameters", self.context)
        defaults, accepts_any = option_defaults(member, context)
        where = self.describe(spec)
        options = {}
        for key, value in spec.options.items():
            if key not in defaults and not accepts_any:
                valid = ", ".join(sorted(defaults)) or "none"
                raise ConfigError(f"{where} has no option {key!r}{did_you_mean(key, defaults)}; "
                                  f"its options: {valid}")
            options[key] = _coerce(value, defaults.get(key, REQUIRED),
                                   f"the option {key} of {where}")
        for key, default in defaults.items():
            if key in options:
                continue
            if default is REQUIRED:
                raise ConfigError(f"{where} needs the option {key} (--{self.kind}-option "
                                  f"{key}=VALUE on the command line)")
            options[key] = default
        return PartSpec(spec.name, options)

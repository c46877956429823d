"""The flag groups every script shares, so that a flag means the same thing everywhere:
``--device``, ``--seed``, ``--no-progress``; the data, model and training settings of a run
(each part-option flag, ``--sigma``, ``--prior-components``, ..., and
``--<family>-option key=value`` set options of the chosen part); the evaluation flags and the
estimators' options (defaults: the estimator functions' own); and the parsers of the scripts
that train and that open trained runs."""

import os
import typing

from evaluation.command_line.config_flags import (CONFIG_PATHS, FAMILIES, OPTION_FLAGS,
                                                  estimator_option_defaults, flag)
from evaluation.estimators import ESTIMATORS
from models.data import SPLITS
from models.utilities.entry_points import ArgumentParser, HelpFormatter, comma_list, key_value
from models.base.config import ConfigError, RunConfig


def add_common_flags(parser):
    group = parser.add_argument_group("common")
    group.add_argument("--device", default=None,
                       help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
    group.add_argument("--seed", type=int, default=None,
                       help="seeds torch and Pyro: the same seed gives the same numbers on the "
                       "CPU (default: 0; when resuming, the run's)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    return group


def config_default(dest):
    """The default of the setting a flag sets, read from :class:`RunConfig` itself."""
    value = RunConfig().get(CONFIG_PATHS[dest])
    return ",".join(map(str, value)) if isinstance(value, list) else value


def option_defaults(dest):
    """'mog 10, vamp 500': the defaults of the option a part-option flag sets, read from the
    signatures of the parts that take it."""
    shown = []
    for family, option in OPTION_FLAGS[dest].targets:
        registry = FAMILIES[family][0]
        for name in registry:
            defaults = registry.options(name)
            if option in defaults and defaults[option] is not None:
                value = defaults[option]
                value = ",".join(map(str, value)) if isinstance(value, tuple) else value
                shown.append(str(value) if dest in GENERAL_OPTIONS else f"{name} {value}")
    return ", ".join(dict.fromkeys(shown))


#: part-option flags that every member of their family takes (their defaults are shown without
#: the parts' names)
GENERAL_OPTIONS = tuple(dest for dest, option_flag in OPTION_FLAGS.items()
                        if all(option in FAMILIES[family][0].options(name)
                               for family, option in option_flag.targets
                               for name in FAMILIES[family][0]))


def _kind(annotation):
    """How a setting's flag reads its value: its type, ``"switch"`` for an optional switch
    (``--jit`` / ``--no-jit``), ``bool`` for a plain switch (``--download``)."""
    optional = typing.get_origin(annotation) is typing.Union
    if optional:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        return "switch" if optional else bool
    return annotation if annotation in (int, float) else str


def _section_flags(section):
    """{flag destination: (kind, help, choices)} of the settings of ``section`` (data, model
    or training) that have a flag of the group, read from the configuration's fields, with the
    part-option flags after the part they serve first; a part's help names its family's
    registered names."""
    table = {}
    hints = typing.get_type_hints(typing.get_type_hints(RunConfig)[section])
    for path, item in RunConfig.settings():
        if not path.startswith(section + ".") or item.metadata.get("flag") is not True:
            continue
        text = item.metadata["help"]
        if item.name in FAMILIES:
            text = text.format(names=FAMILIES[item.name][0].names())
        table[item.name] = (_kind(hints[item.name]), text, item.metadata.get("choices"))
        for dest, option_flag in OPTION_FLAGS.items():
            if option_flag.targets[0][0] == item.name:
                table[dest] = (option_flag.kind, option_flag.help, None)
    return table


DATA_FLAGS = _section_flags("data")
MODEL_FLAGS = _section_flags("model")
TRAINING_FLAGS = _section_flags("training")


def _add_flags(group, table):
    for dest, (kind, text, choices) in table.items():
        default = option_defaults(dest) if dest in OPTION_FLAGS else config_default(dest)
        if kind not in (bool, "switch") and "(default:" not in text and default not in (None, ""):
            text += f" (default: {default})"
        if kind == "switch":
            switches = group.add_mutually_exclusive_group()
            switches.add_argument(flag(dest), dest=dest, action="store_const", const=True,
                                  default=None, help=text)
            switches.add_argument("--no-" + flag(dest)[2:], dest=dest, action="store_const",
                                  const=False, help=f"the opposite of {flag(dest)}")
        elif kind is bool:
            group.add_argument(flag(dest), action="store_true", default=None, help=text)
        else:
            group.add_argument(flag(dest), type=kind, default=None, choices=choices,
                               help=text)
        if dest in FAMILIES:
            group.add_argument(f"--{dest}-option", type=key_value, action="append", default=[],
                               metavar="KEY=VALUE",
                               help=f"an option of the chosen {dest} (repeatable); the value is "
                               "read as JSON where it parses: df=3, hidden_dims=[64,32]")


def add_data_flags(parser, source=True):
    """Where the data come from; ``source=False`` gives only ``--data-dir`` (scripts that open
    a trained run, whose data settings are the run's)."""
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", default=None,
                       help="folder holding MNIST/raw/ (default: $VAE_DATA_DIR, else ./data"
                       + ("" if source else "; for a trained run, the folder it was trained "
                          "from") + ")")
    if source:
        _add_flags(group, DATA_FLAGS)
    return group


def add_model_flags(parser):
    group = parser.add_argument_group("model and guide")
    _add_flags(group, MODEL_FLAGS)
    return group


def add_training_flags(parser):
    group = parser.add_argument_group("training")
    _add_flags(group, TRAINING_FLAGS)
    return group


def make_parser(description, script):
    """An argument parser with the project's help format; ``script`` is the script's file
    (``__file__``), whose name the messages start with."""
    return ArgumentParser(prog=os.path.basename(script), description=description,
                          formatter_class=HelpFormatter)


def make_training_parser(description, script):
    """The parser of a script that trains a run (``train.py``, ``reproduce.py``): the data,
    model and training flags with where the run goes and how it is opened (``--out``,
    ``--resume``, ``--overwrite``, ``--time-budget``, ``--trust-run``), and the common flags."""
    parser = make_parser(description, script)
    add_data_flags(parser)
    add_model_flags(parser)
    group = add_training_flags(parser)
    group.add_argument("--out", default=None,
                       help="run folder (default: runs/<dataset>-z<z-dim>-<time>)")
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last checkpoint")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the files of an earlier run in --out")
    group.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                       help="stop at the end of the last epoch that fits in this many minutes, "
                       "with every file written; --resume continues")
    group.add_argument("--trust-run", action="store_true",
                       help="allow the resumed run's own parts (module:Class) to be imported; "
                       "naming a part again (--prior my_parts:StudentT) allows that one")
    add_common_flags(parser)
    return parser


def add_opened_run_flags(parser, estimator_options=False):
    """The flags of scripts that open trained runs: the estimators' options (where the script
    runs estimators the user names), where the data are, ``--trust-run``, ``--overwrite`` and
    the common ones."""
    if estimator_options:
        add_estimator_flags(parser)
    add_data_flags(parser, source=False)
    group = add_common_flags(parser)
    group.add_argument("--trust-run", action="store_true",
                       help="allow the run's own parts (module:Class in its config) to be "
                       "imported, which runs their modules; only for runs you trust")
    group.add_argument("--overwrite", action="store_true",
                       help="replace output files that exist already")


def add_evaluation_flags(parser, default_estimators, grid=False, num_data=None):
    """``--estimator``, ``--num-samples`` (one K, or a grid of K with ``grid``), ``--num-data``
    and ``--split``."""
    group = parser.add_argument_group("evaluation")
    group.add_argument("--estimator", type=comma_list(str), action="append", default=[],
                       help=f"comma list or repeated; of {ESTIMATORS.names()} or "
                       f"module:function of your own (default: {','.join(default_estimators)})")
    if grid:
        group.add_argument("--num-samples", type=comma_list(int), default=[1, 10, 100, 1000],
                           help="the grid of K (samples per data point), comma-separated")
    else:
        group.add_argument("--num-samples", type=int, default=1000,
                           help="K, samples per data point")
    group.add_argument("--num-data", type=int, default=num_data,
                       help="evaluate the first N points of the split"
                       + ("" if num_data else " (default: all)"))
    group.add_argument("--split", choices=SPLITS, default="test")
    return group


def add_estimator_flags(parser):
    group = parser.add_argument_group("estimator options (each applies to the estimators named)")
    for name in ESTIMATORS:
        own = ESTIMATORS.own_samples_of(name)
        if own is not None:
            group.add_argument(flag(own.option), type=int, default=None,
                               help=f"{own.help} (default: {own.default})")
    for option, (default, names) in estimator_option_defaults().items():
        kind = type(default) if default is not None else int
        shown = "" if default is None else f"; default: {default}"
        group.add_argument(flag(option), type=kind, default=None,
                           choices=ESTIMATORS.option_choices.get(option),
                           help=f"{ESTIMATORS.option_help.get(option, option)} "
                           f"({', '.join(names)}{shown})")
    return group


def check_positive(args, *names):
    """Refuse a non-positive value of the integer flags ``names`` (where given)."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"{flag(name)} must be at least 1, got {value}")

"""The command-line spine every script shares: flag groups, the mapping from flags to the run
configuration, and one way to open a run.

- :func:`add_common_flags`: ``--device``, ``--seed``, ``--no-progress``;
- :func:`add_data_flags`, :func:`add_model_flags`, :func:`add_training_flags`: the settings of
  a :class:`models.base.config.RunConfig`; each part-option flag (``--sigma``,
  ``--prior-components``, ...) and ``--<family>-option key=value`` set options of the chosen
  part, and a flag that the chosen part does not take is an error;
- :func:`add_evaluation_flags` and :func:`add_estimator_flags`: which estimators, K, which data
  points, and the estimators' options (defaults: the estimator functions' own);
- :func:`start` (seed, parameter store, device) and :func:`open_run` (that, plus the run's model,
  guide and data, and the chosen points of the chosen split);
- :func:`make_training_parser` and :func:`open_training`: the flags of a script that trains,
  and the run they open (:mod:`inference.run_life`).

A flag means the same thing in every script. Flags left out are None here, so that the
configuration's defaults (or a resumed run's settings) apply, and so that an explicit flag can be
told from a default.
"""

import argparse
import contextlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from evaluation.ais import SCHEDULES
from evaluation.estimators import ESTIMATORS
from evaluation.reporting.scoring import AIS_CHAINS
from inference import distributed
from inference.data import BINARIZATIONS, DATASETS, SPLITS, SYNTHETIC_PRIORS
from inference.guides import GUIDES
from inference.objectives import OBJECTIVES
from inference.run_life import open_training_run
from inference.runs import load_run
from models.base.cli import ArgumentParser, HelpFormatter, comma_list, key_value
from models.base.config import LEARNING_RATE_SCHEDULES, ConfigError, RunConfig, check_seed
from models.base.device import resolve_device
from models.decoders import ARCHITECTURES
from models.likelihoods import LIKELIHOODS
from models.networks import ACTIVATIONS
from models.priors import PRIORS

#: flag destination -> dotted path in ``RunConfig.to_dict()``
CONFIG_PATHS = {
    "dataset": "data.dataset", "data_dir": "data.data_dir", "download": "data.download",
    "binarize": "data.binarize", "num_validation": "data.num_validation",
    "synthetic_z_dim": "data.synthetic_z_dim", "synthetic_x_dim": "data.synthetic_x_dim",
    "synthetic_num_train": "data.synthetic_num_train", "synthetic_seed": "data.synthetic_seed",
    "synthetic_prior": "data.synthetic_prior",
    "z_dim": "model.z_dim", "architecture": "model.architecture.name",
    "prior": "model.prior.name", "likelihood": "model.likelihood.name",
    "guide": "model.guide.name",
    "num_epochs": "training.num_epochs", "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate", "objective": "training.objective.name",
    "learning_rate_schedule": "training.learning_rate_schedule",
    "adam_eps": "training.adam_eps",
    "kl_warmup_epochs": "training.kl_warmup_epochs", "jit": "training.jit",
    "cuda_graph": "training.cuda_graph",
    "seed": "seed", "device": "device",
}
#: the swappable families: registry and the dotted path of their PartSpec
FAMILIES = {
    "architecture": (ARCHITECTURES, "model.architecture"),
    "prior": (PRIORS, "model.prior"),
    "likelihood": (LIKELIHOODS, "model.likelihood"),
    "guide": (GUIDES, "model.guide"),
    "objective": (OBJECTIVES, "training.objective"),
}
#: flags that set an option of a part: destination -> [(family, option)]; every chosen part that
#: takes the option receives the value (``--flow-hidden`` serves the flow prior and the iaf guide)
OPTION_FLAGS = {
    "prior_components": [("prior", "num_components")],
    "prior_flows": [("prior", "num_flows")],
    "flow_hidden": [("prior", "flow_hidden"), ("guide", "flow_hidden")],
    "sigma": [("likelihood", "sigma")],
    "min_scale": [("likelihood", "min_scale")],
    "guide_flows": [("guide", "num_flows")],
    "hidden_dims": [("architecture", "hidden_dims")],
    "activation": [("architecture", "activation")],
    "num_particles": [("objective", "num_particles")],
}


def flag(dest):
    return "--" + dest.replace("_", "-")


# ---------------------------------------------------------------------------------------------
# Flag groups

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
    for family, option in OPTION_FLAGS[dest]:
        registry = FAMILIES[family][0]
        for name in registry:
            defaults = registry.options(name)
            if option in defaults and defaults[option] is not None:
                value = defaults[option]
                value = ",".join(map(str, value)) if isinstance(value, tuple) else value
                shown.append(str(value) if dest in GENERAL_OPTIONS else f"{name} {value}")
    return ", ".join(dict.fromkeys(shown))


#: part-option flags that every member of their family takes
GENERAL_OPTIONS = ("hidden_dims", "activation", "num_particles")

#: flag destination -> (type, help) of the settings of the data, the model and the training;
#: the defaults shown in --help are read from RunConfig and from the parts' signatures
DATA_FLAGS = {
    "dataset": (str, "mnist: the full data set from --data-dir; mnist-subset: 2,000/500 images "
                     "shipped with the package; synthetic: drawn from a known story"),
    "download": (bool, "download MNIST into --data-dir if it is missing (needs a network)"),
    "binarize": (str, "dynamic: fresh Bernoulli draw per use; static: one fixed draw; none: "
                      "grey levels (default: what the likelihood needs)"),
    "num_validation": (int, "training images held out for validation (default: 10000 for "
                            "mnist, 200 for mnist-subset)"),
    "synthetic_z_dim": (int, "latent dimension of the true story of --dataset synthetic"),
    "synthetic_x_dim": (int, "data dimension of the synthetic data"),
    "synthetic_num_train": (int, "synthetic training points; validation and test: 1000 each"),
    "synthetic_seed": (int, "seed of the true decoder and of the synthetic draws"),
    "synthetic_prior": (str, "the true prior of the synthetic story: N(0, I) or a mixture of 8 "
                             "Gaussians on a circle"),
}
MODEL_FLAGS = {
    "prior": (str, f"p(z): one of {PRIORS.names()}, or module:Class for your own"),
    "prior_components": (int, "components of the mog prior or pseudo-inputs of the vamp prior"),
    "prior_flows": (int, "masked autoregressive layers of the flow prior"),
    "likelihood": (str, f"p(x | z): one of {LIKELIHOODS.names()}, or module:Class"),
    "sigma": (float, "the fixed standard deviation of the gaussian likelihood"),
    "min_scale": (float, "the smallest standard deviation of the gaussian-learned likelihood"),
    "guide": (str, f"q(z | x): one of {GUIDES.names()} (local: at evaluation only), or "
                   "module:Class for your own"),
    "guide_flows": (int, "inverse autoregressive flow steps of the iaf guide"),
    "flow_hidden": (int, "hidden units of the autoregressive networks of the flow prior and the "
                         "iaf guide (default: max(64, 4 z_dim))"),
    "architecture": (str, f"the networks: one of {ARCHITECTURES.names()} (conv: for 28x28 "
                          "images; the encoder mirrors the decoder), or module:Class"),
    "z_dim": (int, "dimension of the latent z"),
    "hidden_dims": (comma_list(int), "encoder hidden sizes, comma-separated; the decoder "
                                     "mirrors them"),
    "activation": (str, f"one of {ACTIVATIONS.names()}"),
}
TRAINING_FLAGS = {
    "num_epochs": (int, "passes over the training split, in total when resuming"),
    "batch_size": (int, "minibatch size B"),
    "learning_rate": (float, "Adam step size"),
    "learning_rate_schedule": (str, "constant, or burda: the step size of Burda et al. (2016), "
                                    "learning_rate * 10^(-i/7) for 3^i epochs (i = 0..7) laid "
                                    "over --num-epochs in proportion"),
    "adam_eps": (float, "Adam's epsilon (Burda et al.: 1e-4)"),
    "objective": (str, f"one of {OBJECTIVES.names()}: elbo is Trace_ELBO, meanfield "
                       "TraceMeanField_ELBO (analytic KL where it exists), iwae the "
                       "importance-weighted bound"),
    "num_particles": (int, "draws of z per data point and step, K of the iwae bound"),
    "kl_warmup_epochs": (float, "scale log p(z) - log q(z|x) from ~0 to 1 over this many "
                                "epochs (0: none)"),
    "jit": ("switch", "compile the loss with the JIT (JitTrace_ELBO); --no-jit never does "
                      "(default: where the objective allows it, falling back with a message "
                      "when a model cannot be traced)"),
    "cuda_graph": ("switch", "on CUDA, replay each training step's loss and gradients as one "
                             "CUDA graph, captured after three steps of each minibatch size "
                             "(one launch instead of hundreds); --no-cuda-graph never does "
                             "(default: on CUDA where the JIT compiles the loss, falling back "
                             "with a message where a step cannot be captured)"),
}
CHOICES = {"dataset": DATASETS, "binarize": BINARIZATIONS, "synthetic_prior": SYNTHETIC_PRIORS,
           "learning_rate_schedule": LEARNING_RATE_SCHEDULES}


def _add_flags(group, table):
    for dest, (kind, text) in table.items():
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
            group.add_argument(flag(dest), type=kind, default=None, choices=CHOICES.get(dest),
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


ESTIMATOR_HELP = {
    "max_batch_elements": "at most this many (sample, data point) pairs at once (default: "
                          "about 256 MB of work per chunk)",
    "mixture_weight": "a in the mixture proposal a q(z|x) + (1 - a) p(z)",
    "ais_steps": "intermediate distributions T of AIS",
    "ais_leapfrog": "leapfrog steps per HMC transition",
    "ais_step_size": "initial HMC step size (adapted per data point)",
    "ais_target_accept": "acceptance rate the step size adapts towards",
    "ais_schedule": "spacing of the annealing temperatures",
    "ais_start": "start the chains from the prior or from the guide q(z|x)",
    "quadrature_tolerance": "refine the grid until log p-hat changes by less (nats)",
}
ESTIMATOR_CHOICES = {"ais_schedule": sorted(SCHEDULES), "ais_start": ("prior", "guide")}


def estimator_option_defaults():
    """{option: (default, [estimators that take it])} over every registered estimator."""
    options = {}
    for name in ESTIMATORS:
        for option, default in ESTIMATORS.options(name).items():
            options.setdefault(option, (default, []))[1].append(name)
    return options


def add_estimator_flags(parser):
    group = parser.add_argument_group("estimator options (each applies to the estimators named)")
    group.add_argument("--ais-chains", type=int, default=None,
                       help=f"AIS chains per data point: the K of ais (default: {AIS_CHAINS})")
    for option, (default, names) in estimator_option_defaults().items():
        kind = type(default) if default is not None else int
        shown = "" if default is None else f"; default: {default}"
        group.add_argument(flag(option), type=kind, default=None,
                           choices=ESTIMATOR_CHOICES.get(option),
                           help=f"{ESTIMATOR_HELP.get(option, option)} "
                           f"({', '.join(names)}{shown})")
    return group


# ---------------------------------------------------------------------------------------------
# From flags to configuration

class Changes(dict):
    """{dotted path: value} of settings given on the command line; ``flags[path]`` is the flag
    that gave each, for messages."""

    def __init__(self):
        super().__init__()
        self.flags = {}

    def set(self, path, value, given_by):
        self[path] = value
        self.flags[path] = given_by


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
    for dest, targets in OPTION_FLAGS.items():
        value = values.get(dest)
        if value is None:
            continue
        applied = False
        for family, option in targets:
            registry, path = FAMILIES[family]
            if option in registry.options(chosen[family]):
                changes.set(f"{path}.options.{option}", value, flag(dest))
                applied = True
        if not applied:
            parts = " or ".join(f"the {chosen[family]} {family}" for family, _ in targets)
            raise ConfigError(f"{flag(dest)} does not apply to {parts}; drop it")
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
    if values.get("ais_chains") is not None and "ais" not in chosen:
        raise ConfigError(f"--ais-chains applies to ais, which is not among the chosen "
                          f"estimators ({', '.join(names)}); add it with --estimator or drop "
                          "the flag")
    return options


def num_samples_for(name, args):
    """K of estimator ``name``: ``--ais-chains`` for ais, ``--num-samples`` otherwise."""
    if name == "ais":
        return args.ais_chains if args.ais_chains is not None else AIS_CHAINS
    return args.num_samples


# ---------------------------------------------------------------------------------------------
# Opening a run

def script_module(path, prefix="vae_script"):
    """Import the script at ``path`` (``scripts/train.py``, which is not in a package) as a
    module, to call its ``main(argv)`` or ``make_parser()`` in this process: only for
    ``flag_reference.py`` (every script's parser) and ``tutorial.py`` (which runs the scripts
    as its reader would). A script that needs what another does calls the library instead."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"{prefix}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start(args, group=None):
    """What every script does first: seed torch and Pyro, empty Pyro's parameter store, and
    resolve the device (in a group of processes, this process's). Returns the device."""
    pyro.set_rng_seed(check_seed(args.seed) if args.seed is not None else 0)
    pyro.clear_param_store()
    device = resolve_device(args.device)
    return device if group is None else group.device


@contextlib.contextmanager
def processes(args):
    """The :class:`inference.distributed.ProcessGroup` of a script launched by ``torchrun``
    with several processes (None for one process), left when the block ends. Only the first
    process prints."""
    group = distributed.from_environment(getattr(args, "device", None) or "auto")
    try:
        if group is not None and not group.is_main:
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                yield group
        else:
            yield group
    finally:
        distributed.shutdown(group)


def time_budget(args):
    """The seconds ``--time-budget`` (minutes) allows, None without it; refused unless it is a
    positive number."""
    if args.time_budget is None:
        return None
    if not 0 < args.time_budget < float("inf"):
        raise ConfigError(f"--time-budget must be a positive number of minutes, got "
                          f"{args.time_budget}")
    return 60 * args.time_budget


def open_training(args, group=None):
    """:func:`start`, then the run folder ``--out`` opened for training as the flags say (see
    :func:`inference.run_life.open_training_run`): a new run with the settings given, or with
    ``--resume`` the run there, whose own parts ``--trust-run`` allows. In a ``group`` of
    processes the first one's ``--out`` is taken. A context manager that gives the
    :class:`inference.run_life.TrainingRun` and holds the folder until the block ends."""
    start(args, group)
    if group is not None:
        args.out = group.broadcast(args.out)
    return open_training_run(args.out, lambda base: config_changes(args, base),
                             resume=args.resume, overwrite=args.overwrite,
                             trust=trusted_parts(args), group=group)


@dataclass
class OpenRun:
    """A trained run opened for evaluation: model and guide (eval mode, no gradients), its data
    set and configuration, and the chosen data points."""

    model: Any
    guide: Any
    dataset: Any
    config: RunConfig
    path: str
    device: torch.device
    x: Any = None
    labels: Any = None


def trusted_parts(args):
    """What the user allows a run they open to import: every ``module:Class`` with
    ``--trust-run``, else those they name again with ``--prior``, ``--guide``, ..."""
    if getattr(args, "trust_run", False):
        return True
    return {getattr(args, family) for family in FAMILIES
            if isinstance(getattr(args, family, None), str) and ":" in getattr(args, family)}


def open_run(args, path=None, device=None, group=None):
    """:func:`start`, then load the run at ``path`` (default ``args.run``) with ``--data-dir``
    and select the first ``--num-data`` points of ``--split`` (where the script has them). In a
    ``group`` of processes the first reads the checkpoint and gives it to the others (only its
    machine needs the run folder); each reads the data itself."""
    device = device if device is not None else start(args, group)
    path = path if path is not None else args.run
    model, guide, dataset, config, checkpoint = load_run(
        path, device, getattr(args, "data_dir", None), trust=trusted_parts(args), group=group)
    run = OpenRun(model, guide, dataset, config, checkpoint, device)
    if hasattr(args, "split"):
        run.x, run.labels = dataset.select(args.split, args.num_data)
    return run


def check_positive(args, *names):
    """Refuse a non-positive value of the integer flags ``names`` (where given)."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"{flag(name)} must be at least 1, got {value}")


def make_parser(description, script):
    """An argument parser with the project's help format; ``script`` is the script's file
    (``__file__``), whose name the messages start with."""
    return ArgumentParser(prog=os.path.basename(script), description=description,
                          formatter_class=HelpFormatter)


def flag_reference(parsers):
    """Markdown tables of every flag of every script, from the parsers themselves (so the
    reference cannot drift from ``--help``). ``parsers``: {script name: parser}."""
    lines = ["# Flags of the scripts", "",
             "*Generated by `python scripts/flag_reference.py` from the scripts' parsers; "
             "`python scripts/NAME.py --help` prints the same.*", ""]
    for name, parser in parsers.items():
        formatter = parser._get_formatter()
        lines += [f"## {name}", "", " ".join(parser.description.split()), "",
                  f"`{' '.join(parser.format_usage().split()[1:])}`", ""]
        for group in parser._action_groups:
            actions = [action for action in group._group_actions
                       if action.help is not argparse.SUPPRESS and action.dest != "help"]
            if not actions:
                continue
            lines += [f"### {group.title}", "", "| flag | meaning |", "| --- | --- |"]
            for action in actions:
                names = ", ".join(action.option_strings) or action.dest
                if action.nargs != 0 and action.option_strings:
                    names += " " + (action.metavar or "{" + ",".join(action.choices) + "}"
                                    if action.choices else action.metavar or
                                    action.dest.upper())
                text = " ".join(formatter._expand_help(action).split()) if action.help else ""
                lines.append(f"| `{names}` | {text.replace('|', '&#124;')} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"

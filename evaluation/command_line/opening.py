"""How a script opens what it works on: :func:`start` (seed, parameter store, device),
:func:`processes` (the torchrun group), :func:`open_training` (a run folder to train, see
:mod:`inference.run_life`) and :func:`open_run` (a trained run, its model, guide and data, and
the chosen points of the chosen split)."""

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from inference import distributed
from evaluation.command_line.config_flags import config_changes, trusted_parts
from inference.run_life import open_training_run
from inference.run_life import load_run
from models.base.config import ConfigError, RunConfig, check_seed
from models.utilities.device import resolve_device


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

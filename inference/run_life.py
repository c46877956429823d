"""The life of a run in its folder: create a new run, restart one that finished no epoch,
resume one from its checkpoint, or open a trained one for evaluation; one API for every
script and for Python.

- :func:`open_training_run` holds the run folder (:class:`inference.run_folder.RunFolder`),
  decides new, restart or resume, loads what it resumes from (a part that names code to import
  needs ``trust``), shares that with the other processes of a ``torchrun`` group, and builds
  the model, the guide and the data set; :meth:`TrainingRun.fit` trains them::

      with open_training_run("runs/demo", {"training.num_epochs": 20}, resume=True) as run:
          summary = run.fit()

- :func:`new_config`: the configuration of a new run, the defaults with the changes;
- :func:`read_config`: the configuration and identity that a run folder's ``config.json`` holds;
- :func:`resumed_config`: what a restarted or resumed run may change (:data:`RESUMABLE`);
- :func:`load_run`: a trained run opened for evaluation, its model and guide rebuilt from its
  checkpoint and its data set loaded (in a group of processes, read by the first alone).
"""

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import pyro

from inference.build import build, resolve, takes_option
from inference.checkpoint import (LAST, check_trusted, load_checkpoint, load_state, restore,
                                  run_folder_of)
from models.data import default_data_dir, load_dataset, resolve_binarize
from inference.run_folder import RunFolder
from inference.training import fit
from models.base.config import ConfigError, RunConfig
from models.utilities.device import resolve_device
from models.base.registry import refuse_imports_from

#: settings a resumed run may change: how long it runs and where it finds its data
RESUMABLE = RunConfig.resumable_paths()


def changes_for(changes, base):
    """{dotted path: value} of ``changes`` applied to the configuration ``base``: a dict as it
    is, or a function of ``base`` called (the command line's part-option flags go to the part
    that the base configuration uses)."""
    if callable(changes):
        return changes(base)
    return changes or {}


def new_config(changes=None):
    """The configuration of a new run: the defaults with ``changes``, its binarization and data
    folder filled in."""
    config = resolve(RunConfig().updated(changes_for(changes, RunConfig())))
    return config.updated({"data.binarize": resolve_binarize(config),
                           "data.data_dir": config.data.data_dir or default_data_dir()})


def read_config(path, trust=()):
    """The configuration in a run folder's config.json, checked like a checkpoint's (a part
    that names code to import needs ``trust``), and the run's identity (None for a run begun
    before runs had one)."""
    try:
        with open(path) as handle:
            data = json.load(handle)
        run = data.pop("run", None) if isinstance(data, dict) else None
        if run is not None and not isinstance(run, str):
            raise ValueError(f"its run identity is {run!r}, not a string")
        config = RunConfig.from_dict(data, takes=takes_option)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path} is not a readable run configuration ({error}); pass "
                          "--overwrite to start afresh") from error
    check_trusted(config, trust, path)
    with refuse_imports_from(run_folder_of(path)):
        return resolve(config), run


def resumed_config(stored, changes):
    """The stored configuration of a run being resumed, with the RESUMABLE ``changes``; any other
    change that differs from the stored value is refused. ``changes.flags`` (where present)
    names the flag that gave each change, for the message."""
    allowed = {}
    for path, value in changes.items():
        if path in RESUMABLE:
            allowed[path] = value
            continue
        try:
            current = stored.get(path)
        except KeyError:
            current = None
        if _normal(current) != _normal(value):
            given_by = getattr(changes, "flags", {}).get(path, path)
            separator = "" if given_by.endswith("=") else " "
            raise ConfigError(f"{given_by}{separator}{_show(value)} differs from the resumed "
                              f"run's {_show(current)}; drop the flag or start a new run with "
                              "another --out")
    return stored.updated(allowed) if allowed else stored


def _normal(value):
    if isinstance(value, (list, tuple)):
        return [_normal(item) for item in value]
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items()}
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def _show(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def open_folder(folder, changes=None, resume=False, overwrite=False, trust=(), log=print):
    """(config, checkpoint or None, run identity or None, how) of the run in the held
    :class:`RunFolder` ``folder``: ``how`` is ``"new"``, ``"restart"`` (a run that finished no
    epoch, with its config.json) or ``"resume"`` (from its checkpoint.pt); see
    :meth:`RunFolder.start`. A restarted or resumed run keeps its configuration but for the
    :data:`RESUMABLE` ``changes``."""
    checkpoint = run = None
    how = folder.start(resume, overwrite)
    if how == "resume":
        checkpoint = load_checkpoint(folder.file(LAST), prefer=LAST, trust=trust)
        stored = checkpoint["config"]
        config = resumed_config(stored, changes_for(changes, stored))
    elif how == "restart":
        log(f"{folder.path} holds a run that finished no epoch; starting it again")
        stored, run = read_config(folder.file("config.json"), trust)
        config = resumed_config(stored, changes_for(changes, stored))
    else:
        if resume:
            log(f"no checkpoint in {folder.path} yet; starting a new run there")
        config = new_config(changes)
    return config, checkpoint, run, how


def shared_opening(group, opening, out_dir=None):
    """What ``opening()`` (:func:`open_folder` in the first process of ``group``, which holds
    the run folder ``out_dir``) returns, in every process: the others take a copy as plain data
    (the configurations as dicts), and stop with its message where it fails. As in the first
    process, no part is imported from a run folder of that name, should this machine hold one."""

    def plain():
        config, checkpoint, run, how = opening()
        if checkpoint is not None:
            checkpoint = dict(checkpoint, config=checkpoint["config"].to_dict())
        return config.to_dict(), checkpoint, run, how

    config, checkpoint, run, how = group.from_main("open the run folder", plain)
    if checkpoint is not None:
        checkpoint["config"] = RunConfig.from_dict(checkpoint["config"])
    folder = run_folder_of(os.path.join(out_dir, LAST)) if out_dir is not None else None
    with refuse_imports_from(folder) if folder is not None else contextlib.nullcontext():
        return resolve(RunConfig.from_dict(config)), checkpoint, run, how


@dataclass
class TrainingRun:
    """A run opened for training by :func:`open_training_run`: its configuration (with the data
    set's dimensions), the model and guide on ``device`` (in the checkpoint's state when
    resumed), the data set, and what :func:`inference.training.fit` continues from."""

    out_dir: str
    how: str
    config: RunConfig
    model: Any
    guide: Any
    dataset: Any
    device: Any
    checkpoint: Optional[dict] = None
    run_id: Optional[str] = None
    group: Any = None

    def fit(self, *, progress=True, after_epoch=None, time_budget=None, log=print):
        """Train to ``training.num_epochs`` (see :func:`inference.training.fit`, whose
        ``after_epoch(out_dir, metrics)`` and ``time_budget`` in seconds these are); returns
        the summary written to ``summary.json``."""
        training, dataset = self.config.training, self.dataset
        processes = "" if self.group is None else f" in {self.group.size} processes"
        log(f"training on {self.device}{processes}: {len(dataset.train)} {dataset.name} points "
            f"({self.config.data.binarize} binarization), z_dim={self.config.model.z_dim}, "
            f"{training.num_epochs} epochs of minibatches of {training.batch_size}")
        summary = fit(self.model, self.guide, dataset, self.config, self.out_dir,
                      checkpoint=self.checkpoint, progress=progress, log=log,
                      after_epoch=after_epoch, time_budget=time_budget, group=self.group,
                      run_id=self.run_id)
        log(f"test ELBO {summary['test_elbo']:.3f} nats per data point "
            f"({summary['num_test']} test points, best epoch {summary['best_epoch']} of "
            f"{summary['epochs']}, {summary['seconds_per_epoch']:.1f} s per epoch)")
        if self.group is None or self.group.is_main:
            files = sorted(name for name in os.listdir(self.out_dir) if not name.startswith("."))
            log(f"files in {self.out_dir}: {', '.join(files)}")
        return summary


@contextlib.contextmanager
def open_training_run(out_dir, changes=None, *, resume=False, overwrite=False, trust=(),
                      group=None, log=print):
    """The run in ``out_dir`` opened for training, as a :class:`TrainingRun`; the folder is held
    (one writer at a time) until the block ends.

    :param changes: {dotted path: value} of settings of :class:`RunConfig`, or a function of
        the base configuration that returns them (see :func:`changes_for`). A new run is the
        defaults with them; a restarted or resumed run takes only the :data:`RESUMABLE` ones
        and refuses any other that differs from its setting.
    :param resume: continue the run in ``out_dir`` (from its checkpoint.pt, or anew from its
        config.json if it finished no epoch); without a run there, a new one begins.
    :param overwrite: remove the files of an earlier run in ``out_dir`` rather than refuse.
    :param trust: which ``module:Class`` parts a restarted or resumed run may import: True for
        every one, or a collection of names (see :func:`inference.checkpoint.load_checkpoint`).
    :param group: the :class:`inference.distributed.ProcessGroup` of a run of several
        processes: the first holds and reads the folder and gives the others its reading.
    """
    if group is not None and not group.is_main:
        yield _prepared(out_dir, None, group, log)
        return
    with RunFolder(out_dir) as folder:
        def opening():
            return open_folder(folder, changes, resume, overwrite, trust, log)
        yield _prepared(out_dir, opening, group, log)


def _prepared(out_dir, opening, group, log):
    """The :class:`TrainingRun` of what ``opening()`` returns (in the first process of a
    ``group``): seeded by the run's seed, the data set loaded, the model and guide built."""
    if group is None:
        config, checkpoint, run, how = opening()
    else:
        config, checkpoint, run, how = shared_opening(group, opening, out_dir)
    pyro.set_rng_seed(config.seed)
    device = resolve_device(config.device) if group is None else group.device
    dataset = load_dataset(config, device)
    config = resolve(config.updated({"model.x_dim": dataset.x_dim,
                                     "model.image_shape": dataset.image_shape}))
    model, guide = build(config)
    model, guide = model.to(device), guide.to(device)
    if checkpoint is not None:
        where = checkpoint.get("path", out_dir)
        load_state(model, checkpoint["model"], "model", where)
        load_state(guide, checkpoint["guide"], "guide", where)
    return TrainingRun(out_dir, how, config, model, guide, dataset, device, checkpoint, run,
                       group)


# ---------------------------------------------------------------------------------------------
# A trained run, opened for evaluation

def load_run(path, device="cpu", data_dir=None, trust=(), group=None):
    """Rebuild the model and guide of a run folder or checkpoint and load its data set.

    :param str data_dir: read the data from here instead of the folder stored in the run.
    :param trust: which ``module:Class`` parts the run may import (see ``load_checkpoint``).
    :param group: the :class:`inference.distributed.ProcessGroup` of a run of several
        processes: the first reads the checkpoint (only its machine needs the run folder) and
        gives the others what rebuilds the model and guide; every process reads the data set.
    :returns: (model, guide, dataset, config, checkpoint path); model and guide in eval mode
        with gradients switched off; ``config`` a RunConfig.
    """
    if group is None:
        checkpoint = load_checkpoint(path, map_location=device, trust=trust)
    else:
        checkpoint = shared_checkpoint(path, group, trust)
    model, guide, config = restore(checkpoint, device)
    model.requires_grad_(False), guide.requires_grad_(False)
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                      data_dir=data_dir))
    dataset = load_dataset(config, device)
    return model, guide, dataset, config, checkpoint["path"]


def shared_checkpoint(path, group, trust=()):
    """What :func:`inference.checkpoint.restore` needs of the checkpoint at ``path``, read by
    the first process of ``group`` alone and given to the others as plain data (the
    configuration as a dict, the model's and the guide's states as tensors on the CPU), as
    :func:`inference.run_life.open_training_run` gives a resumed run's checkpoint."""

    def read():
        checkpoint = load_checkpoint(path, map_location="cpu", trust=trust)
        return {"config": checkpoint["config"].to_dict(), "model": checkpoint["model"],
                "guide": checkpoint["guide"], "path": checkpoint["path"]}

    shared = group.from_main("read the run's checkpoint", read)
    # The first process allowed the parts the run names (``trust``); as there, no module is
    # imported from a run folder of that name, should this machine hold one.
    with refuse_imports_from(run_folder_of(shared["path"])):
        shared["config"] = resolve(shared["config"])
    return shared

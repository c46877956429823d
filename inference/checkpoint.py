"""Checkpoints: everything needed to rebuild a run and to continue it bit for bit.

A checkpoint is a dict saved with ``torch.save`` (written atomically) holding the run's
configuration (``RunConfig.to_dict()``: plain data), the model and guide state dicts, the
optimizer state, the finished epoch, the metrics so far, the best validation ELBO and the random
number generator states. The model and guide are rebuilt from the configuration alone, then
their states are loaded.

Format version 2 stores the nested configuration; version 1 stored a flat dict, which is
converted when read (:func:`models.base.config.from_flat`, each option going to the parts that
take it: :func:`inference.build.takes_option`), so runs of either version load.
"""

import os
import uuid

import torch

from inference.build import build, resolve, takes_option
from models.base.config import ConfigError, RunConfig
from models.utilities.files import atomic_torch_save
from models.base.registry import refuse_imports_from

FORMAT = "pyro-vae-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
LAST, BEST = "checkpoint.pt", "best.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def new_run_id():
    """A fresh run identity: written into every file of a run (checkpoints, ``config.json``,
    ``metrics.csv``, ``summary.json``), so that a file of another run is told apart on resume."""
    return uuid.uuid4().hex


def restore_rng_state(checkpoint):
    """Set torch's generators to the ``rng`` entry of a checkpoint, or say that it is damaged."""
    try:
        set_rng_state(checkpoint["rng"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise damaged(checkpoint, "rng", "the random number generator states",
                      error) from error


def damaged(checkpoint, entry, what, detail=""):
    """The :class:`CheckpointError` for a damaged ``entry`` of a loaded checkpoint."""
    if isinstance(detail, BaseException):
        detail = " ".join(str(detail).split())[:200] or type(detail).__name__
    detail = f" ({detail})" if detail else ""
    return CheckpointError(
        f"{checkpoint.get('path', 'the checkpoint')} has a damaged {entry!r} entry: {what}"
        f"{detail}; the run cannot continue from it bit for bit. Resume from a copy of the "
        "folder, or train again into another --out")


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_resumable(checkpoint, metric_fields=("epoch", "train_elbo", "validation_elbo")):
    """Refuse, naming the entry, a checkpoint whose entries a resumed run needs are damaged:
    ``epoch`` (at least 1), ``best`` ({epoch, validation_elbo} of a finished epoch),
    ``metrics`` (one row per finished epoch, with ``metric_fields``), ``rng`` (torch's
    generator state) and ``optimizer`` (not empty: a fresh Adam would continue otherwise than
    the run did). The optimizer's and generators' contents are checked where they are
    loaded."""
    epoch = checkpoint["epoch"]
    if epoch < 1:
        raise damaged(checkpoint, "epoch", f"the finished epoch is {epoch}, not 1 or more")
    best = checkpoint["best"]
    if not (isinstance(best.get("epoch"), int) and not isinstance(best.get("epoch"), bool)
            and 1 <= best["epoch"] <= epoch and _number(best.get("validation_elbo"))):
        raise damaged(checkpoint, "best", "the record of the best epoch ({epoch, "
                      "validation_elbo} with an epoch in 1.." f"{epoch})", f"got {best!r}"[:120])
    metrics = checkpoint["metrics"]
    if len(metrics) != epoch:
        raise damaged(checkpoint, "metrics", f"{len(metrics)} rows of history for {epoch} "
                      "finished epochs")
    # kl_weight: runs begun before KL warm-up existed kept none in their history.
    required = [field for field in metric_fields if field != "kl_weight"]
    for number, row in enumerate(metrics, 1):
        if not isinstance(row, dict) or not all(_number(row.get(field)) for field in required) \
                or row["epoch"] != number:
            raise damaged(checkpoint, "metrics", f"row {number} of the history is not the "
                          f"numbers of epoch {number}", f"got {row!r}"[:120])
    rng = checkpoint["rng"]
    if not (torch.is_tensor(rng.get("torch")) and rng["torch"].dtype == torch.uint8):
        raise damaged(checkpoint, "rng", "torch's generator state (a byte tensor) is missing")
    if not checkpoint["optimizer"]:
        raise damaged(checkpoint, "optimizer", "the optimizer's state is empty")


def save_checkpoint(path, *, config, model, guide, optimizer, epoch, metrics, best, rng=None,
                    run=None):
    """Write a checkpoint of ``config`` (a RunConfig) and the states atomically; ``optimizer``
    is the state of the training step's optimizer (``TrainingStep.state()``), or None; ``run``
    the run's identity (:func:`new_run_id`)."""
    atomic_torch_save(path, {
        "format": FORMAT,
        "version": VERSION,
        **({"run": run} if run is not None else {}),
        "config": config.to_dict(),
        "epoch": epoch,
        "model": model.state_dict(),
        "guide": guide.state_dict(),
        "optimizer": optimizer if optimizer is not None else {},
        "metrics": metrics,
        "best": best,
        "rng": rng if rng is not None else rng_state(),
    })


def checkpoint_path(path, prefer=BEST):
    """A checkpoint file: ``path`` itself, or ``path/best.pt`` (``prefer``) else
    ``path/checkpoint.pt`` when ``path`` is a run folder."""
    if os.path.isdir(path):
        for name in (prefer, LAST, BEST):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise CheckpointError(f"no checkpoint in {path}: expected {BEST} or {LAST} there "
                              "(is it the --out folder of a training run?)")
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: give a run folder or a .pt file")
    return path


#: what every checkpoint holds, and the type of each entry
ENTRIES = {"config": dict, "model": dict, "guide": dict, "optimizer": dict, "epoch": int,
           "metrics": list, "best": dict, "rng": dict}


def custom_parts(config):
    """The ``module:Class`` names a RunConfig asks to import, as (family, name) pairs."""
    parts = [("architecture", config.model.architecture), ("prior", config.model.prior),
             ("likelihood", config.model.likelihood), ("guide", config.model.guide),
             ("objective", config.training.objective)]
    return [(family, spec.name) for family, spec in parts if ":" in spec.name]


def _read(path, map_location):
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch reports truncation and corruption in many ways
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if "weights_only" in str(error):
            # Never pass on torch's advice to load with weights_only=False: for a file from
            # elsewhere that would run whatever code the file carries.
            first = ("it holds Python objects other than tensors and plain data, which this "
                     "project never unpickles")
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {first}); it is "
            "corrupt, truncated or not one of this project's; use another checkpoint or "
            "retrain") from error


def read_checkpoint(path, map_location="cpu", prefer=BEST):
    """The entries of a checkpoint file (or of a run folder's), checked for form, with its
    configuration as a :class:`RunConfig` whose parts are *not* resolved: nothing is imported,
    whatever the parts are called. What a run folder's own bookkeeping (repairing it,
    comparing its files, reading the best epoch's states) needs, with no trust asked."""
    path = checkpoint_path(path, prefer)
    checkpoint = _read(path, map_location)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no {FORMAT!r} tag)")
    if checkpoint.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint version {checkpoint.get('version')}; "
                              f"this version of the project reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    for key, kind in ENTRIES.items():
        if not isinstance(checkpoint.get(key), kind) or isinstance(checkpoint.get(key), bool):
            raise CheckpointError(f"{path} lacks a valid {key!r} entry (a {kind.__name__}); it "
                                  "is damaged or was not written by this project")
    if not isinstance(checkpoint.get("run", ""), str):
        raise CheckpointError(f"{path} has a damaged 'run' entry (the run's identity, a "
                              "string); it was not written by this project")
    try:
        # Version 1 stored a flat dict; from_dict converts it. Reading it imports nothing.
        checkpoint["config"] = RunConfig.from_dict(checkpoint["config"], takes=takes_option)
    except ConfigError as error:
        raise CheckpointError(f"{path} holds a configuration this project cannot use: "
                              f"{error}") from error
    checkpoint["path"] = path
    return checkpoint


def run_folder_of(path):
    """The run folder a checkpoint file belongs to: the folder that holds it and, upwards,
    every enclosing folder that holds a run's files (a checkpoint kept in ``RUN/ckpts/``
    belongs to ``RUN``). Code inside it is never imported."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        parent = os.path.dirname(folder)
        if parent == folder or not any(all(os.path.lexists(os.path.join(parent, name))
                                           for name in marks) for marks in RUN_MARKS):
            return folder
        folder = parent


#: sets of files whose presence marks a folder as a training run's: the lock every training
#: run leaves, or its configuration beside its metrics
RUN_MARKS = ((".lock",), ("config.json", "metrics.csv"))


def load_checkpoint(path, map_location="cpu", prefer=BEST, trust=()):
    """Read a checkpoint file or the checkpoint of a run folder, with clear errors.

    Nothing is imported or called that the caller did not allow: the file is read with
    ``weights_only=True`` (tensors and plain data only); every part name is looked up in the
    registries; a part named ``module:Class`` (code to import) is refused unless ``trust`` is
    True or names it, and even then a module inside the run folder is never imported.

    :param trust: True to allow every ``module:Class`` the run names, or a collection of the
        names allowed (``--trust-run``, or naming the part again on the command line).
    """
    checkpoint = read_checkpoint(path, map_location, prefer)
    path = checkpoint["path"]
    check_trusted(checkpoint["config"], trust, path, CheckpointError)
    try:
        with refuse_imports_from(run_folder_of(path)):
            checkpoint["config"] = resolve(checkpoint["config"])
    except ConfigError as error:
        raise CheckpointError(f"{path} holds a configuration this project cannot use: "
                              f"{error}") from error
    return checkpoint


def check_trusted(config, trust, path, error=ConfigError):
    """Refuse a configuration read from ``path`` that names code to import (``module:Class``
    parts) which ``trust`` does not allow: True allows every one, a collection those named."""
    untrusted = [f"the {family} {name!r}" for family, name in custom_parts(config)
                 if not (trust is True or name in (trust or ()))]
    if untrusted:
        raise error(f"{path} names code to import: {', '.join(untrusted)}. Loading it would "
                    "run that module. If the module is yours and you trust where this run came "
                    "from, pass --trust-run (from Python: trust=True)")


def load_state(module, state, what, path):
    """``module.load_state_dict(state)`` with an error that says which checkpoint did not fit."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise CheckpointError(
            f"the {what} state in {path} does not fit the {what} its config describes "
            f"({' '.join(first[:3])}); the checkpoint belongs to another model") from error


def restore(checkpoint, device="cpu"):
    """Rebuild the model and guide a loaded checkpoint describes and load their states.

    :returns: (model, guide, config), on ``device`` and in evaluation mode; ``config`` is the
        run's :class:`models.base.config.RunConfig`.
    """
    config = checkpoint["config"]
    model, guide = build(config)
    load_state(model, checkpoint["model"], "model", checkpoint.get("path"))
    load_state(guide, checkpoint["guide"], "guide", checkpoint.get("path"))
    return model.to(device).eval(), guide.to(device).eval(), config

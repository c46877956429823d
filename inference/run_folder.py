"""The run folder of a training run: one writer at a time, nothing overwritten unasked, and a
consistent state after a crash at any instant.

Each epoch writes its files in this order (each atomically: a temporary file renamed over the
target):

1. ``checkpoint.pt``: the commit point of the epoch; it holds the model, optimizer and random
   states, the metrics so far and the record of the best epoch;
2. ``best.pt``, when the epoch improved the validation ELBO: the same state as the checkpoint;
3. ``metrics.csv`` and whatever the caller draws (``elbo.png``): derived from the checkpoint.

So after a crash every file is either up to date or derived from an older state that the last
``checkpoint.pt`` supersedes, and :func:`repair` restores the rest from the checkpoint when the
run resumes: a ``best.pt`` that lags behind the checkpoint's record of the best epoch is
rewritten from the checkpoint (whose state *is* that epoch's), ``config.json`` and
``metrics.csv`` are rewritten, and temporary files a killed process left are removed. A folder
whose files disagree in a way no crash can cause (another run's ``best.pt``) is refused.
"""

import fcntl
import glob
import os

from inference.checkpoint import BEST, LAST, CheckpointError, load_checkpoint
from models.base.config import ConfigError
from models.base.io import atomic_copy, atomic_write_json

#: the files a training run writes into its folder
RUN_FILES = ("config.json", "metrics.csv", LAST, BEST, "elbo.png", "summary.json")
LOCK = ".lock"


class RunFolderError(ConfigError):
    """The run folder is in use, holds another run, or cannot be repaired."""


class RunFolder:
    """A run folder held by this process: ``with RunFolder(path) as folder: ...`` takes an
    exclusive lock (another writer is refused with one line, not waited for) and removes the
    temporary files a killed writer left behind."""

    def __init__(self, path):
        self.path = path
        self._handle = None

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        handle = open(os.path.join(self.path, LOCK), "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderError(f"{self.path} is in use by {owner}, which is writing a run "
                                 "there; wait for it to finish or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        self._handle = handle
        for leftover in glob.glob(os.path.join(glob.escape(self.path), ".*.tmp")):
            os.remove(leftover)
        return self

    def __exit__(self, *exc_info):
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def file(self, name):
        return os.path.join(self.path, name)

    def existing(self):
        """The run files already in the folder."""
        return [name for name in RUN_FILES if os.path.exists(self.file(name))]

    def start(self, resume, overwrite):
        """Decide what to do with the folder's contents: ``"resume"`` from its
        ``checkpoint.pt``; ``"restart"`` a run that stopped before it finished an epoch (only
        its ``config.json`` is there), with that configuration; or ``"new"``. Files of an
        earlier run are never overwritten without ``overwrite``, which removes them."""
        existing = self.existing()
        if resume and LAST in existing:
            return "resume"
        if resume and existing == ["config.json"]:
            return "restart"
        if existing and not overwrite:
            listed = ", ".join(existing)
            if resume:
                raise RunFolderError(
                    f"{self.path} holds files of a run ({listed}) but no {LAST} to resume from; "
                    "pass --overwrite to start a new run there (replacing them) or choose "
                    "another --out")
            raise RunFolderError(f"{self.path} already holds a run ({listed}); pass --resume to "
                                 "continue it, --overwrite to replace it, or choose another "
                                 "--out")
        for name in existing:
            os.remove(self.file(name))
        return "new"


def repair(out_dir, checkpoint, write_metrics, after_epoch=None):
    """Bring every file of the run folder ``out_dir`` in line with its last checkpoint before a
    run resumes (see the module's docstring); refuse a folder that mixes runs."""
    best = checkpoint["best"]
    config = checkpoint["config"]
    last_path, best_path = os.path.join(out_dir, LAST), os.path.join(out_dir, BEST)
    atomic_write_json(os.path.join(out_dir, "config.json"), config.to_dict())
    stored = None
    if os.path.exists(best_path):
        try:
            stored = load_checkpoint(best_path, trust=True)
        except CheckpointError:
            stored = None   # a best.pt a crash damaged is rewritten below, when it can be
    if stored is not None and stored["config"].model != config.model:
        raise RunFolderError(f"{best_path} belongs to another run than {last_path} (their "
                             "models differ); move one of them away")
    if stored is None or stored["epoch"] != best["epoch"]:
        if best["epoch"] != checkpoint["epoch"]:
            found = "missing or unreadable" if stored is None else f"from epoch {stored['epoch']}"
            raise RunFolderError(
                f"{best_path} is {found}, but {last_path} records epoch {best['epoch']} "
                "as the best; the folder cannot be repaired from its checkpoint. Keep the "
                "folder, and train again into another --out")
        # The crash came between the checkpoint and best.pt: the checkpoint holds that state.
        atomic_copy(last_path, best_path)
    write_metrics(out_dir, checkpoint["metrics"])
    if after_epoch is not None and checkpoint["metrics"]:
        after_epoch(out_dir, checkpoint["metrics"])

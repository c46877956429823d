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

import csv
import errno
import fcntl
import glob
import json
import math
import os
import stat

from inference.checkpoint import BEST, LAST, CheckpointError, read_checkpoint
from models.base.config import ConfigError
from models.utilities.files import atomic_copy, atomic_write_json

#: the files a training run writes into its folder
RUN_FILES = ("config.json", "metrics.csv", LAST, BEST, "elbo.png", "summary.json")
LOCK = ".lock"


class RunFolderError(ConfigError):
    """The run folder is in use, holds another run, or cannot be repaired."""


def open_lock(path):
    """Open the lock file ``path`` for reading and writing, creating it; never through a link.

    A symbolic link there (to a file of the user's, say) is replaced by a plain file: the link
    is removed, never its target. A hard link, a FIFO or anything but a plain file is refused,
    since truncating it would write into another file or block."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(2):
        try:
            descriptor = os.open(path, flags, 0o644)
            break
        except OSError as error:
            if error.errno != errno.ELOOP or not os.path.islink(path):
                raise
            os.unlink(path)   # the link itself; its target is left as it is
    else:
        raise RunFolderError(f"{path} keeps turning into a symbolic link; remove it")
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(descriptor)
        what = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a plain file"
        raise RunFolderError(f"the run folder's lock {path} is {what}; remove it (a run's "
                             "lock is a plain file of its own) and start again")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "r+")


class RunFolder:
    """A run folder held by this process: ``with RunFolder(path) as folder: ...`` takes an
    exclusive lock (another writer is refused with one line, not waited for) and removes the
    temporary files a killed writer left behind."""

    def __init__(self, path):
        self.path = path
        self._handle = None

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        handle = open_lock(os.path.join(self.path, LOCK))
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
    run resumes (see the module's docstring); refuse a folder that mixes runs: a file that
    carries another run's identity, or a ``best.pt`` or ``metrics.csv`` whose numbers are not
    those of this run's checkpoint. Reading them imports nothing."""
    best = checkpoint["best"]
    run = checkpoint.get("run")
    last_path, best_path = os.path.join(out_dir, LAST), os.path.join(out_dir, BEST)
    check_belongs(out_dir, checkpoint)
    stored = None
    if os.path.exists(best_path):
        try:
            stored = read_checkpoint(best_path, prefer=BEST)
        except CheckpointError:
            stored = None   # a best.pt a crash damaged is rewritten below, when it can be
    if stored is not None:
        foreign = _foreign_best(stored, checkpoint)
        if foreign:
            raise RunFolderError(f"{best_path} belongs to another run than {last_path} "
                                 f"({foreign}); move one of them away")
    if stored is None or stored["epoch"] != best["epoch"]:
        if best["epoch"] != checkpoint["epoch"]:
            found = "missing or unreadable" if stored is None else f"from epoch {stored['epoch']}"
            raise RunFolderError(
                f"{best_path} is {found}, but {last_path} records epoch {best['epoch']} "
                "as the best; the folder cannot be repaired from its checkpoint. Keep the "
                "folder, and train again into another --out")
        # The crash came between the checkpoint and best.pt: the checkpoint holds that state.
        atomic_copy(last_path, best_path)
    atomic_write_json(os.path.join(out_dir, "config.json"),
                      config_record(checkpoint["config"], run))
    write_metrics(out_dir, checkpoint["metrics"], run)
    if after_epoch is not None and checkpoint["metrics"]:
        after_epoch(out_dir, checkpoint["metrics"])


def config_record(config, run=None):
    """What ``config.json`` holds: the configuration, and the run's identity under ``"run"``."""
    record = config.to_dict()
    if run is not None:
        record["run"] = run
    return record


def _foreign_best(stored, checkpoint):
    """Why the best.pt ``stored`` is not of the run of ``checkpoint`` (empty when it is)."""
    if stored.get("run") and checkpoint.get("run") and stored["run"] != checkpoint["run"]:
        return "its run identity differs"
    if stored["config"].model != checkpoint["config"].model:
        return "their models differ"
    epoch = stored["epoch"]
    # best.pt is the state of an epoch this run finished: its history is the run's up to then.
    if not 1 <= epoch <= checkpoint["epoch"] or \
            not _same_rows(stored["metrics"], checkpoint["metrics"][:epoch]):
        return f"its metrics up to epoch {epoch} are not the run's"
    return ""


def _same_rows(rows, reference):
    """Whether two metric histories agree (NaN equal to NaN; ``seconds`` is not compared: a
    copy of the checkpoint was timed alike)."""
    if len(rows) != len(reference):
        return False
    for row, other in zip(rows, reference):
        if not isinstance(row, dict):
            return False
        for key in ("epoch", "train_elbo", "validation_elbo"):
            a, b = row.get(key), other.get(key)
            if not (a == b or (isinstance(a, float) and isinstance(b, float)
                               and math.isnan(a) and math.isnan(b))):
                return False
    return True


def check_belongs(out_dir, checkpoint):
    """Refuse a run folder whose ``config.json``, ``metrics.csv`` or ``summary.json`` carries
    another run's identity than the checkpoint's, or whose ``metrics.csv`` records other
    numbers than the checkpoint's history (files written before runs had identities are
    compared by their numbers)."""
    run = checkpoint.get("run")
    for name in ("config.json", "summary.json"):
        path = os.path.join(out_dir, name)
        if run is None or not os.path.exists(path):
            continue
        try:
            with open(path) as handle:
                other = json.load(handle).get("run")
        except (ValueError, AttributeError):
            other = None   # an unreadable derived file is rewritten from the checkpoint
        if other is not None and other != run:
            raise RunFolderError(f"{path} belongs to another run than {out_dir}/{LAST} (its "
                                 "run identity differs); move one of them away")
    path = os.path.join(out_dir, "metrics.csv")
    if not os.path.exists(path):
        return
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = {row.get("run") for row in rows} - {None, ""}
    if run is not None and ids and ids != {run}:
        raise RunFolderError(f"{path} belongs to another run than {out_dir}/{LAST} (its run "
                             "identity differs); move one of them away")
    history = checkpoint["metrics"]
    # metrics.csv is written after the checkpoint: it may lag one epoch behind, never lead.
    try:
        numbers = [{"epoch": int(row["epoch"]), "train_elbo": float(row["train_elbo"]),
                    "validation_elbo": float(row["validation_elbo"])} for row in rows]
    except (KeyError, TypeError, ValueError):
        numbers = None
    if numbers is None or len(numbers) > len(history) or \
            not _same_rows(numbers, history[:len(numbers)]):
        raise RunFolderError(f"{path} does not hold the history of the run in "
                             f"{out_dir}/{LAST}; it belongs to another run or was edited. "
                             "Move it away (the checkpoint's history will be written anew)")

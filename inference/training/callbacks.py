"""What the epoch loop does besides stepping, as small collaborators: the learning-rate
schedule, the flushing of Adam's subnormal numbers, the divergence watch, the progress bar, the
run folder's files, the log line of each epoch and the time budget. A user adds their own by
subclassing :class:`Callback` and passing it to :func:`inference.training.fit`.

The loop reads the device (the losses) only every ``CHECK_EVERY`` steps and at the end of an
epoch, and hands what it read to :meth:`Callback.losses_read`, so that no callback makes a step
wait for the device.
"""

import csv
import io
import math
import os
import time

from tqdm.auto import tqdm

from inference.checkpoint import BEST, LAST, rng_state, save_checkpoint
from inference.training.schedule import learning_rate_at
from models.utilities.files import atomic_copy, atomic_write_text

# train_elbo is the training objective per point (the IWAE bound for --objective iwae, the
# KL-weighted ELBO during warm-up); validation_elbo is always the plain ELBO.
METRIC_FIELDS = ("epoch", "train_elbo", "validation_elbo", "kl_weight", "seconds")
#: steps between two flushes of the optimizer's subnormal numbers (see
#: inference.training.optimizer.flush_subnormals): fewer than the 150 or so that beta1 = 0.9
#: takes to carry a running average through the subnormal range
FLUSH_EVERY = 100


class Callback:
    """A collaborator of the epoch loop. Each hook receives the :class:`inference.training.loop.
    TrainingLoop` (its ``step``, ``model``, ``guide``, ``config``, ``out_dir``, ``metrics``,
    ``best``, ``group``, ``is_main`` and ``log``); the default hooks do nothing."""

    def epoch_begin(self, loop, epoch):
        """Before the first step of ``epoch`` (counted from 1)."""

    def step_end(self, loop, epoch, steps):
        """After each step; ``steps`` counts this epoch's steps so far. Must not read the
        device."""

    def losses_read(self, loop, epoch, steps, elbo):
        """When the loop has read the losses: ``elbo`` is the mean training objective per data
        point over the steps since the last read."""

    def epoch_end(self, loop, record, improved):
        """After an epoch: ``record`` is its row of ``loop.metrics``; ``improved`` whether it
        is the best so far (``loop.best`` is updated)."""

    def stop(self, loop, epoch):
        """Whether to stop after ``epoch`` (the loop stops when one callback says so)."""
        return False


class LearningRateSchedule(Callback):
    """Sets Adam's step size at the start of each epoch (``training.learning_rate_schedule``)."""

    def epoch_begin(self, loop, epoch):
        loop.step.set_learning_rate(learning_rate_at(loop.config.training, epoch))


class SubnormalFlush(Callback):
    """Every ``FLUSH_EVERY`` steps, zeroes Adam's subnormal running averages on the CPU."""

    def __init__(self, every=None):
        self.every = every

    def step_end(self, loop, epoch, steps):
        every = self.every if self.every is not None else FLUSH_EVERY
        if steps % every == 0:
            loop.step.flush_subnormals()


class TrainingDiverged(ValueError):
    """The training objective or the parameters left the finite numbers, or ran away."""


class DivergenceWatch(Callback):
    """Stops a run whose training objective runs away: a non-finite loss, or an ELBO per data
    point below ``factor`` times the first one seen (which, at the start of training, is
    already as bad as an untrained model gets). It looks at the losses only when they are read
    anyway (every ``CHECK_EVERY`` steps)."""

    def __init__(self, learning_rate, factor=100.0):
        self.learning_rate, self.factor = learning_rate, factor
        self.first = None

    def losses_read(self, loop, epoch, steps, elbo):
        self.check(elbo, epoch, steps)

    def check(self, elbo_per_point, epoch, step):
        if not math.isfinite(elbo_per_point):
            self._stop(epoch, step, f"the training objective became {elbo_per_point}")
        if self.first is None:
            self.first = elbo_per_point
        elif elbo_per_point < self.factor * min(self.first, -1.0):
            self._stop(epoch, step, f"the training ELBO fell to {elbo_per_point:.3g} nats per "
                       f"data point, from {self.first:.3g} at the start")

    def _stop(self, epoch, step, what):
        raise TrainingDiverged(
            f"training diverged in epoch {epoch} (by step {step}): {what}; lower "
            f"--learning-rate (now {self.learning_rate:g}) and train again (files of finished "
            "epochs are intact)")


class ProgressBar(Callback):
    """A tqdm bar over the minibatches of each epoch, with the ELBO of the last read."""

    def __init__(self, num_batches, num_epochs, enabled=True):
        self.num_batches, self.num_epochs, self.enabled = num_batches, num_epochs, enabled
        self.bar = None

    def epoch_begin(self, loop, epoch):
        self.bar = tqdm(total=self.num_batches, desc=f"epoch {epoch}/{self.num_epochs}",
                        unit="batch", disable=not self.enabled or not loop.is_main, leave=False,
                        dynamic_ncols=True)

    def step_end(self, loop, epoch, steps):
        self.bar.update()

    def losses_read(self, loop, epoch, steps, elbo):
        self.bar.set_postfix_str(f"ELBO {elbo:.2f} nats/point")

    def epoch_end(self, loop, record, improved):
        self.bar.close()


def write_metrics(out_dir, metrics, run=None):
    """Write ``metrics.csv``: one row per finished epoch, each with the run's identity ``run``
    in its last column (where the run has one)."""
    buffer = io.StringIO()
    fields = METRIC_FIELDS + (("run",) if run is not None else ())
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in metrics:
        # Runs begun before KL warm-up existed kept no kl_weight in their history: it was 1.
        writer.writerow({"kl_weight": 1.0, **row, **({"run": run} if run is not None else {})})
    atomic_write_text(os.path.join(out_dir, "metrics.csv"), buffer.getvalue())


class RunFiles(Callback):
    """Writes the run folder after each epoch, in the first process: ``checkpoint.pt`` first
    (the epoch's commit point), then ``best.pt`` when the epoch improved, then ``metrics.csv``,
    then whatever ``after_epoch(out_dir, metrics)`` adds; :func:`inference.run_folder.repair`
    restores the rest from the checkpoint after a crash at any instant."""

    def __init__(self, after_epoch=None):
        self.after_epoch = after_epoch

    def epoch_end(self, loop, record, improved):
        if not loop.is_main:
            return
        last = os.path.join(loop.out_dir, LAST)
        save_checkpoint(last, config=loop.config, model=loop.model, guide=loop.guide,
                        optimizer=loop.step.state(), epoch=record["epoch"],
                        metrics=loop.metrics, best=loop.best, rng=rng_state(), run=loop.run)
        if improved:
            atomic_copy(last, os.path.join(loop.out_dir, BEST))
        write_metrics(loop.out_dir, loop.metrics, loop.run)
        if self.after_epoch is not None:
            self.after_epoch(loop.out_dir, loop.metrics)


class EpochLog(Callback):
    """One line per epoch: the training and validation ELBOs and the seconds it took."""

    def epoch_end(self, loop, record, improved):
        validation = record["validation_elbo"]
        shown = "     none" if math.isnan(validation) else f"{validation:9.3f}"
        loop.log(f"epoch {record['epoch']:3d}/{loop.config.training.num_epochs}  train ELBO "
                 f"{record['train_elbo']:9.3f}  validation ELBO {shown}  "
                 f"({record['seconds']:.1f} s){'  *best*' if improved else ''}")


class TimeBudget(Callback):
    """Stops at the end of the last epoch that is expected to finish within ``seconds`` of the
    callback's making, just before the first epoch (the mean epoch so far predicts the next);
    ``--resume`` continues. With several processes the first one's clock decides for all."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.began, self.first_epoch = time.perf_counter(), None

    def epoch_begin(self, loop, epoch):
        if self.first_epoch is None:
            self.first_epoch = epoch

    def stop(self, loop, epoch):
        elapsed = time.perf_counter() - self.began
        done = epoch - self.first_epoch + 1
        stop = epoch < loop.config.training.num_epochs and \
            elapsed + elapsed / done > self.seconds
        if loop.group is not None:
            stop = loop.group.broadcast(stop)
        if stop:
            loop.log(f"stopping after epoch {epoch} of {loop.config.training.num_epochs}: "
                     f"another epoch would exceed the time budget of {self.seconds / 60:g} "
                     "minutes; continue with --resume")
        return stop

"""The epoch loop of SVI: epochs of shuffled minibatches, each a :class:`TrainingStep`, then the
validation ELBO and the epoch's record; everything else it does is a
:class:`inference.training.callbacks.Callback`."""

import math
import os
import time

import torch

from inference.checkpoint import check_resumable, new_run_id, restore_rng_state
from inference.objectives import kl_weight
from inference.run_folder import config_record, repair
from inference.training.callbacks import (METRIC_FIELDS, DivergenceWatch, EpochLog,
                                          LearningRateSchedule, ProgressBar, RunFiles,
                                          SubnormalFlush, TimeBudget, write_metrics)
from inference.training.optimizer import forget_stale_params
from inference.training.scores import mean_elbo, summarize, validate_data
from inference.training.steps import TrainingStep
from models.base.config import derived_seed
from models.utilities.files import atomic_write_json

#: steps between two reads of the losses (progress bar, divergence check): the only times a
#: training step waits for the device
CHECK_EVERY = 50


def epoch_seed(seed, epoch, rank=None):
    """The seed of an epoch of a run of several processes: the order of the data (``rank``
    None) is the same in all, the noise of each process its own."""
    return derived_seed(seed, epoch, "order" if rank is None else rank)


class TrainingLoop:
    """The state the epoch loop shares with its callbacks: the ``step``, ``model``, ``guide``,
    ``config``, ``out_dir``, the ``metrics`` so far (one dict per finished epoch), the ``best``
    epoch ({epoch, validation_elbo}), the ``run`` identity, the ``group`` of processes (or
    None), ``is_main`` (the process that writes files) and ``log``."""

    def __init__(self, step, model, guide, config, out_dir, group, log, run):
        self.step, self.model, self.guide, self.config = step, model, guide, config
        self.out_dir, self.group, self.log, self.run = out_dir, group, log, run
        self.is_main = group is None or group.is_main
        self.metrics, self.best = [], {"epoch": 0, "validation_elbo": -math.inf}


def fit(model, guide, dataset, config, out_dir, *, checkpoint=None, progress=True, log=print,
        after_epoch=None, time_budget=None, group=None, run_id=None, callbacks=()):
    """Train ``model`` and ``guide`` by SVI on ``dataset`` as ``config`` says; write the run folder.

    :param config: the run's :class:`models.base.config.RunConfig`; training follows
        ``config.training``. It is saved as ``config.json`` and in every checkpoint.
    :param dict checkpoint: a loaded checkpoint to resume from (see ``load_checkpoint``).
    :param after_epoch: called as ``after_epoch(out_dir, metrics)`` after each epoch's files
        are written (to draw curves, say).
    :param float time_budget: seconds this call may train; it stops at the end of the last
        epoch that is expected to finish within them (``--resume`` continues the run).
    :param group: the :class:`inference.distributed.ProcessGroup` of a run of several
        processes (each needs the same ``checkpoint``): each trains on its share of every
        minibatch of ``training.batch_size`` (the global size), with the data order of the
        epoch the same in all and its own noise; losses and ELBOs are combined across them;
        only the first process writes files, logs and calls ``after_epoch``.
    :param str run_id: the identity of a new run (default: a fresh one; a restarted run keeps
        the one its ``config.json`` holds); a resumed run keeps its checkpoint's.
    :param callbacks: more :class:`inference.training.callbacks.Callback` objects, called after
        the built-in ones (learning-rate schedule, subnormal flush, divergence watch, progress
        bar, run files, epoch log, time budget).
    :returns: the summary dict written to ``summary.json``.
    """
    training = config.training
    main = group is None or group.is_main
    if not main:
        log = _silent
    if main:
        os.makedirs(out_dir, exist_ok=True)
    forget_stale_params()
    validate_data(model, dataset)
    step = TrainingStep(model, guide, training, log=log, group=group)
    loop = TrainingLoop(step, model, guide, config, out_dir, group, log, run_id)
    start_epoch = 0
    if checkpoint is not None:
        check_resumable(checkpoint, METRIC_FIELDS)
        if training.num_epochs < checkpoint["epoch"]:
            raise ValueError(f"the run in {out_dir} has finished {checkpoint['epoch']} epochs; "
                             f"--num-epochs {training.num_epochs} would not continue it (give "
                             "the total number of epochs, more than that)")
        # A run begun before runs had identities takes one now.
        loop.run = checkpoint.get("run") or loop.run or new_run_id()
        checkpoint = dict(checkpoint, run=loop.run)
        if main:
            repair(out_dir, checkpoint, write_metrics, after_epoch)
        step.load_state(checkpoint["optimizer"], checkpoint.get("path"))
        loop.metrics, loop.best = checkpoint["metrics"], checkpoint["best"]
        start_epoch = checkpoint["epoch"]
        restore_rng_state(checkpoint)
        log(f"resuming {out_dir} after epoch {start_epoch}")
    else:
        loop.run = loop.run or new_run_id()
        if main:
            atomic_write_json(os.path.join(out_dir, "config.json"),
                              config_record(config, loop.run))
    if group is not None:
        loop.run = group.broadcast(loop.run)

    train, num_data = dataset.train, len(dataset.train)
    batch_size = min(training.batch_size, num_data)
    num_batches = math.ceil(num_data / batch_size)
    device = train.images.device
    everything = [LearningRateSchedule(), SubnormalFlush(), DivergenceWatch(training.learning_rate),
                  ProgressBar(num_batches, training.num_epochs, progress), RunFiles(after_epoch),
                  EpochLog()]
    if time_budget is not None:
        everything.append(TimeBudget(time_budget))
    everything += list(callbacks)

    model.train(), guide.train()
    read_yet = False
    for epoch in range(start_epoch + 1, training.num_epochs + 1):
        start = time.perf_counter()
        for callback in everything:
            callback.epoch_begin(loop, epoch)
        total = torch.zeros((), device=device)
        window, window_steps, steps, weight = torch.zeros((), device=device), 0, 0, 1.0
        if group is None:
            batches = ((x, None) for x in train.batches(batch_size, shuffle=True))
        else:
            order = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
            torch.manual_seed(epoch_seed(config.seed, epoch, group.rank))
            batches = train.batches(batch_size, shuffle=True, generator=order,
                                    share=(group.rank, group.size))
        for x, fraction in batches:
            weight = kl_weight(training.kl_warmup_epochs, epoch, steps + 1, num_batches)
            loss = step(x, num_data, weight, fraction)
            total, window = total + loss, window + loss
            steps, window_steps = steps + 1, window_steps + 1
            for callback in everything:
                callback.step_end(loop, epoch, steps)
            if steps % CHECK_EVERY == 0 or steps == num_batches or not read_yet:
                # The one read of the device in CHECK_EVERY steps (and at the very first step,
                # whose loss is the yardstick of divergence); with several processes the mean
                # of their losses, so that all of them decide alike.
                if group is not None:
                    window = group.sum(window) / group.size
                elbo = -window.item() / window_steps / num_data
                for callback in everything:
                    callback.losses_read(loop, epoch, steps, elbo)
                window, window_steps, read_yet = torch.zeros((), device=device), 0, True
        if group is not None:
            total = group.sum(total) / group.size
        train_elbo = -total.item() / steps / num_data
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        # Without a validation split (--num-validation 0, the paper's protocol) the last epoch
        # is the best.
        validation_elbo = (mean_elbo(model, guide, dataset.validation, group=group)
                           if len(dataset.validation) else math.nan)
        record = {"epoch": epoch, "train_elbo": train_elbo, "validation_elbo": validation_elbo,
                  "kl_weight": weight, "seconds": seconds}
        loop.metrics.append(record)
        improved = validation_elbo > loop.best["validation_elbo"] or math.isnan(validation_elbo)
        if improved:
            loop.best = {"epoch": epoch, "validation_elbo": validation_elbo}
        for callback in everything:
            callback.epoch_end(loop, record, improved)
        if any([callback.stop(loop, epoch) for callback in everything]):
            break
    return summarize(model, guide, dataset, out_dir, loop.metrics, loop.best, group, loop.run)


def _silent(*args, **kwargs):
    pass

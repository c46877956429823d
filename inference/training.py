"""A thin SVI driver: epochs of shuffled minibatches, validation, checkpoints, resume.

    svi = SVI(model, guide, Adam({"lr": learning_rate}), Trace_ELBO())
    for epoch in epochs:
        for x in train.batches(batch_size, shuffle=True):
            svi.step(x, num_data=N)     # minibatch ELBO scaled by N / B: unbiased for the full ELBO

Everything a run produces goes to one folder: ``config.json``, ``metrics.csv``, ``checkpoint.pt``
(after the last finished epoch), ``best.pt`` (best validation ELBO) and ``summary.json``, all
written atomically; ``after_epoch`` lets the caller add more (``train.py`` draws ``elbo.png``).
Resuming from ``checkpoint.pt`` restores parameters,
optimizer moments and random number generator states, so a run that was split in two ends exactly
where an uninterrupted run with the same seed ends (on the CPU; GPU kernels are not all
deterministic).
"""

import contextlib
import csv
import io
import math
import os
import time

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from tqdm.auto import tqdm

from inference.checkpoint import BEST, LAST, rng_state, save_checkpoint, set_rng_state
from inference.log_weights import log_importance_weights
from inference.objectives import ScaleLatents, kl_weight, make_loss, warmed
from inference.run_folder import repair
from models.base.io import atomic_copy, atomic_write_json, atomic_write_text

# train_elbo is the training objective per point (the IWAE bound for --objective iwae, the
# KL-weighted ELBO during warm-up); validation_elbo is always the plain ELBO.
METRIC_FIELDS = ("epoch", "train_elbo", "validation_elbo", "kl_weight", "seconds")


@torch.no_grad()
def elbo_per_datapoint(model, guide, x, batch_size=1000):
    """The ELBO log p(x_n, z_n) - log q(z_n | x_n) with one z_n ~ q(z | x_n) for each point,
    as a tensor of shape (N,) in nats."""
    values = [log_importance_weights(model, guide, x[i:i + batch_size], 1)[0]
              for i in range(0, x.shape[0], batch_size)]
    return torch.cat(values)


def mean_elbo(model, guide, split, batch_size=1000):
    """The mean ELBO per data point over a split, in nats (one z per point)."""
    model.eval(), guide.eval()
    try:
        return elbo_per_datapoint(model, guide, split.data(), batch_size).mean().item()
    finally:
        model.train(), guide.train()


def forget_stale_params():
    """Drop parameters of earlier models from Pyro's global param store.

    ``pyro.module`` keeps whatever tensor the store already holds under a name, so leftovers of an
    earlier model named ``model$$$...`` would silently shadow the new model's parameters.
    """
    store = pyro.get_param_store()
    for name in list(store.keys()):
        if name.split("$$$")[0] in ("model", "guide", "local_guide"):
            del store[name]


def write_metrics(out_dir, metrics):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in metrics:
        # Runs begun before KL warm-up existed kept no kl_weight in their history: it was 1.
        writer.writerow({"kl_weight": 1.0, **row})
    atomic_write_text(os.path.join(out_dir, "metrics.csv"), buffer.getvalue())


def fit(model, guide, dataset, config, out_dir, *, checkpoint=None, progress=True, log=print,
        after_epoch=None):
    """Train ``model`` and ``guide`` by SVI on ``dataset`` as ``config`` says; write the run folder.

    :param config: the run's :class:`models.base.config.RunConfig`; training follows
        ``config.training``. It is saved as ``config.json`` and in every checkpoint.
    :param dict checkpoint: a loaded checkpoint to resume from (see ``load_checkpoint``).
    :param after_epoch: called as ``after_epoch(out_dir, metrics)`` after each epoch's files
        are written (to draw curves, say).
    :returns: the summary dict written to ``summary.json``.
    """
    training = config.training
    os.makedirs(out_dir, exist_ok=True)
    forget_stale_params()
    optimizer = Adam({"lr": training.learning_rate})
    metrics, best, start_epoch = [], {"epoch": 0, "validation_elbo": -math.inf}, 0
    if checkpoint is not None:
        if training.num_epochs < checkpoint["epoch"]:
            raise ValueError(f"the run in {out_dir} has finished {checkpoint['epoch']} epochs; "
                             f"--num-epochs {training.num_epochs} would not continue it (give "
                             "the total number of epochs, more than that)")
        repair(out_dir, checkpoint, write_metrics, after_epoch)
        optimizer.set_state(checkpoint["optimizer"])
        metrics, best, start_epoch = checkpoint["metrics"], checkpoint["best"], checkpoint["epoch"]
        set_rng_state(checkpoint["rng"])
        log(f"resuming {out_dir} after epoch {start_epoch}")
    else:
        atomic_write_json(os.path.join(out_dir, "config.json"), config.to_dict())

    scaler = ScaleLatents(1.0)
    svi = SVI(warmed(model, scaler), warmed(guide, scaler), optimizer, make_loss(training))
    train, num_data = dataset.train, len(dataset.train)
    batch_size = min(training.batch_size, num_data)
    # A traced graph has fixed shapes, so under --jit every minibatch must have the same size.
    drop_last = training.jit
    num_batches = num_data // batch_size if drop_last else math.ceil(num_data / batch_size)
    num_epochs = training.num_epochs

    model.train(), guide.train()
    watch = DivergenceWatch(training.learning_rate)
    for epoch in range(start_epoch + 1, num_epochs + 1):
        start = time.perf_counter()
        total, steps = 0.0, 0
        bar = tqdm(total=num_batches, desc=f"epoch {epoch}/{num_epochs}", unit="batch",
                   disable=not progress, leave=False, dynamic_ncols=True)
        for x in train.batches(batch_size, shuffle=True, drop_last=drop_last):
            scaler.weight = kl_weight(training.kl_warmup_epochs, epoch, steps + 1, num_batches)
            with watch.step(epoch, steps + 1, (model, guide)):
                loss = _step(svi, x, num_data, training.jit,
                             first=steps == 0 and epoch == start_epoch + 1)
                watch.check(-loss / num_data)
            total += loss
            steps += 1
            bar.update()
            if steps % 10 == 0 or steps == num_batches:
                bar.set_postfix_str(f"ELBO {-total / steps / num_data:.2f} nats/point")
        bar.close()
        seconds = time.perf_counter() - start
        train_elbo = -total / steps / num_data
        validation_elbo = mean_elbo(model, guide, dataset.validation)
        metrics.append({"epoch": epoch, "train_elbo": train_elbo,
                        "validation_elbo": validation_elbo, "kl_weight": scaler.weight,
                        "seconds": seconds})
        improved = validation_elbo > best["validation_elbo"]
        if improved:
            best = {"epoch": epoch, "validation_elbo": validation_elbo}
        # The checkpoint is the epoch's commit point; best.pt and the rest follow from it, and
        # run_folder.repair restores them from it after a crash (see inference/run_folder.py).
        save_checkpoint(os.path.join(out_dir, LAST), config=config, model=model, guide=guide,
                        optimizer=optimizer, epoch=epoch, metrics=metrics, best=best,
                        rng=rng_state())
        if improved:
            atomic_copy(os.path.join(out_dir, LAST), os.path.join(out_dir, BEST))
        write_metrics(out_dir, metrics)
        if after_epoch is not None:
            after_epoch(out_dir, metrics)
        log(f"epoch {epoch:3d}/{num_epochs}  train ELBO {train_elbo:9.3f}  validation ELBO "
            f"{validation_elbo:9.3f}  ({seconds:.1f} s){'  *best*' if improved else ''}")
    return _summarize(model, guide, dataset, config, out_dir, metrics, best)


class TrainingDiverged(ValueError):
    """The training objective or the parameters left the finite numbers, or ran away."""


class DivergenceWatch:
    """Stops a run whose training objective runs away: a non-finite loss or parameters, or an
    ELBO per data point below ``factor`` times the first one seen (which, at the start of
    training, is already as bad as an untrained model gets)."""

    def __init__(self, learning_rate, factor=100.0):
        self.learning_rate, self.factor = learning_rate, factor
        self.first = None
        self.where = (0, 0)

    @contextlib.contextmanager
    def step(self, epoch, step, modules):
        self.where = (epoch, step)
        try:
            yield
        except ValueError as error:
            # Pyro's validation refuses the non-finite parameters of a diverged model.
            finite = all(torch.isfinite(p).all() for module in modules
                         for p in module.parameters())
            if self.first is None or finite:
                raise
            self._stop(f"the parameters became non-finite ({type(error).__name__})")

    def check(self, elbo_per_point):
        if not math.isfinite(elbo_per_point):
            self._stop(f"the training objective became {elbo_per_point}")
        if self.first is None:
            self.first = elbo_per_point
        elif elbo_per_point < self.factor * min(self.first, -1.0):
            self._stop(f"the training ELBO fell to {elbo_per_point:.3g} nats per data point, "
                       f"from {self.first:.3g} at the start")

    def _stop(self, what):
        epoch, step = self.where
        raise TrainingDiverged(
            f"training diverged in epoch {epoch} (step {step}): {what}; lower --learning-rate "
            f"(now {self.learning_rate:g}) and train again (files of finished epochs are "
            "intact)")


def _step(svi, x, num_data, jit, first):
    if not (first and jit):
        return svi.step(x, num_data=num_data)
    try:
        return svi.step(x, num_data=num_data)
    except Exception as error:
        raise ValueError(
            f"--jit could not trace this model and guide ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); run without --jit") from error


def _summarize(model, guide, dataset, config, out_dir, metrics, best):
    """Score the best-on-validation parameters on the test split and write summary.json."""
    from inference.checkpoint import load_checkpoint, load_state

    best_checkpoint = load_checkpoint(os.path.join(out_dir, BEST), trust=True,
                                      map_location=next(model.parameters()).device)
    with torch.random.fork_rng(devices=[]):
        # Restore afterwards so that scoring does not perturb the generator state of the run.
        load_state(model, best_checkpoint["model"], "model", best_checkpoint["path"])
        load_state(guide, best_checkpoint["guide"], "guide", best_checkpoint["path"])
        test_elbo = mean_elbo(model, guide, dataset.test)
    summary = {
        "test_elbo": test_elbo,
        "best_epoch": best["epoch"],
        "best_validation_elbo": best["validation_elbo"],
        "epochs": len(metrics),
        "seconds_per_epoch": sum(row["seconds"] for row in metrics) / max(1, len(metrics)),
        "num_train": len(dataset.train),
        "num_test": len(dataset.test),
    }
    atomic_write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary

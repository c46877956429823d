"""Train and score a model by a published protocol: one command per row of a paper's table.

The presets follow Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders",
section 5 and Table 1 (MNIST, one stochastic layer):

- two deterministic layers of 200 tanh units in the encoder and the decoder, z_dim 50,
  a Bernoulli likelihood on logits, a diagonal Gaussian guide, a N(0, I) prior;
- dynamic binarization of the training images (a fresh Bernoulli draw each time an image is
  used), all 60,000 training images (no validation split: the last epoch is the result);
- Adam with beta1 0.9, beta2 0.999, eps 1e-4, batch 20, and the learning rate
  1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7: 3,280 epochs in all;
- ``burda-vae`` trains with the ELBO (k = 1), ``burda-iwae5`` and ``burda-iwae50`` with the
  importance-weighted bound at k = 5 and 50;
- scored by importance sampling with the guide as proposal, K = 5000, on all 10,000 test
  images (and, beside it, the defensive mixture at the same K, which checks each image's
  estimate for a mode the guide misses: the verdicts and recommended values of
  :mod:`evaluation.verdicts`).

A ``-short`` preset (``burda-vae-short``, ...) is the same protocol with the schedule laid over
400 epochs in proportion (the stages keep their 1 : 3 : 9 ... lengths; those shorter than an
epoch fall away), the budget of one to two hours on two CPU cores. A ``-batch100`` preset takes
batch 100 and lays the schedule over 2,000 epochs: as many updates as ``-short``, each on five
times the images, in about 1.6 hours on one CPU thread. Any training flag given
explicitly (``--num-epochs``, ``--prior vamp``, ``--guide iaf``, ...) overrides the preset, so
the same protocol scores other priors and guides.

Deviations from the paper, also in docs/reproducing.md: the test images are binarized once with a
fixed seed (the same draw for every run, so runs can be compared point by point); weights are
initialized as torch initializes ``nn.Linear``, not as in the paper's code; the guide's standard
deviation is softplus(.) + a small floor, not exp(.).

Along the run, at the epochs of ``--curve-epochs``, the model is scored by importance sampling
(``--curve-samples`` K on the first ``--curve-data`` test images) into ``curve.csv`` in the run
folder: the learning curve. When the last epoch is done, the final score is written to
``test-importance.json`` and ``.csv`` (per image) in the run folder. ``--time-budget`` ends the
training at an epoch boundary; run the same command with ``--resume`` to continue::

    python scripts/reproduce.py burda-vae-short --out runs/burda-vae --data-dir ../data
    python scripts/reproduce.py burda-iwae5-short --out runs/burda-iwae5 --time-budget 60
    python scripts/reproduce.py burda-iwae5-short --out runs/burda-iwae5 --resume
"""

import csv
import io
import os
import time

import pyro
import torch

from evaluation.estimators import estimate
from evaluation import command_line as cli
from evaluation.command_line import parsers
from evaluation.command_line.parsers import PRESETS   # the flags of train.py each preset sets
from evaluation.reporting import plots
from evaluation.reporting.scoring import csv_path, score_run
from models.utilities.entry_points import entry_point
from models.base.config import ConfigError
from models.utilities.files import atomic_write_text, refuse_to_overwrite

#: the published test log-likelihoods (nats; K = 5000 on the 10,000 test images), Table 1
PUBLISHED = {"burda-vae": -86.76, "burda-iwae5": -85.54, "burda-iwae50": -84.78}

CURVE_FIELDS = ("epoch", "num_samples", "num_data", "log_px_mean", "log_px_data_stderr",
                "log_px_mc_stderr", "seconds")
FINAL = "test-importance.json"


def read_curve(path):
    """{epoch: row} of a curve.csv (empty if there is none yet)."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as handle:
        return {int(row["epoch"]): row for row in csv.DictReader(handle)}


def write_curve(path, rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CURVE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for epoch in sorted(rows):
        writer.writerow(rows[epoch])
    atomic_write_text(path, buffer.getvalue())


class LearningCurve:
    """The hook after each epoch that scores the model at the chosen epochs.

    It runs after the epoch's checkpoint is written, on the model in that state, with its own
    random numbers (seeded by the run's seed and the epoch), so that it changes nothing in the
    training: a run with a curve ends where a run without one ends. A crash before the row is
    written is repaired on ``--resume``, which calls the hook again for the checkpoint's epoch.
    """

    def __init__(self, epochs, num_samples, num_data, log=print):
        self.epochs, self.num_samples, self.num_data, self.log = set(epochs), num_samples, \
            num_data, log

    def __call__(self, out_dir, metrics, model, guide, dataset, config):
        epoch = metrics[-1]["epoch"]
        last = epoch == config.training.num_epochs
        path = os.path.join(out_dir, "curve.csv")
        rows = read_curve(path)
        if not (epoch in self.epochs or last) or epoch in rows:
            return
        x, _ = dataset.select("test", min(self.num_data, len(dataset.test)))
        was_training = model.training
        model.eval(), guide.eval()
        devices = [x.device] if x.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                pyro.set_rng_seed(config.seed * 100003 + epoch)
                result = estimate("importance", model, guide, x, self.num_samples)
        finally:
            model.train(was_training), guide.train(was_training)
        summary = result.summary()
        rows[epoch] = {"epoch": epoch, "num_samples": self.num_samples,
                       "num_data": summary["num_data"], "log_px_mean": summary["log_px_mean"],
                       "log_px_data_stderr": summary["log_px_data_stderr"],
                       "log_px_mc_stderr": summary["log_px_stderr"],
                       "seconds": result.seconds}
        write_curve(path, rows)
        self.log(f"learning curve, epoch {epoch}: log p(x) {summary['log_px_mean']:.3f} "
                 f"(K={self.num_samples}, {summary['num_data']} test images, "
                 f"{result.seconds:.0f} s)")


def default_curve_epochs(num_epochs):
    """1, 2, 5, 10, 20, 50, ... up to ``num_epochs``, and the last epoch."""
    epochs, scale = [], 1
    while scale <= num_epochs:
        epochs += [e for e in (scale, 2 * scale, 5 * scale) if e <= num_epochs]
        scale *= 10
    return sorted(set(epochs + [num_epochs]))


def apply_preset(args):
    """Fill every training flag the user did not give with the preset's value."""
    for dest, value in PRESETS[args.preset].items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)


def _main(args):
    with cli.processes(args) as group:
        return reproduce(args, group)


def reproduce(args, group=None):
    """Train and score as the preset and ``args`` say (shared among a ``group`` of processes
    under ``torchrun``)."""
    cli.check_positive(args, "curve_samples", "curve_data", "eval_samples", "eval_data")
    apply_preset(args)
    if args.out is None:
        raise ConfigError("give the run folder with --out")
    cli.check_positive(args, "num_epochs")
    if args.curve_epochs is not None and not args.curve_epochs:
        raise ConfigError("--curve-epochs names no epoch; give epochs comma-separated (e.g. "
                          "1,10,100) or drop the flag for the default (1,2,5,10,... and the last)")
    curve_epochs = args.curve_epochs or default_curve_epochs(args.num_epochs)
    if min(curve_epochs) < 1:
        raise ConfigError(f"--curve-epochs must be positive epochs, got {curve_epochs}")
    beyond = sorted(epoch for epoch in set(curve_epochs) if epoch > args.num_epochs)
    if beyond:
        raise ConfigError(f"--curve-epochs asks for epoch{'s' if len(beyond) > 1 else ''} "
                          f"{','.join(map(str, beyond))}, beyond the last (--num-epochs "
                          f"{args.num_epochs}), which would never be scored; drop "
                          f"{'them' if len(beyond) > 1 else 'it'} or raise --num-epochs")
    curve = LearningCurve(curve_epochs, args.curve_samples, args.curve_data)
    budget = cli.time_budget(args)
    start = time.perf_counter()
    with cli.open_training(args, group) as run:
        def after_epoch(out_dir, metrics):
            plots.training_curves(metrics, os.path.join(out_dir, "elbo.png"))
            curve(out_dir, metrics, run.model, run.guide, run.dataset, run.config)

        summary = run.fit(progress=not args.no_progress, after_epoch=after_epoch,
                          time_budget=budget)
    print(f"trained {summary['epochs']} epochs in this folder "
          f"({(time.perf_counter() - start) / 60:.1f} minutes in this call)")
    if summary["epochs"] < args.num_epochs:
        print(f"the run stopped after epoch {summary['epochs']} of {args.num_epochs}; run the "
              "same command with --resume to continue, and the final score follows the last "
              "epoch")
        return summary
    final = os.path.join(args.out, FINAL)
    done = os.path.exists(final) and not args.overwrite
    if group is not None:
        done = group.broadcast(done)
    if done:
        print(f"{final} holds the final score already")
        return summary
    score(args, final, group)
    return summary


def score(args, final, group=None):
    """The final score of the run in ``--out``: importance sampling with K ``--eval-samples``
    on the first ``--eval-data`` test images, beside the defensive mixture at the same K that
    checks it for missed modes (:mod:`evaluation.verdicts`), written to ``final`` (and the
    per-image CSV, with the verdicts and the recommended values)."""
    if group is None or group.is_main:
        refuse_to_overwrite([final, csv_path(final)], args.overwrite)
    opened = cli.open_run(args, path=args.out, group=group)
    opened.x, opened.labels = opened.dataset.select("test", args.eval_data)
    return score_run(opened, ["importance", "mixture"], args.eval_samples, run=args.out,
                     split="test", seed=args.seed if args.seed is not None else 0, out=final,
                     progress=not args.no_progress, group=group)


make_parser = parsers.reproduce   # the name the tests build this parser by
main = entry_point(_main, parsers.reproduce)


if __name__ == "__main__":
    main()

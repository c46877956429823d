"""Train a VAE by SVI: the generative story as a Pyro model, the encoder as its guide.

Examples::

    python scripts/train.py --dataset mnist-subset --num-epochs 5 --out runs/demo
    python scripts/train.py --data-dir ../data --num-epochs 10 --z-dim 50
    python scripts/train.py --out runs/demo --resume --num-epochs 20
    python scripts/train.py --dataset mnist-subset --prior my_priors:StudentT --prior-option df=3
"""

import os
import time

from evaluation import command_line as cli
from evaluation.reporting import plots
from models.utilities.entry_points import entry_point


def draw_curves(out_dir, metrics):
    plots.training_curves(metrics, os.path.join(out_dir, "elbo.png"))


def _main(args):
    with cli.processes(args) as group:
        return run_training(args, group)


def run_training(args, group=None):
    """Train as ``args`` say, in this process or in a ``group`` of processes (the first one
    holds the run folder): the flags become the changes of :mod:`inference.run_life`."""
    budget = cli.time_budget(args)
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = os.path.join("runs", f"{args.dataset or 'mnist'}-z{args.z_dim or 50}-{stamp}")
    with cli.open_training(args, group) as run:
        return run.fit(progress=not args.no_progress, after_epoch=draw_curves,
                       time_budget=budget)


def make_parser():
    return cli.make_training_parser(
        "Train a VAE (Pyro model + amortized guide) by SVI with Trace_ELBO.", __file__)


main = entry_point(_main, make_parser)


if __name__ == "__main__":
    main()

"""What ``train.py`` and ``explore.py`` do once their flags are parsed, as functions of those
flags, so that the tutorial (and a user's own script) runs the very same steps without
importing a script."""

import os
import time

from evaluation.command_line.config_flags import estimator_names
from evaluation.command_line.flags import check_positive
from evaluation.command_line.opening import open_run, open_training, time_budget
from evaluation.reporting import exploration, plots
from models.base.config import ConfigError


def draw_curves(out_dir, metrics):
    """Redraw ``elbo.png`` of a run folder from its metrics (after every epoch)."""
    plots.training_curves(metrics, os.path.join(out_dir, "elbo.png"))


def train(args, group=None):
    """Train as ``train.py``'s flags ``args`` say, in this process or in a ``group`` of
    processes (the first one holds the run folder): the flags become the changes of
    :mod:`inference.run_life`. Without ``--out``, the run folder is runs/DATASET-zZ-STAMP.
    Returns the run's summary."""
    budget = time_budget(args)
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = os.path.join("runs", f"{args.dataset or 'mnist'}-z{args.z_dim or 50}-{stamp}")
    with open_training(args, group) as run:
        return run.fit(progress=not args.no_progress, after_epoch=draw_curves,
                       time_budget=budget)


def check_explore_flags(args):
    """Refuse ``explore.py``'s flags that cannot work, before anything is opened or written (so
    that a refused command leaves no files behind that would block its corrected rerun); those
    that need the run are checked by :func:`evaluation.reporting.exploration.explore` once it
    is open, before it writes. Returns the estimators of the report's table."""
    check_positive(args, "num_data", "num_prior_samples", "num_samples", "eval_data",
                   "ais_steps")
    if args.evaluation and args.estimator:
        raise ConfigError("--estimator chooses the estimators of the report's table, which "
                          "--evaluation takes from a file instead; give one of them")
    names = estimator_names(args, default=exploration.DEFAULT_ESTIMATORS)
    exploration.check_settings(args.convergence_k, args.z)
    return names


def explore(args):
    """Draw the figures and write the report of a trained run as ``explore.py``'s flags
    ``args`` say; returns the facts behind the figures."""
    names = check_explore_flags(args)
    table = exploration.read_evaluation(args.evaluation) if args.evaluation else None
    opened = open_run(args)
    return exploration.explore(
        opened, exploration.run_folder(args.run), args.out, index=args.index, z=args.z,
        directions=args.directions, num_data=args.num_data,
        num_prior_samples=args.num_prior_samples, convergence_k=args.convergence_k,
        ais_steps=args.ais_steps, estimators=names, num_samples=args.num_samples,
        eval_data=args.eval_data, table=table, seed=args.seed or 0,
        progress=not args.no_progress, overwrite=args.overwrite)

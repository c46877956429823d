"""Train a VAE by SVI: the generative story as a Pyro model, the encoder as its guide.

Examples::

    python scripts/train.py --dataset mnist-subset --num-epochs 5 --out runs/demo
    python scripts/train.py --data-dir ../data --num-epochs 10 --z-dim 50
    python scripts/train.py --out runs/demo --resume --num-epochs 20
    python scripts/train.py --dataset mnist-subset --prior my_priors:StudentT --prior-option df=3
"""

import json
import os
import time

import pyro

from evaluation.reporting import cli, plots
from inference.build import build, resolve
from inference.checkpoint import LAST, custom_parts, load_checkpoint, load_state, run_folder_of
from inference.data import default_data_dir, load_dataset, resolve_binarize
from inference.run_folder import RunFolder
from inference.training import fit
from models.base.cli import entry_point
from models.base.config import ConfigError, RunConfig
from models.base.device import resolve_device
from models.base.registry import refuse_imports_from


def make_config(args):
    """The configuration of a new run: the defaults with the flags the user gave."""
    config = resolve(RunConfig().updated(cli.config_changes(args, RunConfig())))
    return config.updated({"data.binarize": resolve_binarize(config),
                           "data.data_dir": config.data.data_dir or default_data_dir()})


def read_config(path, trust):
    """The configuration in a run folder's config.json, checked like a checkpoint's (a part
    that names code to import needs ``trust``), and the run's identity (None for a run begun
    before runs had one)."""
    try:
        with open(path) as handle:
            data = json.load(handle)
        run = data.pop("run", None) if isinstance(data, dict) else None
        if run is not None and not isinstance(run, str):
            raise ValueError(f"its run identity is {run!r}, not a string")
        config = RunConfig.from_dict(data)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path} is not a readable run configuration ({error}); pass "
                          "--overwrite to start afresh") from error
    untrusted = [name for _, name in custom_parts(config) if not (trust is True or name in trust)]
    if untrusted:
        raise ConfigError(f"{path} names code to import ({', '.join(untrusted)}); pass "
                          "--trust-run if the run is yours")
    with refuse_imports_from(run_folder_of(path)):
        return resolve(config), run


def draw_curves(out_dir, metrics):
    plots.training_curves(metrics, os.path.join(out_dir, "elbo.png"))


def _main(args):
    with cli.processes(args) as group:
        return run_training(args, group)


def run_training(args, group=None, after_epoch=None):
    """Train as ``args`` say, in this process or in a ``group`` of processes (the first one
    holds the run folder)."""
    cli.start(args, group)
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = os.path.join("runs", f"{args.dataset or 'mnist'}-z{args.z_dim or 50}-{stamp}")
    if group is not None:
        args.out = group.broadcast(args.out)
    if group is None or group.is_main:
        with RunFolder(args.out) as folder:
            return train(args, folder, after_epoch, group)
    return train(args, None, after_epoch, group)


def open_training(args, folder):
    """(config, checkpoint or None, run identity or None) of the run in ``folder`` as ``args``
    say: a new run, a restart of one that finished no epoch, or a resumed one."""
    last = folder.file(LAST)
    checkpoint = run = None
    how = folder.start(args.resume, args.overwrite)
    if how == "resume":
        checkpoint = load_checkpoint(last, prefer=LAST, trust=cli.trusted_parts(args))
        stored = checkpoint["config"]
        config = cli.resumed_config(stored, cli.config_changes(args, stored))
    elif how == "restart":
        print(f"{args.out} holds a run that finished no epoch; starting it again")
        stored, run = read_config(folder.file("config.json"), cli.trusted_parts(args))
        config = cli.resumed_config(stored, cli.config_changes(args, stored))
    else:
        if args.resume:
            print(f"no checkpoint in {args.out} yet; starting a new run there")
        config = make_config(args)
    return config, checkpoint, run


def train(args, folder, after_epoch=None, group=None):
    """Train into ``folder`` (held by this process; None in the other processes of a
    ``group``) as ``args`` say.

    :param after_epoch: also called as ``after_epoch(out_dir, metrics, model, guide, dataset,
        config)`` once each epoch's files are written (and, on ``--resume``, once for the epoch
        of the checkpoint), with the model and guide in the state of that epoch.
    """
    if args.time_budget is not None and not 0 < args.time_budget < float("inf"):
        raise ConfigError(f"--time-budget must be a positive number of minutes, got "
                          f"{args.time_budget}")
    config = checkpoint = run = None
    if folder is not None:
        config, checkpoint, run = open_training(args, folder)
    if group is not None:
        # The first process read the run folder; the others take its reading (as plain data).
        if checkpoint is not None:
            checkpoint = dict(checkpoint, config=checkpoint["config"].to_dict())
        config, checkpoint = group.broadcast((config and config.to_dict(), checkpoint))
        config = resolve(RunConfig.from_dict(config))
        if checkpoint is not None:
            checkpoint["config"] = RunConfig.from_dict(checkpoint["config"])
    pyro.set_rng_seed(config.seed)
    device = resolve_device(config.device) if group is None else group.device
    dataset = load_dataset(config, device)
    config = resolve(config.updated({"model.x_dim": dataset.x_dim,
                                     "model.image_shape": dataset.image_shape}))
    model, guide = build(config)
    model, guide = model.to(device), guide.to(device)
    if checkpoint is not None:
        where = checkpoint.get("path", args.out)
        load_state(model, checkpoint["model"], "model", where)
        load_state(guide, checkpoint["guide"], "guide", where)
    training = config.training
    processes = "" if group is None else f" in {group.size} processes"
    print(f"training on {device}{processes}: {len(dataset.train)} {dataset.name} points "
          f"({config.data.binarize} binarization), z_dim={config.model.z_dim}, "
          f"{training.num_epochs} epochs of minibatches of {training.batch_size}")

    def finished_epoch(out_dir, metrics):
        draw_curves(out_dir, metrics)
        if after_epoch is not None:
            after_epoch(out_dir, metrics, model, guide, dataset, config)

    summary = fit(model, guide, dataset, config, args.out, checkpoint=checkpoint,
                  progress=not args.no_progress, after_epoch=finished_epoch,
                  time_budget=None if args.time_budget is None else 60 * args.time_budget,
                  group=group, run_id=run)
    print(f"test ELBO {summary['test_elbo']:.3f} nats per data point "
          f"({summary['num_test']} test points, best epoch {summary['best_epoch']} of "
          f"{summary['epochs']}, {summary['seconds_per_epoch']:.1f} s per epoch)")
    if folder is not None:
        files = sorted(name for name in os.listdir(args.out) if not name.startswith("."))
        print(f"files in {args.out}: {', '.join(files)}")
    return summary


def make_parser():
    parser = cli.make_parser(
        "Train a VAE (Pyro model + amortized guide) by SVI with Trace_ELBO.", __file__)
    cli.add_data_flags(parser)
    cli.add_model_flags(parser)
    group = cli.add_training_flags(parser)
    group.add_argument("--out", default=None,
                       help="run folder (default: runs/<dataset>-z<z-dim>-<time>)")
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last checkpoint")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the files of an earlier run in --out")
    group.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                       help="stop at the end of the last epoch that fits in this many minutes, "
                       "with every file written; --resume continues")
    group.add_argument("--trust-run", action="store_true",
                       help="allow the resumed run's own parts (module:Class) to be imported; "
                       "naming a part again (--prior my_parts:StudentT) allows that one")
    cli.add_common_flags(parser)
    return parser


main = entry_point(_main, make_parser)


if __name__ == "__main__":
    main()

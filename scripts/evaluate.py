"""Estimate log p(x) per data point for a trained run, with standard errors and diagnostics.

Examples::

    python scripts/evaluate.py runs/demo --estimator elbo,importance,prior --num-samples 1000
    python scripts/evaluate.py runs/mnist-z50 --estimator importance --num-samples 5000 \\
        --num-data 1000 --out results/mnist-z50.json
    python scripts/evaluate.py runs/z2 --estimator ais,quadrature --ais-steps 1000 --bdmc 20
    python scripts/evaluate.py runs/demo --guide local --local-steps 500 --num-data 200

It prints a table and writes a JSON file of per-estimator summaries and, beside it, a CSV with one
row per data point and estimator (index, label, estimate, stderr, ess, khat).

With ``--guide local`` the run's encoder is replaced by per-point variational parameters fitted
on the evaluation points themselves (warm-started from the encoder); the estimators then use that
guide, and the report adds the gap decomposition of Cremer et al. (2018): log p(x) - ELBO =
approximation gap + amortization gap.
"""

import os
import time

import pyro
import torch

from evaluation.ais import bdmc
from evaluation.estimators import ESTIMATORS, estimate, options_for
from evaluation.gaps import gap_decomposition, summarize_gaps
from evaluation.reporting import cli
from evaluation.reporting.tables import csv_text, per_point_rows, render
from inference.local import fit_local_guide
from models.base.cli import entry_point
from models.base.config import ConfigError
from models.base.io import atomic_write_json, atomic_write_text, refuse_to_overwrite
from models.base.registry import option_defaults

#: the flags of the local fit and the parameters of fit_local_guide they set, whose defaults
#: are fit_local_guide's
LOCAL_FLAGS = {"local_steps": "num_steps", "local_learning_rate": "learning_rate",
               "local_particles": "num_particles"}
LOCAL_DEFAULTS = option_defaults(fit_local_guide, ("model", "guide", "x", "progress"))[0]


def check_local_flags(args):
    """Refuse settings of the local fit that cannot fit anything, before any work: fewer than
    one step or particle, or a step size that is not a positive finite number."""
    cli.check_positive(args, "local_steps", "local_particles")
    rate = getattr(args, "local_learning_rate", None)
    if rate is not None and not 0 < rate < float("inf"):
        raise ConfigError(f"--local-learning-rate must be a positive finite number, got {rate}")


def local_guide(args, opened):
    """The guide the estimators use: the run's own, or a local guide fitted on the points."""
    own = opened.config.model.guide.name
    if args.guide in (None, own):
        given = [cli.flag(name) for name in LOCAL_FLAGS if getattr(args, name) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to --guide local; add it or drop them")
        return opened.guide, None
    if args.guide != "local":
        raise ConfigError(f"evaluate.py scores the run's own guide ({own}) or a local guide "
                          f"fitted on the evaluation points (--guide local), not --guide "
                          f"{args.guide}")
    settings = {parameter: LOCAL_DEFAULTS[parameter] if getattr(args, name) is None
                else getattr(args, name) for name, parameter in LOCAL_FLAGS.items()}
    steps = settings["num_steps"]
    pyro.set_rng_seed(0 if args.seed is None else args.seed)
    guide, history = fit_local_guide(opened.model, opened.guide, opened.x, **settings,
                                     progress=not args.no_progress)
    print(f"fitted the local guide on {opened.x.shape[0]} points: {steps} Adam steps, mean ELBO "
          f"{history[0] if history else float('nan'):.3f} -> "
          f"{history[-1] if history else float('nan'):.3f}")
    return guide, steps


def _main(args):
    with cli.processes(args) as group:
        return evaluate(args, group)


def evaluate(args, group=None):
    """Score the run as ``args`` say, in this process or shared among a ``group`` of them (the
    first one prints and writes)."""
    main = group is None or group.is_main
    names = cli.estimator_names(args, default=("elbo", "importance"))
    cli.check_positive(args, "num_samples", "num_data", "ais_chains")
    check_local_flags(args)
    if args.bdmc is not None and args.bdmc < 0:
        raise ConfigError(f"--bdmc must be 0 or more, got {args.bdmc}")
    options = cli.estimator_options(args, names, also=("ais",) if args.bdmc else ())
    if group is not None and args.guide == "local":
        raise ConfigError("--guide local fits a guide to the points in one process; run it "
                          "without torchrun")
    if args.out and main:
        refuse_to_overwrite([args.out, csv_path(args.out)], args.overwrite)
    # Only the first process reads the run (the others may be on machines without it).
    opened = cli.open_run(args, device=cli.start(args, group), group=group)
    model, x, seed = opened.model, opened.x, 0 if args.seed is None else args.seed
    print(f"{opened.path}: {opened.config.data.dataset} {args.split} split, {x.shape[0]} data "
          f"points, z_dim={opened.config.model.z_dim}, on {opened.device}")
    guide, local_steps = local_guide(args, opened)
    summaries, rows = [], []
    for name in names:
        pyro.set_rng_seed(seed)  # each estimator's numbers do not depend on the others
        result = estimate(name, model, guide, x, cli.num_samples_for(name, args),
                          progress=not args.no_progress and main, group=group,
                          **options_for(name, options))
        summaries.append(result.summary())
        rows += per_point_rows(result, opened.labels)
    print(render(summaries))
    for s in summaries:
        if s["num_flagged"]:
            print(f"{s['estimator']}: {s['num_flagged']} of {s['num_data']} data points have "
                  "Pareto k-hat > 0.7; their estimates cannot be trusted")
    report = {"run": args.run, "checkpoint": opened.path, "split": args.split, "seed": seed,
              "num_data": int(x.shape[0]), "device": str(opened.device),
              "config": opened.config.to_dict(), "guide": args.guide or "run",
              "estimators": summaries, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if local_steps is not None:
        pyro.set_rng_seed(seed)
        gaps = summarize_gaps(gap_decomposition(model, opened.guide, guide, x, args.num_samples))
        report["gaps"] = dict(gaps, local_steps=local_steps, num_samples=args.num_samples)
        print(format_gaps(gaps, args.num_samples))
    if args.bdmc and main:   # simulated points: the first process alone
        pyro.set_rng_seed(seed)
        ais = {**ESTIMATORS.options("ais"), **options_for("ais", options)}
        chains = cli.num_samples_for("ais", args)
        with torch.no_grad():
            sandwich = bdmc(model, args.bdmc, chains, num_steps=ais["ais_steps"],
                            num_leapfrog=ais["ais_leapfrog"], step_size=ais["ais_step_size"],
                            target_accept=ais["ais_target_accept"],
                            schedule=ais["ais_schedule"])
        report["bdmc"] = {key: sandwich[key].mean().item() for key in ("lower", "upper", "gap")}
        report["bdmc"].update(num_data=args.bdmc, ais_chains=chains, ais_steps=ais["ais_steps"])
        print(f"BDMC on {args.bdmc} points simulated from the model: forward AIS "
              f"{report['bdmc']['lower']:.3f} <= log p(x) <= reverse AIS "
              f"{report['bdmc']['upper']:.3f} (gap {report['bdmc']['gap']:.3f} nats)")
    if args.out and main:
        atomic_write_json(args.out, report)
        table = csv_path(args.out)
        atomic_write_text(table, csv_text(rows))
        print(f"wrote {args.out} and {table}")
    return report


def csv_path(json_path):
    """The per-point CSV written beside the JSON summary."""
    return os.path.splitext(json_path)[0] + ".csv"


def format_gaps(gaps, num_samples):
    def cell(name):
        return f"{gaps[name]:9.3f} +- {gaps[name + '_stderr']:.3f}"

    return "\n".join([
        f"gap decomposition (Cremer et al. 2018; log p(x) by importance sampling with the local "
        f"guide, K={num_samples}):",
        f"  log p(x)                      {cell('log_px')}",
        f"  ELBO, encoder                 {cell('elbo_amortized')}",
        f"  ELBO, local guide             {cell('elbo_local')}",
        f"  inference gap                 {cell('inference_gap')}",
        f"  = approximation gap           {cell('approximation_gap')}",
        f"  + amortization gap            {cell('amortization_gap')}",
    ])


def make_parser():
    parser = cli.make_parser("Estimate log p(x) per data point for a trained run.", __file__)
    parser.add_argument("run", help="a run folder (its best.pt is used) or a checkpoint file")
    group = cli.add_evaluation_flags(parser, default_estimators=("elbo", "importance"))
    group.add_argument("--bdmc", type=int, default=None, metavar="N",
                       help="also run BDMC on N points simulated from the model")
    group.add_argument("--out", default=None,
                       help="write the summary JSON here and the per-point CSV beside it")
    local = parser.add_argument_group("guide")
    local.add_argument("--guide", default=None,
                       help="the guide of the estimators: the run's own (default) or local, "
                       "per-point parameters fitted on the evaluation points, with the gap "
                       "decomposition")
    for name, what in (("local_steps", "Adam steps"), ("local_learning_rate", "Adam step size"),
                       ("local_particles", "draws of z per point and step")):
        default = LOCAL_DEFAULTS[LOCAL_FLAGS[name]]
        local.add_argument(cli.flag(name), type=type(default), default=None,
                           help=f"{what} of the local fit (default: {default})")
    cli.add_opened_run_flags(parser, estimator_options=True)
    return parser


main = entry_point(_main, make_parser)


if __name__ == "__main__":
    main()

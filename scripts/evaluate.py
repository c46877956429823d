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

from evaluation import command_line as cli
from evaluation.command_line import parsers
from evaluation.command_line.parsers import LOCAL_DEFAULTS, LOCAL_FLAGS
from evaluation.reporting.scoring import csv_path, score_run
from models.utilities.entry_points import entry_point
from models.base.config import ConfigError
from models.utilities.files import refuse_to_overwrite
from evaluation.verdicts import DEFAULT_ESTIMATORS


def check_local_flags(args):
    """Refuse settings of the local fit that cannot fit anything, before any work: fewer than
    one step or particle, or a step size that is not a positive finite number."""
    cli.check_positive(args, "local_steps", "local_particles")
    rate = getattr(args, "local_learning_rate", None)
    if rate is not None and not 0 < rate < float("inf"):
        raise ConfigError(f"--local-learning-rate must be a positive finite number, got {rate}")


def local_fit(args, opened):
    """The settings of the local guide to fit on the points (None: the run's own guide)."""
    own = opened.config.model.guide.name
    if args.guide in (None, own):
        given = [cli.flag(name) for name in LOCAL_FLAGS if getattr(args, name) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to --guide local; add it or drop them")
        return None
    if args.guide != "local":
        raise ConfigError(f"evaluate.py scores the run's own guide ({own}) or a local guide "
                          f"fitted on the evaluation points (--guide local), not --guide "
                          f"{args.guide}")
    return {parameter: LOCAL_DEFAULTS[parameter] if getattr(args, name) is None
            else getattr(args, name) for name, parameter in LOCAL_FLAGS.items()}


def _main(args):
    with cli.processes(args) as group:
        return evaluate(args, group)


def evaluate(args, group=None):
    """Score the run as ``args`` say, in this process or shared among a ``group`` of them (the
    first one prints and writes): the flags checked, the run opened, then
    :func:`evaluation.reporting.scoring.score_run`."""
    main = group is None or group.is_main
    names = cli.estimator_names(args, default=DEFAULT_ESTIMATORS)
    cli.check_positive(args, "num_samples", "num_data", *cli.own_sample_flags())
    check_local_flags(args)
    if args.bdmc is not None and args.bdmc < 0:
        raise ConfigError(f"--bdmc must be 0 or more, got {args.bdmc}")
    if args.bdmc_tolerance is not None:
        if not args.bdmc:
            raise ConfigError("--bdmc-tolerance calibrates AIS on points simulated by BDMC; give "
                              "--bdmc N as well")
        if not args.bdmc_tolerance > 0:
            raise ConfigError(f"--bdmc-tolerance must be a positive number of nats, got "
                              f"{args.bdmc_tolerance}")
    options = cli.estimator_options(args, names, also=("ais",) if args.bdmc else ())
    if group is not None and args.guide == "local":
        raise ConfigError("--guide local fits a guide to the points in one process; run it "
                          "without torchrun")
    if args.out and main:
        refuse_to_overwrite([args.out, csv_path(args.out)], args.overwrite)
    # Only the first process reads the run (the others may be on machines without it).
    opened = cli.open_run(args, device=cli.start(args, group), group=group)
    return score_run(opened, names, args.num_samples, sample_counts=cli.own_sample_counts(args),
                     run=args.run, split=args.split, options=options,
                     seed=0 if args.seed is None else args.seed,
                     local_fit=local_fit(args, opened), guide_name=args.guide or "run",
                     bdmc=args.bdmc, bdmc_tolerance=args.bdmc_tolerance, out=args.out,
                     progress=not args.no_progress, group=group)


make_parser = parsers.evaluate   # the name the tests build this parser by
main = entry_point(_main, parsers.evaluate)


if __name__ == "__main__":
    main()

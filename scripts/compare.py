"""Compare estimates of log p(x) across runs, estimators and numbers of samples K, with a verdict
per data point at each K and paired differences that say whether they hold.

Examples::

    python scripts/compare.py runs/z2 --estimator prior,importance,mixture,ais,quadrature \\
        --num-samples 1,10,100,1000,5000 --num-data 100 --out results/z2
    python scripts/compare.py runs/a runs/b --num-samples 10,100,1000

Writes to ``--out``: ``comparison.md`` (a Markdown table), ``comparison.csv`` (one row per run,
estimator and K, with the share of points whose estimate passes every check of
:mod:`evaluation.verdicts`), ``recommended.csv`` (per run and K, the mean of the per-point
recommended values), ``points.csv`` (per run, estimator and point at the largest K: the estimate,
whether it is trusted and why not, and the recommended value), ``convergence.png`` (log p-hat
against K with standard-error bands; estimators that do not take K, such as ``ais`` with
``--ais-chains`` chains, ``exact`` and ``quadrature``, are horizontal references),
``report.html`` and, for two or more runs, ``paired.csv`` and ``paired.png``: the per-data-point
difference between each run and the first, with its standard error, the same over the points
trusted in both runs and of the recommended values, and whether it holds
(:func:`evaluation.reporting.comparison.paired_verdict`). Without ``--estimator`` it runs
``elbo,importance,mixture``: the mixture is what checks importance sampling for missed modes.
The work is :mod:`evaluation.reporting.comparison`'s once the flags are checked and the runs
are open.
"""

import os

from evaluation import command_line as cli
from evaluation.command_line import parsers
from evaluation.reporting import comparison
from evaluation.verdicts import DEFAULT_ESTIMATORS
from models.base.config import ConfigError
from models.utilities.entry_points import entry_point
from models.utilities.files import refuse_to_overwrite


def _main(args):
    with cli.processes(args) as group:
        return compare(args, group)


def compare(args, group=None):
    """Score and compare the runs as ``args`` say, in this process or shared among a ``group``
    of processes (the first one prints and writes). Returns the rows of the estimates table
    (each run's estimators and its ``recommended`` rows) and those of paired.csv."""
    main = group is None or group.is_main
    names = cli.estimator_names(args, default=DEFAULT_ESTIMATORS)
    grid = sorted(set(args.num_samples))
    if not grid or min(grid) < 1:
        raise ConfigError(f"--num-samples needs positive integers, got {args.num_samples}")
    cli.check_positive(args, "num_data", *cli.own_sample_flags())
    options = cli.estimator_options(args, names)
    counts = cli.own_sample_counts(args)   # K of those whose K is a setting of their own
    if main:
        refuse_to_overwrite([os.path.join(args.out, name) for name in comparison.OUTPUTS],
                            args.overwrite)
    labels = comparison.run_labels(args.runs)
    device = cli.start(args, group)
    all_results, data, point_labels = {}, {}, {}
    for label, path in zip(labels, args.runs):
        print(f"{path}:")
        opened = cli.open_run(args, path, device, group)   # read by the first process alone
        all_results[label] = comparison.evaluate_run(
            opened, label, names, grid, counts, options,
            seed=0 if args.seed is None else args.seed, progress=not args.no_progress,
            group=group)
        data[label], point_labels[label] = opened.x, opened.labels
    comparison.check_same_points(data)
    result = comparison.compare_results(all_results, point_labels)
    if not main:
        return result.table_rows(), result.paired_rows
    table, files = comparison.write_outputs(args.out, args.runs, result)
    print(table)
    print(f"files in {args.out}: {', '.join(files)}")
    return result.table_rows(), result.paired_rows


make_parser = parsers.compare   # the name the tests build this parser by
main = entry_point(_main, parsers.compare)


if __name__ == "__main__":
    main()

"""Compare estimates of log p(x) across runs, estimators and numbers of samples K.

Examples::

    python scripts/compare.py runs/z2 --estimator prior,importance,ais,quadrature \\
        --num-samples 1,10,100,1000,5000 --num-data 100 --out results/z2
    python scripts/compare.py runs/a runs/b --estimator importance --num-samples 10,100,1000

Writes to ``--out``: ``comparison.md`` (a Markdown table), ``comparison.csv`` (one row per run,
estimator and K), ``convergence.png`` (log p-hat against K with standard-error bands; estimators
that do not take K, such as ``ais`` with ``--ais-chains`` chains, ``exact`` and ``quadrature``,
are horizontal references), ``report.html`` and, for two or more runs, ``paired.csv`` and
``paired.png``: the per-data-point difference between each run and the first, with its standard
error.
"""

import math
import os

import pyro
import torch

from evaluation.estimators import ESTIMATORS, estimate, options_for
from evaluation import command_line as cli
from evaluation.command_line import parsers
from evaluation.reporting import palette, plots
from evaluation.reporting.html import figure_html, page
from evaluation.reporting.tables import (ESTIMATE_COLUMNS, PAIRED_COLUMNS, RUN_COLUMN, Column,
                                         csv_text, render)
from models.utilities.entry_points import entry_point
from models.base.config import ConfigError
from models.utilities.files import atomic_write_text, refuse_to_overwrite

SUMMARY_FIELDS = ("run", "estimator", "num_samples", "num_data", "log_px_mean", "log_px_stderr",
                  "log_px_data_stderr", "ess_mean", "khat_frac_above_0_7", "seconds")
OUTPUTS = ("comparison.md", "comparison.csv", "convergence.png", "paired.csv", "paired.png",
           "report.html")
PAIRED_FIELDS = ("run", "baseline", "estimator", "num_samples", "num_data", "mean_difference",
                 "paired_stderr", "unpaired_stderr")


def run_label(path):
    return os.path.basename(os.path.normpath(path)) or path


def sampled_once(name):
    """Estimators scored once rather than on the K grid: those whose K is a setting of their own
    (ais: K = --ais-chains) and those that do not sample."""
    return ESTIMATORS.own_samples_of(name) is not None or not ESTIMATORS.uses_samples(name)


def evaluate_run(opened, label, names, grid, args, options, group=None):
    """{(estimator, K): Estimate} for one opened run (shared among a ``group`` of processes)."""
    results = {}
    seed = 0 if args.seed is None else args.seed
    for name in names:
        own = ESTIMATORS.own_samples_of(name)
        sizes = [cli.num_samples_for(name, args) if own is not None else 0] \
            if sampled_once(name) else grid
        for num_samples in sizes:
            pyro.set_rng_seed(seed)
            result = estimate(name, opened.model, opened.guide, opened.x, num_samples,
                              progress=not args.no_progress and (group is None or group.is_main),
                              group=group, **options_for(name, options))
            results[name, num_samples] = result
            print(f"  {label}  {name:<11} K={num_samples:<6} log p(x) "
                  f"{result.summary()['log_px_mean']:10.3f}  ({result.seconds:.1f} s)")
    return results


def paired(results, baseline, name, num_samples):
    """Mean per-point difference of two runs and its paired and unpaired standard errors."""
    a, b = results[name, num_samples].estimate, baseline[name, num_samples].estimate
    difference = a - b
    n = difference.numel()
    return {"mean_difference": difference.mean().item(),
            "paired_stderr": difference.std().item() / math.sqrt(n) if n > 1 else math.nan,
            "unpaired_stderr": math.sqrt(a.var().item() / n + b.var().item() / n)
            if n > 1 else math.nan,
            "num_data": n, "difference": difference}


def markdown(rows, paired_rows):
    text = render(rows, (RUN_COLUMN,) + ESTIMATE_COLUMNS, "markdown")
    if paired_rows:
        text += ("\nPaired per-data-point differences (run minus baseline, same data points):"
                 "\n\n" + render(paired_rows, PAIRED_COLUMNS, "markdown"))
    return text


def convergence_panels(all_results):
    """One panel per run: the K grid as curves, estimators scored once as references."""
    panels = []
    for label, results in all_results.items():
        curves, references = {}, []
        for (name, k), result in results.items():
            summary = result.summary()
            if sampled_once(name):
                own = ESTIMATORS.own_samples_of(name)
                references.append({"label": f"{name} ({k} {own.unit})" if own else name,
                                   "value": summary["log_px_mean"],
                                   "stderr": summary["log_px_stderr"],
                                   "colour": palette.estimator_colour(name)})
            else:
                curves.setdefault(name, []).append(
                    (k, summary["log_px_mean"], summary["log_px_stderr"]))
        panels.append({"title": label, "curves": curves, "references": references})
    return panels


def write_report(args, labels, rows, paired_rows):
    """report.html: the tables and plots of this comparison in one self-contained file."""
    runs = [{"run": label, "path": path} for label, path in zip(labels, args.runs)]
    run_columns = (RUN_COLUMN, Column("path", "path", str, text=True))
    sections = [("Runs", render(runs, run_columns, "html")),
                ("Estimates", render(rows, (RUN_COLUMN,) + ESTIMATE_COLUMNS, "html")
                 + figure_html(os.path.join(args.out, "convergence.png"),
                               "Mean log p-hat against K, +-2 standard errors."))]
    if paired_rows:
        sections.append(("Paired differences against the first run",
                         render(paired_rows, PAIRED_COLUMNS, "html")
                         + figure_html(os.path.join(args.out, "paired.png"),
                                       "Per-image differences against the first run.")))
    atomic_write_text(os.path.join(args.out, "report.html"),
                      page("Comparison of log p(x) estimates", sections))


def _main(args):
    with cli.processes(args) as group:
        return compare(args, group)


def compare(args, group=None):
    """Score and compare the runs as ``args`` say, in this process or shared among a ``group``
    of processes (the first one prints and writes)."""
    main = group is None or group.is_main
    names = cli.estimator_names(args, default=("importance",))
    grid = sorted(set(args.num_samples))
    if not grid or min(grid) < 1:
        raise ConfigError(f"--num-samples needs positive integers, got {args.num_samples}")
    cli.check_positive(args, "num_data", *cli.own_sample_flags())
    options = cli.estimator_options(args, names)
    if main:
        refuse_to_overwrite([os.path.join(args.out, name) for name in OUTPUTS], args.overwrite)
    labels = [run_label(path) for path in args.runs]
    if len(set(labels)) != len(labels):
        labels = [f"{i}:{label}" for i, label in enumerate(labels)]
    device = cli.start(args, group)
    all_results, data = {}, {}
    for label, path in zip(labels, args.runs):
        print(f"{path}:")
        opened = cli.open_run(args, path, device, group)   # read by the first process alone
        all_results[label] = evaluate_run(opened, label, names, grid, args, options, group)
        data[label] = opened.x
    rows = [{"run": label, **{key: result.summary()[key] for key in SUMMARY_FIELDS[1:]}}
            for label, results in all_results.items() for result in results.values()]

    paired_rows, paired_results = [], []
    baseline = labels[0]
    for label in labels[1:]:
        if data[label].shape != data[baseline].shape or \
                not torch.equal(data[label].cpu(), data[baseline].cpu()):
            raise ConfigError(f"runs {baseline} and {label} were scored on different data "
                              "points (another data set or binarization); a paired comparison "
                              "needs the same ones")
        for name in names:
            # Each estimator at its largest K, where its estimates are the sharpest.
            k = max(key[1] for key in all_results[label] if key[0] == name)
            result = paired(all_results[label], all_results[baseline], name, k)
            result.update(run=label, baseline=baseline, estimator=name, num_samples=k)
            paired_results.append(result)
            paired_rows.append({key: result[key] for key in PAIRED_FIELDS})
    if not main:
        return rows, paired_rows

    os.makedirs(args.out, exist_ok=True)
    table = markdown(rows, paired_rows)
    atomic_write_text(os.path.join(args.out, "comparison.md"), table)
    atomic_write_text(os.path.join(args.out, "comparison.csv"), csv_text(rows, SUMMARY_FIELDS))
    plots.convergence(convergence_panels(all_results), os.path.join(args.out, "convergence.png"),
                      suptitle="Mean log p-hat(x) against K (bands: +-2 Monte Carlo s.e.)")
    files = ["comparison.md", "comparison.csv", "convergence.png"]
    if paired_rows:
        atomic_write_text(os.path.join(args.out, "paired.csv"),
                          csv_text(paired_rows, PAIRED_FIELDS))
        plots.paired_differences(paired_results, os.path.join(args.out, "paired.png"))
        files += ["paired.csv", "paired.png"]
    write_report(args, labels, rows, paired_rows)
    files.append("report.html")
    print(table)
    print(f"files in {args.out}: {', '.join(files)}")
    return rows, paired_rows


make_parser = parsers.compare   # the name the tests build this parser by
main = entry_point(_main, parsers.compare)


if __name__ == "__main__":
    main()

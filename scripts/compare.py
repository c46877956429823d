"""Compare estimates of log p(x) across runs, estimators and numbers of samples K.

Examples::

    python scripts/compare.py runs/z2 --estimator prior,importance,ais,quadrature \\
        --num-samples 1,10,100,1000,5000 --num-data 100 --out results/z2
    python scripts/compare.py runs/a runs/b --estimator importance --num-samples 10,100,1000

Writes to ``--out``: ``comparison.md`` (a Markdown table), ``comparison.csv`` (one row per run,
estimator and K), ``convergence.png`` (log p-hat against K with standard-error bands; estimators
that do not take K, such as ``ais`` with ``--ais-chains`` chains, ``exact`` and ``quadrature``,
are horizontal references) and, for two or more runs, ``paired.csv`` and ``paired.png``: the
per-data-point difference between each run and the first, with its standard error.
"""

import argparse
import math
import os

import pyro
import torch

from evaluation.cli import add_estimator_flags, estimator_names, estimator_options
from evaluation.estimators import DETERMINISTIC, ESTIMATORS, estimate
from evaluation.report import csv_text
from evaluation.runs import load_run, select
from inference.cli import HelpFormatter, comma_list, run
from inference.io import atomic_savefig, atomic_write_text
from inference.training import resolve_device

SUMMARY_FIELDS = ("run", "estimator", "num_samples", "num_data", "log_px_mean", "log_px_stderr",
                  "log_px_data_stderr", "ess_mean", "khat_frac_above_0_7", "seconds")
PAIRED_FIELDS = ("run", "baseline", "estimator", "num_samples", "num_data", "mean_difference",
                 "paired_stderr", "unpaired_stderr")
SAMPLED_ONCE = ("ais",) + DETERMINISTIC


def run_label(path):
    return os.path.basename(os.path.normpath(path)) or path


def evaluate_run(path, names, grid, args, device):
    """{(estimator, K): Estimate} for one run, and the data it was evaluated on."""
    model, guide, dataset, config, _ = load_run(path, device, args.data_dir)
    x, _ = select(dataset, args.split, args.num_data)
    options = estimator_options(args)
    results = {}
    for name in names:
        sizes = [args.ais_chains if name == "ais" else 0] if name in SAMPLED_ONCE else grid
        for num_samples in sizes:
            pyro.set_rng_seed(args.seed)
            result = estimate(name, model, guide, x, num_samples, **options)
            results[name, num_samples] = result
            print(f"  {run_label(path)}  {name:<11} K={num_samples:<6} log p(x) "
                  f"{result.summary()['log_px_mean']:10.3f}  ({result.seconds:.1f} s)")
    return results, x, config


def paired(results, baseline, name, num_samples):
    """Mean per-point difference of two runs and its paired and unpaired standard errors."""
    a, b = results[name, num_samples].estimate, baseline[name, num_samples].estimate
    difference = a - b
    n = difference.numel()
    return {"mean_difference": difference.mean().item(),
            "paired_stderr": difference.std().item() / math.sqrt(n),
            "unpaired_stderr": math.sqrt(a.var().item() / n + b.var().item() / n),
            "num_data": n, "difference": difference}


def markdown(rows, paired_rows):
    lines = ["| run | estimator | K | N | log p(x) | MC s.e. | data s.e. | ESS | k-hat > 0.7 "
             "| seconds |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ess = "" if math.isnan(r["ess_mean"]) else f"{r['ess_mean']:.1f}"
        flagged = "" if math.isnan(r["khat_frac_above_0_7"]) else \
            f"{100 * r['khat_frac_above_0_7']:.0f}%"
        k = r["num_samples"] if r["num_samples"] else "-"
        lines.append(f"| {r['run']} | {r['estimator']} | {k} | {r['num_data']} | "
                     f"{r['log_px_mean']:.3f} | {r['log_px_stderr']:.4f} | "
                     f"{r['log_px_data_stderr']:.3f} | {ess} | {flagged} | {r['seconds']:.1f} |")
    if paired_rows:
        lines += ["", "Paired per-data-point differences (run minus baseline, same data points):",
                  "", "| run | baseline | estimator | K | mean difference | paired s.e. | "
                  "unpaired s.e. |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for p in paired_rows:
            lines.append(f"| {p['run']} | {p['baseline']} | {p['estimator']} | "
                         f"{p['num_samples'] or '-'} | {p['mean_difference']:.3f} | "
                         f"{p['paired_stderr']:.3f} | {p['unpaired_stderr']:.3f} |")
    return "\n".join(lines) + "\n"


COLORS = {"elbo": "#999999", "importance": "#0072B2", "prior": "#D55E00", "mixture": "#CC79A7",
          "ais": "#009E73", "exact": "#000000", "quadrature": "#E69F00"}


def plot_convergence(all_results, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(all_results), figsize=(6 * len(all_results), 4.5),
                                squeeze=False)
    for ax, (label, results) in zip(axes[0], all_results.items()):
        names = list(dict.fromkeys(name for name, _ in results))
        for name in names:
            color = COLORS.get(name)
            if name in SAMPLED_ONCE:
                (key,) = [k for k in results if k[0] == name]
                s = results[key].summary()
                text = f"{name} ({key[1]} chains)" if name == "ais" else name
                ax.axhline(s["log_px_mean"], color=color, linestyle="--", label=text)
                band = 2 * s["log_px_stderr"]
                ax.axhspan(s["log_px_mean"] - band, s["log_px_mean"] + band, color=color,
                           alpha=0.15)
                continue
            ks = [k for n, k in results if n == name]
            means = torch.tensor([results[name, k].summary()["log_px_mean"] for k in ks])
            errors = torch.tensor([results[name, k].summary()["log_px_stderr"] for k in ks])
            errors = torch.nan_to_num(errors, nan=0.0)
            ax.plot(ks, means, "o-", color=color, label=name)
            ax.fill_between(ks, means - 2 * errors, means + 2 * errors, color=color, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("number of samples K")
        ax.set_ylabel("mean log p-hat(x) per data point (nats)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle("log p-hat(x) against K (bands: ±2 Monte Carlo s.e.)", fontsize=10)
    figure.tight_layout()
    atomic_savefig(os.path.join(out_dir, "convergence.png"), figure, dpi=100)
    plt.close(figure)


def plot_paired(paired_results, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for p in paired_results:
        axes.hist(p["difference"].numpy(), bins=40, alpha=0.6,
                  label=f"{p['run']} - {p['baseline']} ({p['estimator']}): "
                  f"{p['mean_difference']:.2f} ± {p['paired_stderr']:.2f}")
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel("per-data-point difference of log p-hat(x) (nats)")
    axes.set_ylabel("data points")
    axes.legend(fontsize=8)
    figure.tight_layout()
    atomic_savefig(os.path.join(out_dir, "paired.png"), figure, dpi=100)
    plt.close(figure)


def write_report(args, labels, rows, paired_rows):
    """report.html: the tables and plots of this comparison in one self-contained file."""
    from evaluation.html_report import (ESTIMATE_COLUMNS, estimate_rows, figure_html, page,
                                        table_html)

    runs = [{"run": label, "path": path} for label, path in zip(labels, args.runs)]
    paired_columns = [("run", "run"), ("baseline", "baseline"), ("estimator", "estimator"),
                      ("num_samples", "K"), ("mean_difference", "mean difference"),
                      ("paired_stderr", "paired s.e."), ("unpaired_stderr", "unpaired s.e.")]
    sections = [("Runs", table_html(runs, [("run", "run"), ("path", "path")])),
                ("Estimates", table_html(estimate_rows(rows), [("run", "run")] + ESTIMATE_COLUMNS)
                 + figure_html(os.path.join(args.out, "convergence.png"),
                               "Mean log p-hat against K, +-2 standard errors."))]
    if paired_rows:
        sections.append(("Paired differences against the first run",
                         table_html(paired_rows, paired_columns)
                         + figure_html(os.path.join(args.out, "paired.png"),
                                       "Per-image differences against the first run.")))
    atomic_write_text(os.path.join(args.out, "report.html"),
                      page("Comparison of log p(x) estimates", sections))


def main(args):
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    device = resolve_device(args.device)
    names = estimator_names(args.estimator, default=("importance",))
    grid = sorted(set(args.num_samples))
    if not grid or min(grid) < 1:
        raise ValueError(f"--num-samples needs positive integers, got {args.num_samples}")
    labels = [run_label(path) for path in args.runs]
    if len(set(labels)) != len(labels):
        labels = [f"{i}:{label}" for i, label in enumerate(labels)]
    all_results, data = {}, {}
    for label, path in zip(labels, args.runs):
        print(f"{path}:")
        all_results[label], data[label], _ = evaluate_run(path, names, grid, args, device)
    rows = [{"run": label, **{key: result.summary()[key] for key in SUMMARY_FIELDS[1:]}}
            for label, results in all_results.items() for result in results.values()]

    paired_rows, paired_results = [], []
    baseline = labels[0]
    for label in labels[1:]:
        if data[label].shape != data[baseline].shape or \
                not torch.equal(data[label].cpu(), data[baseline].cpu()):
            raise ValueError(f"runs {baseline} and {label} were scored on different data points "
                             "(another data set or binarization); a paired comparison needs the "
                             "same ones")
        for name in names:
            # Each estimator at its largest K, where its estimates are the sharpest.
            k = max(key[1] for key in all_results[label] if key[0] == name)
            result = paired(all_results[label], all_results[baseline], name, k)
            result.update(run=label, baseline=baseline, estimator=name, num_samples=k)
            paired_results.append(result)
            paired_rows.append({key: result[key] for key in PAIRED_FIELDS})

    os.makedirs(args.out, exist_ok=True)
    table = markdown(rows, paired_rows)
    atomic_write_text(os.path.join(args.out, "comparison.md"), table)
    atomic_write_text(os.path.join(args.out, "comparison.csv"), csv_text(rows, SUMMARY_FIELDS))
    plot_convergence(all_results, args.out)
    files = ["comparison.md", "comparison.csv", "convergence.png"]
    if paired_rows:
        atomic_write_text(os.path.join(args.out, "paired.csv"), csv_text(paired_rows,
                                                                         PAIRED_FIELDS))
        plot_paired(paired_results, args.out)
        files += ["paired.csv", "paired.png"]
    write_report(args, labels, rows, paired_rows)
    files.append("report.html")
    print(table)
    print(f"files in {args.out}: {', '.join(files)}")
    return rows, paired_rows


def make_parser():
    parser = argparse.ArgumentParser(
        description="Compare estimates of log p(x) across runs, estimators and K.",
        formatter_class=HelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or checkpoints; the first is the "
                        "baseline of paired comparisons")
    parser.add_argument("--estimator", type=comma_list(str), action="append", default=[],
                        help=f"comma list or repeated; of {', '.join(ESTIMATORS)} "
                        "(default: importance)")
    parser.add_argument("--num-samples", type=comma_list(int), default=[1, 10, 100, 1000],
                        help="the grid of K, comma-separated")
    parser.add_argument("--num-data", type=int, default=100,
                        help="evaluate the first N points of the split")
    parser.add_argument("--split", choices=("test", "validation", "train"), default="test")
    parser.add_argument("--data-dir", default=None,
                        help="override the data folder stored in the runs' configs")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="comparison", help="folder for tables and plots")
    add_estimator_flags(parser)
    return parser


if __name__ == "__main__":
    run(main, make_parser())

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

import argparse
import os
import time

import pyro
import torch

from evaluation.ais import bdmc
from evaluation.cli import add_estimator_flags, estimator_names, estimator_options
from evaluation.estimators import ESTIMATORS, estimate
from evaluation.gaps import gap_decomposition, summarize_gaps
from evaluation.report import csv_text, format_table, per_point_rows
from evaluation.runs import load_run, select
from inference.cli import HelpFormatter, comma_list, run
from inference.io import atomic_write_json, atomic_write_text
from inference.local import fit_local_guide
from inference.training import resolve_device


def num_samples_for(name, args):
    return args.ais_chains if name == "ais" else args.num_samples


def main(args):
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    device = resolve_device(args.device)
    names = estimator_names(args.estimator, default=("elbo", "importance"))
    model, guide, dataset, config, path = load_run(args.run, device, args.data_dir)
    x, labels = select(dataset, args.split, args.num_data)
    print(f"{path}: {config.get('dataset')} {args.split} split, {x.shape[0]} data points, "
          f"z_dim={config['z_dim']}, on {device}")
    options = estimator_options(args)
    amortized = guide
    if args.guide == "local":
        pyro.set_rng_seed(args.seed)
        guide, history = fit_local_guide(model, amortized, x, args.local_steps,
                                         args.local_learning_rate, args.local_particles,
                                         progress=not args.no_progress)
        print(f"fitted the local guide on {x.shape[0]} points: {args.local_steps} Adam steps, "
              f"mean ELBO {history[0] if history else float('nan'):.3f} -> "
              f"{history[-1] if history else float('nan'):.3f}")
    summaries, rows = [], []
    for name in names:
        pyro.set_rng_seed(args.seed)  # each estimator's numbers do not depend on the others
        result = estimate(name, model, guide, x, num_samples_for(name, args), **options)
        summaries.append(result.summary())
        rows += per_point_rows(result, labels)
    print(format_table(summaries))
    flagged = [s for s in summaries if s["num_flagged"]]
    for s in flagged:
        print(f"{s['estimator']}: {s['num_flagged']} of {s['num_data']} data points have Pareto "
              f"k-hat > 0.7; their estimates cannot be trusted")
    report = {"run": args.run, "checkpoint": path, "split": args.split, "seed": args.seed,
              "num_data": int(x.shape[0]), "device": str(device), "config": config,
              "guide": args.guide, "estimators": summaries,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.guide == "local":
        pyro.set_rng_seed(args.seed)
        gaps = summarize_gaps(gap_decomposition(model, amortized, guide, x, args.num_samples))
        report["gaps"] = dict(gaps, local_steps=args.local_steps, num_samples=args.num_samples)
        print(format_gaps(gaps, args.num_samples))
    if args.bdmc:
        pyro.set_rng_seed(args.seed)
        with torch.no_grad():
            sandwich = bdmc(model, args.bdmc, args.ais_chains, num_steps=args.ais_steps,
                            num_leapfrog=args.ais_leapfrog, step_size=args.ais_step_size,
                            target_accept=args.ais_target_accept, schedule=args.ais_schedule)
        report["bdmc"] = {key: sandwich[key].mean().item() for key in ("lower", "upper", "gap")}
        report["bdmc"].update(num_data=args.bdmc, ais_steps=args.ais_steps,
                              ais_chains=args.ais_chains)
        print(f"BDMC on {args.bdmc} points simulated from the model: forward AIS "
              f"{report['bdmc']['lower']:.3f} <= log p(x) <= reverse AIS "
              f"{report['bdmc']['upper']:.3f} (gap {report['bdmc']['gap']:.3f} nats)")
    if args.out:
        atomic_write_json(args.out, report)
        table = os.path.splitext(args.out)[0] + ".csv"
        atomic_write_text(table, csv_text(rows))
        print(f"wrote {args.out} and {table}")
    return report


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
    parser = argparse.ArgumentParser(
        description="Estimate log p(x) per data point for a trained run.",
        formatter_class=HelpFormatter)
    parser.add_argument("run", help="a run folder (its best.pt is used) or a checkpoint file")
    parser.add_argument("--estimator", type=comma_list(str), action="append", default=[],
                        help=f"comma list or repeated; of {', '.join(ESTIMATORS)} "
                        "(default: elbo,importance)")
    parser.add_argument("--num-samples", type=int, default=1000,
                        help="K, importance samples per data point")
    parser.add_argument("--num-data", type=int, default=None,
                        help="evaluate the first N points of the split (default: all)")
    parser.add_argument("--split", choices=("test", "validation", "train"), default="test")
    parser.add_argument("--data-dir", default=None,
                        help="override the data folder stored in the run's config")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bdmc", type=int, default=0, metavar="N",
                        help="also run BDMC on N points simulated from the model")
    parser.add_argument("--out", default=None,
                        help="write the summary JSON here and the per-point CSV beside it")
    local = parser.add_argument_group("local guide")
    local.add_argument("--guide", choices=("run", "local"), default="run",
                       help="run: the trained encoder; local: per-point parameters fitted on "
                       "the evaluation points, with the gap decomposition")
    local.add_argument("--local-steps", type=int, default=500, help="Adam steps of the local fit")
    local.add_argument("--local-learning-rate", type=float, default=1e-2,
                       help="Adam step size of the local fit")
    local.add_argument("--local-particles", type=int, default=8,
                       help="draws of z per point and step of the local fit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_estimator_flags(parser)
    return parser


if __name__ == "__main__":
    run(main, make_parser())

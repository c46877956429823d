"""Estimate log p(x) per data point for a trained run, with standard errors and diagnostics.

Examples::

    python scripts/evaluate.py runs/demo --estimator elbo,importance,prior --num-samples 1000
    python scripts/evaluate.py runs/mnist-z50 --estimator importance --num-samples 5000 \\
        --num-data 1000 --out results/mnist-z50.json
    python scripts/evaluate.py runs/z2 --estimator ais,quadrature --ais-steps 1000 --bdmc 20

It prints a table and writes a JSON file of per-estimator summaries and, beside it, a CSV with one
row per data point and estimator (index, label, estimate, stderr, ess, khat).
"""

import argparse
import os
import time

import pyro
import torch

from evaluation.ais import bdmc
from evaluation.cli import add_estimator_flags, estimator_names, estimator_options
from evaluation.estimators import ESTIMATORS, estimate
from evaluation.report import csv_text, format_table, per_point_rows
from evaluation.runs import load_run, select
from inference.cli import HelpFormatter, comma_list, run
from inference.io import atomic_write_json, atomic_write_text
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
              "estimators": summaries, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
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
    add_estimator_flags(parser)
    return parser


if __name__ == "__main__":
    run(main, make_parser())

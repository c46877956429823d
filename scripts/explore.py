"""See the generative story of a trained run: latent map, decoded manifold, one blueprint and its
draws, the posterior of one test image, estimator convergence, reconstructions, samples, and a
self-contained ``report.html`` that gathers them with the run's config, training curves and an
evaluation table.

Examples::

    python scripts/explore.py runs/mnist-z2
    python scripts/explore.py runs/mnist-z2 --z 0.1,0.5 --index 7 --out figures/

Writes latent_map.png, manifold.png, blueprint.png, posterior.png, convergence.png,
reconstructions.png, samples.png, explore.json (the numbers behind the figures) and report.html
into the run folder or ``--out``.
"""

import argparse
import json
import os
import time

import pyro
import torch
from tqdm.auto import tqdm

from evaluation import figures
from evaluation.estimators import estimate
from evaluation.html_report import (ESTIMATE_COLUMNS, config_html, estimate_rows, figure_html,
                                    page, table_html)
from evaluation.runs import load_run, select
from inference.cli import HelpFormatter, comma_list, run
from inference.io import atomic_write_json, atomic_write_text
from inference.training import resolve_device

CAPTIONS = {
    "elbo.png": "Training curves: the ELBO per data point on the training and validation splits.",
    "latent_map.png": "Where the encoder puts test images: each dot is E_q[z | x] of one image, "
                      "coloured and labelled by its digit.",
    "manifold.png": "What the decoder makes of each region of z-space: E[x | z] on a grid at "
                    "prior quantiles.",
    "blueprint.png": "One z is a blueprint: its decoded mean f(z), and different images drawn "
                     "from p(x | z).",
    "posterior.png": "For one test image only a tiny region of z carries weight: prior (dotted), "
                     "guide (dashed), true posterior (filled), and prior draws sized by weight.",
    "convergence.png": "Estimates of log p(x) for that image against the number of samples K, "
                       "with +-2 standard errors.",
    "reconstructions.png": "Test images (top) and their reconstructions f(E_q[z | x]) (bottom).",
    "samples.png": "The story run forwards: z ~ p(z), the blueprint f(z) (top), x ~ p(x | z) "
                   "(bottom).",
}
FIGURES = ("latent_map.png", "manifold.png", "blueprint.png", "posterior.png",
           "convergence.png", "reconstructions.png", "samples.png")


def reference_value(model, x, progress):
    """An exact or near-exact log p(x) for the convergence plot, where one exists."""
    from models.linear_gaussian import is_linear_gaussian

    if is_linear_gaussian(model):
        return "exact", estimate("exact", model, None, x, None).estimate[0].item()
    if model.z_dim <= 2:
        if progress is not None:
            progress.set_postfix_str("quadrature")
        return "quadrature", estimate("quadrature", model, None, x, None).estimate[0].item()
    return None


def evaluation_summaries(args, model, guide, dataset):
    if args.evaluation:
        with open(args.evaluation) as handle:
            return json.load(handle)["estimators"]
    x, _ = select(dataset, "test", args.eval_data)
    summaries = []
    for name in args.estimator or ["elbo", "importance", "prior"]:
        pyro.set_rng_seed(args.seed)
        summaries.append(estimate(name, model, guide, x, args.num_samples,
                                  ais_steps=args.ais_steps).summary())
    return summaries


def write_report(out, run_path, config, summaries, facts, run_dir):
    sections = [("", f'<p class="note">Run <code>{run_path}</code>; written '
                 f'{time.strftime("%Y-%m-%d %H:%M")}. Every number and picture below was '
                 "computed from this run by <code>scripts/explore.py</code>.</p>")]
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary_path):
        with open(summary_path) as handle:
            summary = json.load(handle)
        rows = [{"key": key, "value": value} for key, value in summary.items()]
        sections.append(("Training", table_html(rows, [("key", "quantity"), ("value", "value")])
                         + figure_html(os.path.join(run_dir, "elbo.png"), CAPTIONS["elbo.png"])))
    sections.append(("Evaluation: log p(x) per test image",
                     table_html(estimate_rows(summaries), ESTIMATE_COLUMNS)
                     + '<p class="note">Monte Carlo s.e.: the error of the mean estimate; s.e. '
                     "over data: the spread of the per-image values. ESS: effective sample size "
                     "of the importance weights. k-hat &gt; 0.7: Pareto diagnostic saying an "
                     "estimate cannot be trusted.</p>"))
    sections.append(("The generative story, in pictures", "".join(
        figure_html(os.path.join(out, name), CAPTIONS[name]) for name in FIGURES)))
    facts_rows = [{"key": key, "value": value} for key, value in facts.items()
                  if isinstance(value, (int, float, str))]
    sections.append(("Numbers behind the figures",
                     table_html(facts_rows, [("key", "quantity"), ("value", "value")])))
    sections.append(("Configuration", config_html(config)))
    text = page(f"VAE run report: {os.path.basename(os.path.normpath(run_path))}", sections)
    atomic_write_text(os.path.join(out, "report.html"), text)


def main(args):
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    device = resolve_device(args.device)
    model, guide, dataset, config, path = load_run(args.run, device, args.data_dir)
    run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(args.run)
    out = args.out or run_dir
    os.makedirs(out, exist_ok=True)
    image_shape = config.get("image_shape")
    test = dataset.split("test").data()
    if not 0 <= args.index < test.shape[0]:
        raise ValueError(f"--index must lie in 0..{test.shape[0] - 1}, got {args.index}")
    x_one = test[args.index:args.index + 1]
    label = int(dataset.split("test").labels[args.index])
    z = args.z if args.z is not None else ([0.1, 0.5] + [0.0] * (model.z_dim - 2)
                                           if model.z_dim >= 2 else [0.1])
    if len(z) != model.z_dim:
        raise ValueError(f"--z needs {model.z_dim} comma-separated values (z_dim = "
                         f"{model.z_dim}), got {len(z)}")
    x_map, labels = select(dataset, "test", args.num_data)
    facts = {"run": path, "z_dim": model.z_dim, "index": args.index, "label": label,
             "blueprint_z": ",".join(f"{value:g}" for value in z)}

    ks = [k for k in args.convergence_k]
    steps = 7 + len(ks) * 3 + 2
    progress = tqdm(total=steps, desc="exploring", unit="step", disable=args.no_progress,
                    dynamic_ncols=True)

    def step(name):
        progress.set_postfix_str(name)
        progress.update()

    target = os.path.join
    result = figures.latent_map(model, guide, x_map, labels, target(out, "latent_map.png"))
    facts["latent_map_method"] = result["method"]
    facts.update(figures.nearest_labels(figures.encoder_means(guide, x_map).cpu(), labels,
                                        torch.tensor(z, dtype=torch.float32)))
    step("latent map")
    figures.manifold(model, target(out, "manifold.png"), directions=args.directions,
                     image_shape=image_shape)
    step("manifold")
    figures.blueprint(model, z, target(out, "blueprint.png"), image_shape=image_shape)
    step("blueprint")
    pyro.set_rng_seed(args.seed)
    result = figures.posterior(model, guide, x_one, target(out, "posterior.png"),
                               num_prior_samples=args.num_prior_samples)
    facts.update(prior_ess=result["prior_ess"], prior_weight_share=result["prior_weight_share"],
                 num_prior_samples=result["num_prior_samples"])
    if "posterior_mean" in result:
        facts.update(posterior_mean=", ".join(f"{v:.3f}" for v in result["posterior_mean"]),
                     posterior_sd=", ".join(f"{v:.3f}" for v in result["posterior_sd"]))
    with torch.no_grad():
        q = guide.distribution(x_one)
        guide_draws = q.sample((4000,))[:, 0]
    facts.update(guide_mean=", ".join(f"{v:.3f}" for v in guide_draws.mean(0)[:4]),
                 guide_sd=", ".join(f"{v:.3f}" for v in guide_draws.std(0)[:4]))
    step("posterior")
    reference = reference_value(model, x_one, progress)
    if reference is not None:
        facts[f"log_px_{reference[0]}"] = reference[1]
    step("reference")
    pyro.set_rng_seed(args.seed)
    curves = figures.convergence(model, guide, x_one, target(out, "convergence.png"),
                                 num_samples=ks, ais_steps=args.ais_steps, reference=reference,
                                 progress=progress)
    for name, points in curves.items():
        for k, value, stderr in points:
            facts[f"{name}_K{k}"] = value
            facts[f"{name}_K{k}_stderr"] = stderr
    figures.reconstructions(model, guide, test[:10], target(out, "reconstructions.png"),
                            image_shape=image_shape)
    step("reconstructions")
    pyro.set_rng_seed(args.seed)
    figures.samples(model, target(out, "samples.png"), image_shape=image_shape)
    step("samples")
    summaries = evaluation_summaries(args, model, guide, dataset)
    step("evaluation")
    progress.close()
    atomic_write_json(target(out, "explore.json"), {"facts": facts, "estimators": summaries,
                                                    "curves": curves})
    write_report(out, path, config, summaries, facts, run_dir)
    print(f"prior draws carrying the weight for test image {args.index} (a {label}): effective "
          f"{facts['prior_ess']:.1f} of {facts['num_prior_samples']}")
    files = [name for name in FIGURES + ("explore.json", "report.html")
             if os.path.isfile(target(out, name))]
    print(f"wrote {', '.join(files)} to {out}")
    return facts


def make_parser():
    parser = argparse.ArgumentParser(
        description="Figures of a trained run's generative story and a self-contained report.",
        formatter_class=HelpFormatter)
    parser.add_argument("run", help="a run folder (its best.pt is used) or a checkpoint file")
    parser.add_argument("--out", default=None, help="folder for the files (default: the run)")
    parser.add_argument("--z", type=comma_list(float), default=None,
                        help="the blueprint z, comma-separated (default 0.1,0.5, then zeros)")
    parser.add_argument("--index", type=int, default=0,
                        help="the test image whose posterior and convergence are shown")
    parser.add_argument("--directions", type=comma_list(int), default=[0, 1],
                        help="the two latent dimensions the manifold varies (others at 0)")
    parser.add_argument("--num-data", type=int, default=5000,
                        help="test images in the latent map")
    parser.add_argument("--num-prior-samples", type=int, default=1000,
                        help="naive draws z ~ p(z) shown in the posterior figure")
    parser.add_argument("--convergence-k", type=comma_list(int), default=[1, 10, 100, 1000, 10000],
                        help="values of K in the convergence figure")
    parser.add_argument("--ais-steps", type=int, default=200, help="annealing steps of ais")
    parser.add_argument("--estimator", type=comma_list(str), default=None,
                        help="estimators of the report's table (default elbo,importance,prior)")
    parser.add_argument("--num-samples", type=int, default=1000,
                        help="K of the report's evaluation table")
    parser.add_argument("--eval-data", type=int, default=500,
                        help="test images in the report's evaluation table")
    parser.add_argument("--evaluation", default=None,
                        help="take the table from this evaluate.py JSON instead")
    parser.add_argument("--data-dir", default=None,
                        help="override the data folder stored in the run's config")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


if __name__ == "__main__":
    run(main, make_parser())

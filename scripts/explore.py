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

import json
import math
import os
import time

import pyro
import torch
from tqdm.auto import tqdm

from evaluation import story
from evaluation.estimators import convergence_curves, estimate
from evaluation import command_line as cli
from evaluation.reporting import figures
from evaluation.reporting.html import figure_html, note, page, settings_html
from evaluation.reporting.tables import SETTING_COLUMNS, render
from models.utilities.entry_points import comma_list, entry_point
from models.base.config import ConfigError
from models.utilities.files import atomic_write_json, atomic_write_text, refuse_to_overwrite
from models.linear_gaussian import is_linear_gaussian

CAPTIONS = {
    "elbo.png": "Training curves: the ELBO per data point on the training and validation splits.",
    "latent_map.png": "Where the encoder puts test images: each dot is E_q[z | x] of one image, "
                      "coloured and labelled by its digit.",
    "manifold.png": "What the decoder makes of each region of z-space: E[x | z] on a grid at "
                    "quantiles of the run's prior.",
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
#: AIS settings of the convergence figure: short chains, one image
AIS_LEAPFROG, MAX_AIS_CHAINS = 5, 100


def reference_value(model, x):
    """An exact or near-exact log p(x) for the convergence plot, where one exists."""
    if is_linear_gaussian(model):
        return "exact", estimate("exact", model, None, x, None).estimate[0].item()
    if model.z_dim <= 2:
        return "quadrature", estimate("quadrature", model, None, x, None).estimate[0].item()
    return None


def read_evaluation(path):
    """The per-estimator summaries of an evaluate.py JSON (``--evaluation``), read before
    anything is written so that a wrong file is refused first."""
    try:
        with open(path) as handle:
            summaries = json.load(handle)["estimators"]
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"--evaluation {path} is not a JSON summary written by evaluate.py "
                          f"--out ({type(error).__name__}: {error}); give such a file or drop "
                          "the flag") from None
    if not isinstance(summaries, list):
        raise ConfigError(f"--evaluation {path} holds no list of estimator summaries; give a JSON "
                          "written by evaluate.py --out or drop the flag")
    return summaries


def evaluation_summaries(args, opened, names):
    x, _ = opened.dataset.select("test", args.eval_data)
    summaries = []
    for name in names:
        pyro.set_rng_seed(args.seed or 0)
        options = {"ais_steps": args.ais_steps} if name == "ais" else {}
        summaries.append(estimate(name, opened.model, opened.guide, x, args.num_samples,
                                  **options).summary())
    return summaries


def write_report(out, run_path, config, summaries, facts, run_dir):
    sections = [("", note(f"Run {run_path}; written {time.strftime('%Y-%m-%d %H:%M')}. Every "
                          "number and picture below was computed from this run by "
                          "scripts/explore.py."))]
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary_path):
        with open(summary_path) as handle:
            summary = json.load(handle)
        rows = [{"key": key, "value": value} for key, value in summary.items()]
        sections.append(("Training", render(rows, SETTING_COLUMNS, "html")
                         + figure_html(os.path.join(run_dir, "elbo.png"), CAPTIONS["elbo.png"])))
    sections.append(("Evaluation: log p(x) per test image", render(summaries, style="html")
                     + note("MC s.e.: the Monte Carlo error of the mean estimate; data s.e.: the "
                            "spread of the per-image values. ESS: effective sample size of the "
                            "importance weights. k-hat > 0.7: the Pareto diagnostic says the "
                            "estimate cannot be trusted.")))
    sections.append(("The generative story, in pictures", "".join(
        figure_html(os.path.join(out, name), CAPTIONS[name]) for name in FIGURES)))
    facts_rows = [{"key": key, "value": value} for key, value in facts.items()
                  if isinstance(value, (int, float, str))]
    sections.append(("Numbers behind the figures", render(facts_rows, SETTING_COLUMNS, "html")))
    sections.append(("Configuration", settings_html(config.to_dict())))
    text = page(f"VAE run report: {os.path.basename(os.path.normpath(run_path))}", sections)
    atomic_write_text(os.path.join(out, "report.html"), text)


def check_directions(directions, z_dim):
    """The two latent dimensions of the manifold figure, checked against the run's z_dim (with
    one latent dimension, the second is ignored)."""
    if z_dim == 1:
        if len(directions) not in (1, 2) or directions[0] != 0:
            raise ConfigError(f"--directions must start with 0 for a run with one latent "
                              f"dimension (z_dim = 1), got {directions}")
        return directions[0], directions[-1]
    if len(directions) != 2 or not all(0 <= d < z_dim for d in directions) or \
            directions[0] == directions[1]:
        raise ConfigError(f"--directions needs two different latent dimensions in 0..{z_dim - 1}, "
                          f"comma-separated (e.g. 0,1), got {directions}")
    return tuple(directions)


def _main(args):
    # Every flag is checked before anything is written, so that a refused command leaves no
    # files behind that would block its corrected rerun.
    cli.check_positive(args, "num_data", "num_prior_samples", "num_samples", "eval_data",
                       "ais_steps")
    if args.evaluation and args.estimator:
        raise ConfigError("--estimator chooses the estimators of the report's table, which "
                          "--evaluation takes from a file instead; give one of them")
    names = cli.estimator_names(args, default=("elbo", "importance", "prior"))
    ks = list(args.convergence_k)
    if not ks or min(ks) < 1:
        raise ConfigError(f"--convergence-k needs one or more positive whole numbers, "
                          f"comma-separated (e.g. 1,10,100), got {ks}")
    if args.z is not None and not all(math.isfinite(value) for value in args.z):
        raise ConfigError(f"--z needs finite numbers, got {args.z}")
    table = read_evaluation(args.evaluation) if args.evaluation else None
    opened = cli.open_run(args)
    model, guide, dataset = opened.model, opened.guide, opened.dataset
    run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(args.run)
    out = args.out or run_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; give a folder for the figures")
    image_shape = story.image_shape_of(model, opened.config.model.image_shape)
    test, test_labels = dataset.select("test")
    if not 0 <= args.index < test.shape[0]:
        raise ConfigError(f"--index must lie in 0..{test.shape[0] - 1}, got {args.index}")
    z = args.z if args.z is not None else ([0.1, 0.5] + [0.0] * (model.z_dim - 2)
                                           if model.z_dim >= 2 else [0.1])
    if len(z) != model.z_dim:
        raise ConfigError(f"--z needs {model.z_dim} comma-separated values (z_dim = "
                          f"{model.z_dim}), got {len(z)}")
    directions = check_directions(args.directions, model.z_dim)
    refuse_to_overwrite([os.path.join(out, name) for name in FIGURES + ("explore.json",
                                                                        "report.html")],
                        args.overwrite)
    x_one = test[args.index:args.index + 1]
    label = int(test_labels[args.index])
    x_map, labels = dataset.select("test", args.num_data)
    facts = {"run": opened.path, "z_dim": model.z_dim, "index": args.index, "label": label,
             "blueprint_z": ",".join(f"{value:g}" for value in z)}
    seed = args.seed or 0

    progress = tqdm(total=8 + len(ks) * 3, desc="exploring", unit="step",
                    disable=args.no_progress, dynamic_ncols=True)

    def step(name=None):
        if name:
            progress.set_postfix_str(name)
        progress.update()

    # The table first: an estimator that cannot score this run is refused before any figure is
    # written. Its random numbers are its own; the figures draw the same ones as without it.
    summaries = table
    if summaries is None:
        state = pyro.util.get_rng_state()
        with torch.random.fork_rng(devices=[x_one.device] if x_one.is_cuda else []):
            summaries = evaluation_summaries(args, opened, names)
        pyro.util.set_rng_state(state)
    step("evaluation")
    os.makedirs(out, exist_ok=True)
    target = os.path.join
    view = story.latent_map(guide, x_map, labels)
    figures.latent_map(view, target(out, "latent_map.png"))
    facts["latent_map_method"] = view["method"]
    facts.update(story.nearest_labels(story.encoder_means(guide, x_map).cpu(), labels,
                                      torch.tensor(z, dtype=torch.float32)))
    step("latent map")
    grid = story.latent_grid(model, directions=directions, image_shape=image_shape)
    figures.manifold(grid, target(out, "manifold.png"))
    facts["manifold_grid"] = grid["description"]
    step("manifold")
    figures.blueprint(story.blueprint(model, z, image_shape=image_shape),
                      target(out, "blueprint.png"))
    step("blueprint")
    pyro.set_rng_seed(seed)
    view = story.posterior_view(model, guide, x_one, num_prior_samples=args.num_prior_samples)
    figures.posterior(view, target(out, "posterior.png"))
    facts.update(prior_ess=view["prior_ess"], prior_weight_share=view["prior_weight_share"],
                 num_prior_samples=view["num_prior_samples"])
    if "posterior_mean" in view:
        facts.update(posterior_mean=", ".join(f"{v:.3f}" for v in view["posterior_mean"]),
                     posterior_sd=", ".join(f"{v:.3f}" for v in view["posterior_sd"]))
    guide_draws = view["guide_z"]
    facts.update(guide_mean=", ".join(f"{v:.3f}" for v in guide_draws.mean(0)[:4]),
                 guide_sd=", ".join(f"{v:.3f}" for v in guide_draws.std(0)[:4]))
    step("posterior")
    reference = reference_value(model, x_one)
    if reference is not None:
        facts[f"log_px_{reference[0]}"] = reference[1]
    step("reference")
    pyro.set_rng_seed(seed)
    curves = convergence_curves(model, guide, x_one, ks, ("prior", "importance", "ais"),
                                {"ais_steps": args.ais_steps, "ais_leapfrog": AIS_LEAPFROG},
                                max_chains=MAX_AIS_CHAINS, progress=step)
    figures.convergence(curves, target(out, "convergence.png"), reference, args.ais_steps)
    for name, points in curves.items():
        for k, value, stderr in points:
            facts[f"{name}_K{k}"] = value
            facts[f"{name}_K{k}_stderr"] = stderr
    figures.reconstructions(test[:10], story.reconstructions(model, guide, test[:10]),
                            image_shape, target(out, "reconstructions.png"))
    step("reconstructions")
    pyro.set_rng_seed(seed)
    figures.samples(story.samples(model), image_shape, target(out, "samples.png"))
    step("samples")
    progress.close()
    atomic_write_json(target(out, "explore.json"), {"facts": facts, "estimators": summaries,
                                                    "curves": curves})
    write_report(out, opened.path, opened.config, summaries, facts, run_dir)
    print(f"prior draws carrying the weight for test image {args.index} (a {label}): effective "
          f"{facts['prior_ess']:.1f} of {facts['num_prior_samples']}")
    files = [name for name in FIGURES + ("explore.json", "report.html")
             if os.path.isfile(target(out, name))]
    print(f"wrote {', '.join(files)} to {out}")
    return facts


def make_parser():
    parser = cli.make_parser(
        "Figures of a trained run's generative story and a self-contained report.", __file__)
    parser.add_argument("run", help="a run folder (its best.pt is used) or a checkpoint file")
    group = parser.add_argument_group("figures")
    group.add_argument("--out", default=None, help="folder for the files (default: the run)")
    group.add_argument("--z", type=comma_list(float), default=None,
                       help="the blueprint z, comma-separated (default 0.1,0.5, then zeros)")
    group.add_argument("--index", type=int, default=0,
                       help="the test image whose posterior and convergence are shown")
    group.add_argument("--directions", type=comma_list(int), default=[0, 1],
                       help="the two latent dimensions the manifold varies (others at the "
                       "prior's median)")
    group.add_argument("--num-data", type=int, default=2000,
                       help="test images in the latent map")
    group.add_argument("--num-prior-samples", type=int, default=1000,
                       help="naive draws z ~ p(z) shown in the posterior figure")
    group.add_argument("--convergence-k", type=comma_list(int), default=[1, 10, 100, 1000, 10000],
                       help="values of K in the convergence figure")
    group.add_argument("--ais-steps", type=int, default=100,
                       help="annealing steps of ais in the convergence figure (and the table)")
    table = parser.add_argument_group("evaluation table")
    table.add_argument("--estimator", type=comma_list(str), action="append", default=[],
                       help="estimators of the report's table (default elbo,importance,prior)")
    table.add_argument("--num-samples", type=int, default=1000,
                       help="K of the report's evaluation table")
    table.add_argument("--eval-data", type=int, default=200,
                       help="test images in the report's evaluation table")
    table.add_argument("--evaluation", default=None,
                       help="take the table from this evaluate.py JSON instead")
    cli.add_opened_run_flags(parser)
    return parser


main = entry_point(_main, make_parser)


if __name__ == "__main__":
    main()

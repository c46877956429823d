"""See the generative story of a trained run: the latent map, the decoded manifold, one blueprint
and its draws, the posterior of one test image, the convergence of the estimators on it,
reconstructions and samples, each as a PNG; ``explore.json`` (the numbers behind the figures)
and a self-contained ``report.html`` that gathers them with the run's configuration, training
curves and an evaluation table.

:func:`explore` is what ``explore.py`` does once its flags are checked and the run is opened
(:func:`evaluation.command_line.open_run`), and how ``tutorial.py`` draws its figures.
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
from evaluation.reporting import figures
from evaluation.reporting.html import figure_html, note, page, settings_html
from evaluation.reporting.scoring import judge
from evaluation.reporting.tables import SETTING_COLUMNS, recommended_summary, render
from evaluation.verdicts import summarize_verdicts
from models.base.config import ConfigError
from models.linear_gaussian import is_linear_gaussian
from models.utilities.files import atomic_write_json, atomic_write_text, refuse_to_overwrite

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
#: every file :func:`explore` writes
OUTPUTS = FIGURES + ("explore.json", "report.html")
#: the estimators of the report's table unless others are chosen: the defensive mixture beside
#: importance sampling is what checks it for missed modes (:mod:`evaluation.verdicts`)
DEFAULT_ESTIMATORS = ("elbo", "importance", "mixture", "prior")
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
    """The per-estimator summaries of an evaluate.py JSON (``--evaluation``), followed by its
    ``recommended`` row where it has one (files written before the verdicts have none), read
    before anything is written so that a wrong file is refused first."""
    try:
        with open(path) as handle:
            written = json.load(handle)
        summaries = written["estimators"]
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"--evaluation {path} is not a JSON summary written by evaluate.py "
                          f"--out ({type(error).__name__}: {error}); give such a file or drop "
                          "the flag") from None
    if not isinstance(summaries, list):
        raise ConfigError(f"--evaluation {path} holds no list of estimator summaries; give a JSON "
                          "written by evaluate.py --out or drop the flag")
    recommended = written.get("recommended")
    return summaries + ([recommended] if isinstance(recommended, dict) else [])


def evaluation_summaries(opened, names, num_data, num_samples, ais_steps, seed):
    """The rows of the report's evaluation table: the summary of each estimator of ``names`` on
    the first ``num_data`` test images with K ``num_samples``, each from the random numbers of
    ``seed``, with the share of images its estimate passes every check on (``trusted_frac``,
    ``num_trusted``: the verdicts of :mod:`evaluation.verdicts` on these estimates), then the
    ``recommended`` row (the mean of the per-image recommended values)."""
    x, labels = opened.dataset.select("test", num_data)
    results = {}
    for name in names:
        pyro.set_rng_seed(seed)
        options = {"ais_steps": ais_steps} if name == "ais" else {}
        results[name] = estimate(name, opened.model, opened.guide, x, num_samples, **options)
    verdicts, summaries, _ = judge(results, labels)
    return summaries + [recommended_summary(verdicts, summarize_verdicts(verdicts))]


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
                            "estimate cannot be trusted. trusted: the share of images whose "
                            "estimate passes every check of evaluation/verdicts.py (k-hat, a "
                            "missed mode that the mixture finds, disagreement); recommended: "
                            "per image the tightest estimate that passes (else the best guess), "
                            "averaged over the images, and the share that passes.")))
    sections.append(("The generative story, in pictures", "".join(
        figure_html(os.path.join(out, name), CAPTIONS[name]) for name in FIGURES)))
    facts_rows = [{"key": key, "value": value} for key, value in facts.items()
                  if isinstance(value, (int, float, str))]
    sections.append(("Numbers behind the figures", render(facts_rows, SETTING_COLUMNS, "html")))
    sections.append(("Configuration", settings_html(config.to_dict())))
    text = page(f"VAE run report: {os.path.basename(os.path.normpath(run_path))}", sections)
    atomic_write_text(os.path.join(out, "report.html"), text)


def run_folder(path):
    """The folder of a run named by its folder or by a checkpoint file in it."""
    return path if os.path.isdir(path) else os.path.dirname(path)


def check_settings(convergence_k, z=None):
    """Refuse a grid of K or a blueprint z that no run can draw (checked before a run is
    opened, so that a wrong command fails at once)."""
    ks = list(convergence_k)
    if not ks or min(ks) < 1:
        raise ConfigError(f"--convergence-k needs one or more positive whole numbers, "
                          f"comma-separated (e.g. 1,10,100), got {ks}")
    if z is not None and not all(math.isfinite(value) for value in z):
        raise ConfigError(f"--z needs finite numbers, got {z}")


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


def explore(opened, run_dir, out=None, *, index, z, directions, num_data, num_prior_samples,
            convergence_k, ais_steps, estimators, num_samples, eval_data, table=None, seed=0,
            progress=True, overwrite=False, log=print):
    """Draw the figures of the opened run ``opened`` (a
    :class:`evaluation.command_line.OpenRun`) into ``out`` (default: ``run_dir``, the run's
    folder, whose ``summary.json`` and ``elbo.png`` the report shows), with ``explore.json``
    and ``report.html``. Every setting is checked against the run before any file is written.

    :param index: the test image whose posterior and convergence are shown.
    :param z: the blueprint z (None: 0.1, 0.5, then zeros).
    :param directions: the two latent dimensions the manifold varies.
    :param num_data: test images in the latent map.
    :param num_prior_samples: naive draws z ~ p(z) in the posterior figure.
    :param convergence_k: the values of K of the convergence figure.
    :param ais_steps: annealing steps of ais in the convergence figure and the table.
    :param estimators: the estimators of the report's table, scored with K ``num_samples`` on
        the first ``eval_data`` test images; ``table``: their summaries, read from a file
        instead (:func:`read_evaluation`).
    :param seed: the random numbers of each figure and estimate.
    :param overwrite: replace files of an earlier exploration in ``out``.
    :returns: the facts: the numbers behind the figures, as in ``explore.json``.
    """
    check_settings(convergence_k, z)
    model, guide, dataset = opened.model, opened.guide, opened.dataset
    out = out or run_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; give a folder for the figures")
    image_shape = story.image_shape_of(model, opened.config.model.image_shape)
    test, test_labels = dataset.select("test")
    if not 0 <= index < test.shape[0]:
        raise ConfigError(f"--index must lie in 0..{test.shape[0] - 1}, got {index}")
    z = z if z is not None else ([0.1, 0.5] + [0.0] * (model.z_dim - 2)
                                 if model.z_dim >= 2 else [0.1])
    if len(z) != model.z_dim:
        raise ConfigError(f"--z needs {model.z_dim} comma-separated values (z_dim = "
                          f"{model.z_dim}), got {len(z)}")
    directions = check_directions(directions, model.z_dim)
    refuse_to_overwrite([os.path.join(out, name) for name in OUTPUTS], overwrite)
    ks = list(convergence_k)
    x_one = test[index:index + 1]
    label = int(test_labels[index])
    x_map, labels = dataset.select("test", num_data)
    facts = {"run": opened.path, "z_dim": model.z_dim, "index": index, "label": label,
             "blueprint_z": ",".join(f"{value:g}" for value in z)}

    bar = tqdm(total=8 + len(ks) * 3, desc="exploring", unit="step", disable=not progress,
               dynamic_ncols=True)

    def step(name=None):
        if name:
            bar.set_postfix_str(name)
        bar.update()

    # The table first: an estimator that cannot score this run is refused before any figure is
    # written. Its random numbers are its own; the figures draw the same ones as without it.
    summaries = table
    if summaries is None:
        state = pyro.util.get_rng_state()
        with torch.random.fork_rng(devices=[x_one.device] if x_one.is_cuda else []):
            summaries = evaluation_summaries(opened, estimators, eval_data, num_samples,
                                             ais_steps, seed)
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
    view = story.posterior_view(model, guide, x_one, num_prior_samples=num_prior_samples)
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
                                {"ais_steps": ais_steps, "ais_leapfrog": AIS_LEAPFROG},
                                max_chains=MAX_AIS_CHAINS, progress=step)
    figures.convergence(curves, target(out, "convergence.png"), reference, ais_steps)
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
    bar.close()
    atomic_write_json(target(out, "explore.json"), {"facts": facts, "estimators": summaries,
                                                    "curves": curves})
    write_report(out, opened.path, opened.config, summaries, facts, run_dir)
    log(f"prior draws carrying the weight for test image {index} (a {label}): effective "
        f"{facts['prior_ess']:.1f} of {facts['num_prior_samples']}")
    files = [name for name in OUTPUTS if os.path.isfile(target(out, name))]
    log(f"wrote {', '.join(files)} to {out}")
    return facts

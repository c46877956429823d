"""The parser of every script, one function per script named after it (:func:`train` for
``scripts/train.py``, ...), and :data:`PARSERS`, all of them in the order of ``docs/flags.md``.

Each function returns a fresh parser whose program name is the script's file name, so that
``python scripts/NAME.py --help`` and its one-line errors read as before. The scripts run with
these parsers (``entry_point(_main, parsers.train)``), and ``scripts/flag_reference.py`` writes
``docs/flags.md`` from :data:`PARSERS` without importing any script. The constants a parser
needs live here too: the presets of ``reproduce.py``, the flags of ``evaluate.py``'s local fit
and their defaults, the default files of ``make_mnist_subset.py`` and ``flag_reference.py``.
"""

import os

from evaluation.command_line.config_flags import flag
from evaluation.command_line.flags import (add_common_flags, add_data_flags,
                                           add_evaluation_flags, add_opened_run_flags,
                                           make_parser, make_training_parser)
from evaluation.reporting.exploration import DEFAULT_ESTIMATORS as EXPLORE_ESTIMATORS
from evaluation.verdicts import DEFAULT_ESTIMATORS
from inference.local import fit_local_guide
from models.base.registry import option_defaults
from models.utilities.entry_points import comma_list

#: the flags of evaluate.py's local fit and the parameters of fit_local_guide they set, whose
#: defaults are fit_local_guide's
LOCAL_FLAGS = {"local_steps": "num_steps", "local_learning_rate": "learning_rate",
               "local_particles": "num_particles"}
LOCAL_DEFAULTS = option_defaults(fit_local_guide, ("model", "guide", "x", "progress"))[0]

#: Burda et al. (2016), section 5; the flags of train.py each preset of reproduce.py sets
BURDA = {"dataset": "mnist", "binarize": "dynamic", "num_validation": 0,
         "hidden_dims": [200, 200], "activation": "tanh", "z_dim": 50,
         "prior": "standard", "guide": "diagonal", "likelihood": "bernoulli",
         "batch_size": 20, "learning_rate": 1e-3, "learning_rate_schedule": "burda",
         "adam_eps": 1e-4, "num_epochs": 3280}
SHORT_EPOCHS = 400
#: the ``-batch100`` variant: batch 100 (five times the images per step, about 2.8 times the
#: images per second on one CPU thread) and the schedule laid over 2,000 epochs
BATCH100 = {"batch_size": 100, "num_epochs": 2000}
PRESETS = {
    "burda-vae": dict(BURDA, objective="elbo", num_particles=1),
    "burda-iwae5": dict(BURDA, objective="iwae", num_particles=5),
    "burda-iwae50": dict(BURDA, objective="iwae", num_particles=50),
}
BASE_PRESETS = list(PRESETS.items())
PRESETS.update({f"{name}-short": dict(flags, num_epochs=SHORT_EPOCHS)
                for name, flags in BASE_PRESETS})
PRESETS.update({f"{name}-batch100": dict(flags, **BATCH100) for name, flags in BASE_PRESETS})

#: where make_mnist_subset.py writes the subset
SUBSET_OUT = os.path.join("models", "data", "assets", "mnist_subset.npz")
#: where flag_reference.py writes the reference of the flags
FLAGS_OUT = os.path.join("docs", "flags.md")


def train():
    return make_training_parser(
        "Train a VAE (Pyro model + amortized guide) by SVI with Trace_ELBO.", "train.py")


def evaluate():
    parser = make_parser("Estimate log p(x) per data point for a trained run.", "evaluate.py")
    parser.add_argument("run", help="a run folder (its best.pt is used) or a checkpoint file")
    group = add_evaluation_flags(parser, default_estimators=DEFAULT_ESTIMATORS)
    group.add_argument("--bdmc", type=int, default=None, metavar="N",
                       help="also run BDMC on N points simulated from the model")
    group.add_argument("--bdmc-tolerance", type=float, default=None, metavar="NATS",
                       help="with --bdmc: run BDMC first and double --ais-steps until its gap is "
                       "at most NATS (at most 16 times the steps given); the ais estimate then "
                       "uses those steps")
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
        local.add_argument(flag(name), type=type(default), default=None,
                           help=f"{what} of the local fit (default: {default})")
    add_opened_run_flags(parser, estimator_options=True)
    return parser


def compare():
    parser = make_parser("Compare estimates of log p(x) across runs, estimators and K.",
                         "compare.py")
    parser.add_argument("runs", nargs="+", help="run folders or checkpoints; the first is the "
                        "baseline of paired comparisons")
    group = add_evaluation_flags(parser, default_estimators=DEFAULT_ESTIMATORS, grid=True,
                                 num_data=100)
    group.add_argument("--out", default="comparison", help="folder for tables and plots")
    add_opened_run_flags(parser, estimator_options=True)
    return parser


def explore():
    parser = make_parser(
        "Figures of a trained run's generative story and a self-contained report.", "explore.py")
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
                       help="estimators of the report's table (default "
                       f"{','.join(EXPLORE_ESTIMATORS)})")
    table.add_argument("--num-samples", type=int, default=1000,
                       help="K of the report's evaluation table")
    table.add_argument("--eval-data", type=int, default=200,
                       help="test images in the report's evaluation table")
    table.add_argument("--evaluation", default=None,
                       help="take the table from this evaluate.py JSON instead")
    add_opened_run_flags(parser)
    return parser


def tutorial():
    parser = make_parser(
        "Train a 2-D-latent VAE, draw its figures and write docs/tutorial.md.", "tutorial.py")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "mnist-subset"))
    parser.add_argument("--num-epochs", type=int, default=10)
    parser.add_argument("--run", default=os.path.join("runs", "tutorial-z2"),
                        help="run folder (reused when it holds a finished run)")
    parser.add_argument("--docs", default="docs", help="where tutorial.md and figures/ go")
    parser.add_argument("--index", type=int, default=0, help="the test image of section 3")
    parser.add_argument("--z", type=comma_list(float), default=[0.1, 0.5],
                        help="the blueprint of section 2")
    parser.add_argument("--convergence-k", type=comma_list(int),
                        default=[1, 10, 100, 1000, 10000], help="K values of section 4")
    parser.add_argument("--eval-data", type=int, default=1000,
                        help="test images in the evaluation table")
    parser.add_argument("--num-samples", type=int, default=1000,
                        help="K of the evaluation table")
    add_opened_run_flags(parser)
    return parser


def make_mnist_subset():
    parser = make_parser("Make the small MNIST subset that ships with the project.",
                         "make_mnist_subset.py")
    add_data_flags(parser, source=False)
    group = parser.add_argument_group("subset")
    group.add_argument("--num-train", type=int, default=2000,
                       help="how many of the first training images to keep")
    group.add_argument("--num-test", type=int, default=500,
                       help="how many of the first test images to keep")
    group.add_argument("--out", default=SUBSET_OUT, help="the .npz file to write")
    group.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def benchmark_mixture():
    # The script's whole docstring: its --help has always shown it (as one paragraph).
    parser = make_parser(
        "Time log p(z) of a mixture of diagonal Gaussians: "
        "``models.distributions.DiagonalNormalMixture`` (matrix products) against "
        "``torch.distributions.MixtureSameFamily`` (broadcasting) on the same z, side by side "
        "in one run, and report the ratio and the largest difference from a float64 "
        "reference.\n\n"
        "The default sizes are those of one evaluation chunk of a VampPrior with 500 "
        "pseudo-inputs and z_dim = 50 on MNIST (5,350 (particle, data point) pairs); the mog "
        "prior is the same computation with K = 10. Absolute times mean something only on the "
        "device they were measured on::\n\n"
        "    python scripts/benchmark_mixture.py --device cpu\n"
        "    python scripts/benchmark_mixture.py --device cuda --num-points 20000\n",
        "benchmark_mixture.py")
    group = parser.add_argument_group("sizes")
    group.add_argument("--num-components", type=int, default=500)
    group.add_argument("--z-dim", type=int, default=50)
    group.add_argument("--num-points", type=int, default=5350)
    group.add_argument("--repeats", type=int, default=5)
    add_common_flags(parser)
    return parser


def flag_reference():
    parser = make_parser("Write the reference of every script's flags (docs/flags.md).",
                         "flag_reference.py")
    parser.add_argument("--out", default=FLAGS_OUT, help="the Markdown file to write")
    parser.add_argument("--check", action="store_true",
                        help="compare with the file instead of writing it")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def benchmark():
    parser = make_parser("Time the project's training step and importance estimate "
                         "against hand-written PyTorch, side by side.", "benchmark.py")
    group = parser.add_argument_group("benchmark")
    group.add_argument("--quick", action="store_true",
                       help="a short run (about a minute on two CPU cores): K=1000 only, no "
                       "full epoch")
    group.add_argument("--batch-sizes", type=comma_list(int), default=None,
                       help="training batch sizes (default: 128,1024)")
    group.add_argument("--num-samples", type=comma_list(int), default=None,
                       help="K of the importance estimates (default: 1000,5000; --quick: 1000)")
    group.add_argument("--variants", type=comma_list(str), default=["jit"],
                       help="losses of the project's step: jit (the default of train.py; on "
                       "CUDA with its CUDA graph), no-graph (--no-cuda-graph), plain (--no-jit), "
                       "compile (torch.compile of the plain loss); jit and plain also time the "
                       "estimate with its chunks "
                       "traced by the JIT (the estimators' default) and without")
    group.add_argument("--blocks", type=int, default=7, help="interleaved blocks of training")
    group.add_argument("--steps", type=int, default=30, help="training steps per block")
    group.add_argument("--eval-blocks", type=int, default=9,
                       help="interleaved blocks of evaluation")
    group.add_argument("--eval-data", type=int, default=200, help="test images scored")
    group.add_argument("--ais-data", type=int, default=50,
                       help="test images of the AIS row (AIS from the guide against its floor)")
    group.add_argument("--ais-chains", type=int, default=16, help="AIS chains per data point")
    group.add_argument("--ais-steps", type=int, default=50,
                       help="AIS steps (intermediate distributions; --quick: at most 20)")
    group.add_argument("--ais-leapfrog", type=int, default=10,
                       help="leapfrog steps per HMC transition")
    group.add_argument("--ais-blocks", type=int, default=5,
                       help="interleaved blocks of AIS (--quick: at most 3)")
    group.add_argument("--no-ais", action="store_true", help="leave out the AIS row")
    group.add_argument("--z-dim", type=int, default=50)
    group.add_argument("--hidden-dims", type=comma_list(int), default=[512, 256])
    group.add_argument("--out", default=None, help="write the numbers here as JSON")
    group.add_argument("--markdown", default=None,
                       help="append the tables, as a dated Markdown section, to the end of this "
                       "file (made if absent; its text is kept); none without it")
    add_data_flags(parser, source=False)
    add_common_flags(parser)
    return parser


def reproduce():
    parser = make_training_parser(
        "Train and score a model by a published protocol (Burda et al. 2016): the preset fills "
        "every training flag not given.", "reproduce.py")
    parser.add_argument("preset", choices=sorted(PRESETS),
                        help="the protocol; -short: the schedule over 400 epochs; -batch100: "
                             "batch 100, the schedule over 2,000 epochs")
    group = parser.add_argument_group("learning curve and final score")
    group.add_argument("--curve-epochs", type=comma_list(int), default=None,
                       help="epochs after which to score the model for the learning curve "
                       "(default: 1,2,5,10,20,50,... and the last)")
    group.add_argument("--curve-samples", type=int, default=1000,
                       help="K of the learning-curve scores")
    group.add_argument("--curve-data", type=int, default=1000,
                       help="test images of the learning-curve scores (the first ones)")
    group.add_argument("--eval-samples", type=int, default=5000,
                       help="K of the final importance-sampling score")
    group.add_argument("--eval-data", type=int, default=10000,
                       help="test images of the final score (the first ones; all 10,000 by "
                       "default)")
    return parser


def reproduce_report():
    parser = make_parser("The table and learning curves of reproduce.py runs beside the "
                         "published numbers.", "reproduce_report.py")
    parser.add_argument("runs", nargs="+", help="run folders of reproduce.py (the first is the "
                        "baseline of the paired differences)")
    parser.add_argument("--labels", type=lambda text: text.split(","), default=None,
                        help="names of the runs, comma-separated (default: the folder names)")
    parser.add_argument("--out", default=None, help="write the Markdown tables here")
    parser.add_argument("--figure", default=None, help="draw the learning curves here (PNG)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that exist already")
    return parser


#: {script file: function that makes its parser}, in the order of docs/flags.md
PARSERS = {f"{make.__name__}.py": make for make in (
    train, evaluate, compare, explore, tutorial, make_mnist_subset, benchmark_mixture,
    flag_reference, benchmark, reproduce, reproduce_report)}

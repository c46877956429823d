"""Train a VAE by SVI: the generative story as a Pyro model, the encoder as its guide.

Examples::

    python scripts/train.py --dataset mnist-subset --num-epochs 5 --out runs/demo
    python scripts/train.py --data-dir ../data --num-epochs 10 --z-dim 50
    python scripts/train.py --out runs/demo --resume --num-epochs 20
"""

import argparse
import os
import time

import pyro

from inference.build import build
from inference.checkpoint import LAST, load_checkpoint
from inference.cli import HelpFormatter, comma_list, run
from inference.data import (BINARIZATIONS, DATASETS, SYNTHETIC_PRIORS, default_data_dir,
                            load_dataset)
from inference.guides import GUIDES
from inference.objectives import OBJECTIVES
from inference.training import fit, resolve_device
from models import DECODERS, LIKELIHOODS, PRIORS, ConfigError, lookup
from models.networks import ACTIVATIONS

# Flags that may change when a run is resumed; every other setting comes from the checkpoint.
RESUMABLE_OVERRIDES = ("num_epochs", "device", "data_dir", "download")
NOT_CONFIG = ("out", "resume", "no_progress")


def make_config(args):
    config = {key: value for key, value in vars(args).items() if key not in NOT_CONFIG}
    likelihood = lookup(LIKELIHOODS, config["likelihood"], "likelihood")
    if config["dataset"] == "synthetic":
        # Synthetic data are drawn from their own story and need no binarization.
        if config["binarize"] not in (None, "none"):
            raise ConfigError("--binarize does not apply to --dataset synthetic; drop it")
        config["binarize"] = "none"
    elif config["binarize"] is None:
        config["binarize"] = likelihood.binarize[0]
    elif config["binarize"] not in likelihood.binarize:
        raise ConfigError(
            f"the {config['likelihood']} likelihood needs --binarize "
            f"{' or '.join(likelihood.binarize)}, got --binarize {config['binarize']}")
    if config["z_dim"] < 1:
        raise ConfigError(f"--z-dim must be at least 1, got {config['z_dim']}")
    if config["data_dir"] is None:
        config["data_dir"] = default_data_dir()
    return config


def resume_config(args, parser, checkpoint):
    config = dict(checkpoint["config"])
    for key, value in vars(args).items():
        if key in NOT_CONFIG or key not in config:
            continue
        if key in RESUMABLE_OVERRIDES:
            if value is not None and value != parser.get_default(key):
                config[key] = value
        elif value != parser.get_default(key) and value != config[key]:
            raise ConfigError(
                f"--{key.replace('_', '-')} {value} differs from the resumed run's "
                f"{config[key]}; drop the flag or start a new run with another --out")
    return config


def main(args, parser=None):
    parser = parser or make_parser()
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = os.path.join("runs", f"{args.dataset}-z{args.z_dim}-{stamp}")
    last = os.path.join(args.out, LAST)
    checkpoint = None
    if args.resume and os.path.isfile(last):
        checkpoint = load_checkpoint(last, prefer=LAST)
        config = resume_config(args, parser, checkpoint)
        pyro.set_rng_seed(config["seed"])
    else:
        if os.path.isfile(last):
            raise ConfigError(f"{args.out} already holds a run; pass --resume to continue it "
                              "or choose another --out")
        if args.resume:
            print(f"no checkpoint in {args.out} yet; starting a new run there")
        config = make_config(args)

    device = resolve_device(config["device"])
    dataset = load_dataset(config, device)
    config.update(x_dim=dataset.x_dim, image_shape=dataset.image_shape)
    model, guide = build(config)
    model, guide = model.to(device), guide.to(device)
    if checkpoint is not None:
        from inference.checkpoint import load_state

        load_state(model, checkpoint["model"], "model", last)
        load_state(guide, checkpoint["guide"], "guide", last)
    print(f"training on {device}: {len(dataset.train)} {dataset.name} points "
          f"({config['binarize']} binarization), z_dim={config['z_dim']}, "
          f"{config['num_epochs']} epochs of minibatches of {config['batch_size']}")
    summary = fit(model, guide, dataset, config, args.out, checkpoint=checkpoint,
                  progress=not args.no_progress)
    print(f"test ELBO {summary['test_elbo']:.3f} nats per data point "
          f"({summary['num_test']} test points, best epoch {summary['best_epoch']} of "
          f"{summary['epochs']}, {summary['seconds_per_epoch']:.1f} s per epoch)")
    files = sorted(name for name in os.listdir(args.out) if not name.startswith("."))
    print(f"files in {args.out}: {', '.join(files)}")
    return summary


def make_parser():
    parser = argparse.ArgumentParser(
        description="Train a VAE (Pyro model + amortized guide) by SVI with Trace_ELBO.",
        formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="mnist",
                      help="mnist: the full data set from --data-dir; mnist-subset: 2,000/500 "
                      "images shipped with the package; synthetic: drawn from a known story")
    data.add_argument("--data-dir", default=None,
                      help="folder holding MNIST/raw/ (default: $VAE_DATA_DIR, else ./data)")
    data.add_argument("--download", action="store_true",
                      help="download MNIST into --data-dir if it is missing (needs a network)")
    data.add_argument("--binarize", choices=BINARIZATIONS, default=None,
                      help="dynamic: fresh Bernoulli draw per use; static: one fixed draw; "
                      "none: grey levels (default: what the likelihood needs)")
    data.add_argument("--num-validation", type=int, default=None,
                      help="training images held out for validation (default 10000 for mnist, "
                      "200 for mnist-subset)")
    data.add_argument("--synthetic-z-dim", type=int, default=2,
                      help="latent dimension of the true story of --dataset synthetic")
    data.add_argument("--synthetic-x-dim", type=int, default=50,
                      help="data dimension of the synthetic data")
    data.add_argument("--synthetic-num-train", type=int, default=5000,
                      help="synthetic training points (validation and test: 1000 each)")
    data.add_argument("--synthetic-seed", type=int, default=0,
                      help="seed of the true decoder and of the synthetic draws")
    data.add_argument("--synthetic-prior", choices=SYNTHETIC_PRIORS, default="standard",
                      help="the true prior of the synthetic story: N(0, I) or a mixture of 8 "
                      "Gaussians on a circle")

    model = parser.add_argument_group("model and guide")
    model.add_argument("--prior", default="standard",
                       help=f"one of {', '.join(PRIORS)}, or module:Class for your own")
    model.add_argument("--prior-components", type=int, default=None,
                       help="components of the mog prior (default 10) or pseudo-inputs of the "
                       "vamp prior (default 500)")
    model.add_argument("--prior-flows", type=int, default=4,
                       help="masked autoregressive layers of the flow prior")
    model.add_argument("--likelihood", default="bernoulli",
                       help=f"one of {', '.join(LIKELIHOODS)}")
    model.add_argument("--sigma", type=float, default=0.1,
                       help="the fixed standard deviation of the gaussian likelihood")
    model.add_argument("--min-scale", type=float, default=0.01,
                       help="the smallest standard deviation of the gaussian-learned likelihood")
    model.add_argument("--guide", default="diagonal", help=f"one of {', '.join(GUIDES)} "
                       "(local: at evaluation only), or module:Class for your own")
    model.add_argument("--guide-flows", type=int, default=2,
                       help="inverse autoregressive flow steps of the iaf guide")
    model.add_argument("--flow-hidden", type=int, default=None,
                       help="hidden units of the autoregressive networks of the flow prior and "
                       "the iaf guide (default max(64, 4 * z_dim))")
    model.add_argument("--architecture", default="mlp",
                       help=f"one of {', '.join(DECODERS)} (conv: for 28x28 images; the encoder "
                       "mirrors the decoder)")
    model.add_argument("--z-dim", type=int, default=50, help="dimension of the latent z")
    model.add_argument("--hidden-dims", type=comma_list(int), default=[512, 256],
                       help="encoder hidden sizes, comma-separated; the decoder mirrors them")
    model.add_argument("--activation", default="relu", help=f"one of {', '.join(ACTIVATIONS)}")

    training = parser.add_argument_group("training")
    training.add_argument("--num-epochs", type=int, default=10,
                          help="passes over the training split (in total, when resuming)")
    training.add_argument("--batch-size", type=int, default=128, help="minibatch size B")
    training.add_argument("--learning-rate", type=float, default=1e-3, help="Adam step size")
    training.add_argument("--objective", default="elbo", choices=OBJECTIVES,
                          help="elbo: Trace_ELBO; meanfield: TraceMeanField_ELBO (analytic KL "
                          "where it exists); iwae: the importance-weighted bound")
    training.add_argument("--num-particles", type=int, default=1,
                          help="draws of z per data point and step (K of the iwae bound)")
    training.add_argument("--kl-warmup-epochs", type=float, default=0,
                          help="scale log p(z) - log q(z|x) from ~0 to 1 over this many epochs")
    training.add_argument("--jit", action="store_true", help="use JitTrace_ELBO")
    training.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    training.add_argument("--seed", type=int, default=0,
                          help="seeds torch and Pyro; a run on the CPU is a function of it")
    training.add_argument("--out", default=None,
                          help="run folder (default: runs/<dataset>-z<z-dim>-<time>)")
    training.add_argument("--resume", action="store_true",
                          help="continue the run in --out from its last checkpoint")
    training.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


if __name__ == "__main__":
    parser = make_parser()
    run(lambda args: main(args, parser), parser)

"""Synthetic data drawn from a known generative story (a VAE with a fixed random decoder),
with the true z of every point and the true model kept beside the data."""

import math

import torch
from pyro import poutine

from models.base.config import SYNTHETIC_PRIORS
from models.utilities.device import check_fits
from models.data.splits import DataError, Dataset, Split


def synthetic_story(z_dim=2, x_dim=50, likelihood="bernoulli", sigma=0.1, seed=0, hidden_dim=64,
                    prior="standard"):
    """A VAE with a fixed random decoder: the known generative story of the synthetic data.

    z ~ N(0, I_{z_dim}) (``prior="standard"``) or, for ``prior="mixture"``, an equal mixture of
    8 Gaussians with scale 0.15 whose means lie on a circle of radius 2.5 in the first two latent
    dimensions (clusters that a standard normal prior can only mimic by folding its mass);
    f(z) = W2 tanh(W1 z + b1) + b2 with W1, b1 ~ N(0, 1) and W2 ~ N(0, 9 / hidden_dim), so each
    logit (or mean) varies over several units with z and x carries real information about z;
    x ~ Bernoulli(sigmoid(f(z))) or N(f(z), sigma^2 I).
    """
    from models import build_model

    if prior not in SYNTHETIC_PRIORS:
        raise DataError(f"unknown synthetic prior {prior!r}; valid: {', '.join(SYNTHETIC_PRIORS)}")
    likelihood_options = {"sigma": sigma} if likelihood == "gaussian" else {}
    config = {"z_dim": z_dim, "x_dim": x_dim,
              "architecture": {"name": "mlp", "options": {"hidden_dims": [hidden_dim],
                                                          "activation": "tanh"}},
              "likelihood": {"name": likelihood, "options": likelihood_options},
              "prior": {"name": "mog", "options": {"num_components": 8}}
              if prior == "mixture" else "standard"}
    model = build_model(config)
    if prior == "mixture":
        angles = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
        with torch.no_grad():
            model.prior.logits.zero_()
            model.prior.locs.zero_()
            model.prior.locs[:, 0] = 2.5 * angles.cos()
            if z_dim > 1:
                model.prior.locs[:, 1] = 2.5 * angles.sin()
            # the prior's scale is softplus(raw + log(e - 1)) + 1e-4, so 0.15 (plus that floor)
            model.prior.raw_scales.fill_(math.log(math.exp(0.15) - 1.0) - math.log(math.e - 1.0))
    generator = torch.Generator().manual_seed(seed)
    first, last = model.decoder[0], model.decoder[-1]
    with torch.no_grad():
        first.weight.copy_(torch.randn(first.weight.shape, generator=generator))
        first.bias.copy_(torch.randn(first.bias.shape, generator=generator))
        last.weight.copy_(torch.randn(last.weight.shape, generator=generator)
                          * 3.0 / hidden_dim ** 0.5)
        last.bias.copy_(torch.randn(last.bias.shape, generator=generator))
    model.requires_grad_(False)
    return model.eval()


def make_synthetic(config):
    """Draw train, validation and test data from :func:`synthetic_story` by running its model
    forwards (the story at test time), keeping the true z of every point. The story's
    likelihood is the run's (with its ``sigma`` for ``gaussian``); ``config``: a RunConfig."""
    from models.likelihoods import LIKELIHOODS

    data = config.data
    sizes = {"train": data.synthetic_num_train, "validation": 1000, "test": 1000}
    likelihood = LIKELIHOODS.resolve(config.model.likelihood)
    # The points, their latents and the decoder's output at once, and the story's decoder.
    num_points, hidden = sum(sizes.values()), 64
    check_fits(4 * (num_points * (3 * data.synthetic_x_dim + data.synthetic_z_dim)
                    + (hidden + 1) * (data.synthetic_x_dim + data.synthetic_z_dim + 1)),
               f"synthetic data of {num_points} points with synthetic_x_dim="
               f"{data.synthetic_x_dim} and synthetic_z_dim={data.synthetic_z_dim}",
               "choose smaller --synthetic-x-dim, --synthetic-z-dim or --synthetic-num-train")
    story = synthetic_story(z_dim=data.synthetic_z_dim, x_dim=data.synthetic_x_dim,
                            likelihood=likelihood.name,
                            sigma=likelihood.options.get("sigma", 0.1),
                            seed=data.synthetic_seed, prior=data.synthetic_prior)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(data.synthetic_seed + 1)
        trace = poutine.trace(story).get_trace(batch_size=sum(sizes.values()))
    x, z = trace.nodes["x"]["value"], trace.nodes["z"]["value"]
    splits, start = {}, 0
    for name, size in sizes.items():
        labels = torch.full((size,), -1, dtype=torch.long)
        splits[name] = Split(x[start:start + size], labels, latents=z[start:start + size])
        start += size
    info = {"z_dim": story.z_dim, "x_dim": story.x_dim, "likelihood": likelihood}
    return Dataset("synthetic", x_dim=story.x_dim, true_model=story, info=info, **splits)

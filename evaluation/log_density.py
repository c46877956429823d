"""The unnormalized log posterior of the latent z as a differentiable function, for AIS and
quadrature: z -> (log p(z), log p(x | z)) for every data point at once.

For a :class:`models.VAE` the story's own parts are called directly (prior, decoder, likelihood),
which is what the Pyro model computes, without tracing overhead on each of the thousands of
evaluations an annealing run makes. Any other Pyro model with a single latent site ``"z"`` in the
data plate goes through :func:`inference.log_weights.log_joint`; the two paths agree (tested).
"""

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from inference.log_weights import _Scorer, log_joint
from models.vae import VAE


class LatentLogDensity:
    """log p(z) and log p(x_n | z) of a model for the data x (N, x_dim), at z of shape (C, N, D)."""

    def __init__(self, model, x, use_model_parts=True):
        self.model, self.x = model, x
        self.direct = use_model_parts and isinstance(model, VAE)
        if self.direct:
            self.z_dim = model.z_dim
            return
        with poutine.block(), torch.no_grad():
            trace = prune_subsample_sites(poutine.trace(model).get_trace(x[:1]))
        latents = [name for name, site in trace.nodes.items()
                   if site["type"] == "sample" and not site["is_observed"]]
        if latents != ["z"]:
            raise ValueError(f"AIS and quadrature need a model with one latent site 'z', this "
                             f"model has {latents}; use importance sampling instead")
        self.z_dim = trace.nodes["z"]["value"].shape[-1]

    @torch.no_grad()
    def sample_prior(self, num_chains):
        """z ~ p(z) for each of C chains and N data points, shape (C, N, D)."""
        if self.direct:
            return self.model.prior().sample((num_chains, self.x.shape[0]))
        trace, _, _ = _Scorer(self.model, None, self.x).run(self.model, self.x, num_chains)
        z = trace.nodes["z"]["value"]
        return z.expand(num_chains, self.x.shape[0], self.z_dim)

    def __call__(self, z):
        """(log_prior, log_likelihood), each of shape z.shape[:-1]."""
        if self.direct:
            log_prior = self.model.prior().log_prob(z)
            log_likelihood = self.model.likelihood(self.model.decoder(z)).log_prob(self.x)
            return log_prior, log_likelihood
        lead = z.shape[:-2]
        flat = z.reshape(-1, *z.shape[-2:])
        log_prior, log_likelihood = log_joint(self.model, self.x, {"z": flat})
        return log_prior.reshape(*lead, -1), log_likelihood.reshape(*lead, -1)

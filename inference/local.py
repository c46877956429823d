"""Fit a non-amortized guide on fixed data points (the ``local`` guide).

For each data point x_n the parameters lambda_n of q(z | lambda_n) are optimized directly to
maximize ELBO_n = E_q[log p(x_n, z) - log q(z | lambda_n)], starting from the encoder's
lambda_phi(x_n). The model and the encoder stay fixed. The result is the best guide of the
encoder's family for each point (as far as the optimizer gets), which is what the gap
decomposition of Cremer et al. (2018) needs.
"""

import torch
from tqdm.auto import tqdm

from inference.log_weights import log_importance_weights
from inference.guides import LocalGuide


def fit_local_guide(model, guide, x, num_steps=500, learning_rate=1e-2, num_particles=8,
                    progress=False):
    """Return a :class:`LocalGuide` for the points ``x`` fitted by Adam on their ELBO.

    :param guide: the amortized Gaussian guide (``diagonal`` or ``fullcov``) to warm-start from.
    :param int num_particles: draws of z per point and step of the reparameterized ELBO.
    :returns: (local_guide, history) where history holds the mean ELBO per point every step.
    """
    if int(num_steps) < 0:
        raise ValueError(f"--local-steps must be >= 0, got {num_steps}")
    if not learning_rate > 0:
        raise ValueError(f"--local-learning-rate must be positive, got {learning_rate}")
    local = LocalGuide(guide, x).to(x.device)
    optimizer = torch.optim.Adam(local.parameters(), lr=learning_rate)
    frozen = [(p, p.requires_grad) for p in list(model.parameters()) + list(guide.parameters())]
    history = []
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        bar = tqdm(range(int(num_steps)), desc="fitting the local guide", unit="step",
                   disable=not progress, leave=False, dynamic_ncols=True)
        for _ in bar:
            optimizer.zero_grad()
            elbo = log_importance_weights(model, local, x, num_particles).mean(0)
            # Each point's parameters get the gradient of its own ELBO: the points do not interact.
            (-elbo.sum()).backward()
            optimizer.step()
            history.append(elbo.mean().item())
            bar.set_postfix_str(f"ELBO {history[-1]:.2f}")
    finally:
        for p, requires_grad in frozen:
            p.requires_grad_(requires_grad)
    return local, history

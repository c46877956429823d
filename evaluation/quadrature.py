"""Numerical integration of log p(x) = log ∫ p(x | z) p(z) dz for latent dimension 1 or 2.

z is all of a model's latents for one data point, flattened (see
:class:`evaluation.log_density.LatentLogDensity`): one site of one or two dimensions, or two
one-dimensional sites, whatever they are called.

For each data point the integrand p(x | z) p(z) is evaluated on a uniform grid with the midpoint
rule. The grid adapts to where the posterior mass is: a coarse grid over [-box, box]^D locates the
posterior, then twice the grid is re-centred on the posterior mean with a half-width of ``width``
posterior standard deviations (at least one coarse cell); finally the number of points per
dimension is doubled until log p-hat changes by less than ``tolerance`` nats. The midpoint rule
converges fast for smooth integrands that vanish at the edges of the box, so the last change
bounds the remaining error. This gives an almost exact reference for any decoder, which is what
the sampling estimators are checked against. Posterior modes far narrower than the coarse grid's
cells and far from the main mass can be missed; the coarse grid is fine enough for VAEs whose
prior is a standard normal.
"""

import math

import torch

from evaluation.log_density import LatentLogDensity
from inference.log_weights import default_max_batch_elements

MAX_LATENT_DIM = 2


def _grid(lo, hi, points):
    """Cell midpoints (G, N, D) of a grid with ``points`` cells per dimension over the boxes
    [lo_n, hi_n], and the log cell volume (N,)."""
    num_data, z_dim = lo.shape
    fractions = (torch.arange(points, dtype=lo.dtype, device=lo.device) + 0.5) / points
    axes = lo.unsqueeze(0) + fractions.view(-1, 1, 1) * (hi - lo).unsqueeze(0)   # (P, N, D)
    if z_dim == 1:
        grid = axes
    else:
        first = axes[:, :, 0].unsqueeze(1).expand(points, points, num_data)
        second = axes[:, :, 1].unsqueeze(0).expand(points, points, num_data)
        grid = torch.stack([first, second], -1).reshape(points * points, num_data, 2)
    log_volume = ((hi - lo) / points).log().sum(-1)
    return grid, log_volume


def _integrate(density, lo, hi, points, max_batch_elements, dtype):
    """log ∫ over the boxes, and the posterior mean and standard deviation per dimension."""
    grid, log_volume = _grid(lo, hi, points)
    log_f = torch.empty(grid.shape[:2], dtype=torch.float64, device=lo.device)
    step = max(1, int(max_batch_elements) // grid.shape[1])
    for begin in range(0, grid.shape[0], step):
        z = grid[begin:begin + step].to(dtype)
        log_prior, log_likelihood = density(z)
        log_f[begin:begin + step] = (log_prior + log_likelihood).double()
    log_integral = torch.logsumexp(log_f, 0) + log_volume
    weights = torch.softmax(log_f, 0).unsqueeze(-1)                     # (G, N, 1)
    mean = (weights * grid).sum(0)
    sd = ((weights * (grid - mean) ** 2).sum(0)).clamp(min=0).sqrt()
    return log_integral, mean, sd


@torch.no_grad()
def quadrature_log_marginal(model, x, *, tolerance=1e-4, box=8.0, width=10.0,
                            coarse_points=None, max_points=None, max_batch_elements=None):
    """log p(x_n) by adaptive grid integration for each row of x.

    :returns: (log_px (N,), error (N,), points (N,)): the estimate, the size of its last change
        under refinement (an estimate of the numerical error) and the grid points per dimension.
    """
    density = LatentLogDensity(model, x[:1])
    z_dim = density.z_dim
    if z_dim > MAX_LATENT_DIM:
        sites = ", ".join(f"{name} {tuple(shape)}" for name, shape in density.sites)
        raise ValueError(f"quadrature integrates over at most {MAX_LATENT_DIM} latent dimensions "
                         f"but this model has z_dim={z_dim} (latent sites: {sites}); use "
                         "importance or ais instead")
    if not tolerance > 0:
        raise ValueError(f"the quadrature tolerance must be positive, got {tolerance}")
    coarse_points = coarse_points or _coarse_points(z_dim)
    max_points = max_points or (1024 if z_dim == 2 else 1 << 16)
    if max_batch_elements is None:
        max_batch_elements = default_max_batch_elements(x[0].numel(), x.device)
    dtype = x.dtype
    per_chunk = max(1, int(max_batch_elements) // coarse_points ** z_dim)
    results = [], [], []
    for begin in range(0, x.shape[0], per_chunk):
        x_chunk = x[begin:begin + per_chunk]
        chunk_density = LatentLogDensity(model, x_chunk)
        estimate, error, points = _adaptive(chunk_density, x_chunk.shape[0], z_dim, x.device,
                                            tolerance, box, width, coarse_points, max_points,
                                            max_batch_elements, dtype)
        for store, value in zip(results, (estimate, error, points)):
            store.append(value)
    return tuple(torch.cat(store) for store in results)


def _coarse_points(z_dim):
    return 64 if z_dim == 2 else 512


def points_per_chunk(model, x, max_batch_elements):
    """How many data points :func:`quadrature_log_marginal` refines together (its grid of
    chunks starts at the first point): the results of a point depend on the others of its chunk
    through the shared refinement."""
    z_dim = LatentLogDensity(model, x[:1]).z_dim
    return max(1, int(max_batch_elements) // _coarse_points(z_dim) ** z_dim)


def _adaptive(density, num_data, z_dim, device, tolerance, box, width, coarse_points,
              max_points, max_batch_elements, dtype):
    lo = torch.full((num_data, z_dim), -float(box), dtype=torch.float64, device=device)
    hi = -lo
    points = coarse_points
    for _ in range(3):
        log_integral, mean, sd = _integrate(density, lo, hi, points, max_batch_elements, dtype)
        cell = (hi - lo) / points
        half = width * torch.maximum(sd, cell)
        lo, hi = mean - half, mean + half
    log_integral, _, _ = _integrate(density, lo, hi, points, max_batch_elements, dtype)
    error = torch.full((num_data,), math.inf, dtype=torch.float64, device=device)
    while points < max_points:
        points *= 2
        refined, _, _ = _integrate(density, lo, hi, points, max_batch_elements, dtype)
        error = (refined - log_integral).abs()
        log_integral = refined
        if (error < tolerance).all():
            break
    return log_integral, error, torch.full((num_data,), points, device=device)

"""The numbers behind the pictures of the generative story, computed from a trained model.

Each function returns plain tensors and values (what a figure shows, and what a test or a
tutorial quotes); :mod:`evaluation.reporting.figures` draws them.

- :func:`latent_map`: encoder means of data points and a 2-D view of them (PCA for z_dim > 2);
- :func:`latent_grid`: decoded means E[x | z] on a grid at quantiles of the run's own prior;
- :func:`blueprint`: one z, its decoded mean f(z) and draws x ~ p(x | z);
- :func:`posterior_view`: prior, guide and true posterior of one data point, and how many naive
  prior draws carry its importance weight;
- :func:`reconstructions` and :func:`samples`: the story backwards and forwards.
"""

import math

import torch
from pyro import poutine

from evaluation.diagnostics import effective_sample_size
from evaluation.log_density import LatentLogDensity
from models.priors import StandardNormalPrior


def image_shape_of(model, image_shape=None):
    """(height, width) of the model's data seen as images; an error for data that are not."""
    if image_shape is None:
        side = int(round(math.sqrt(model.x_dim)))
        if side * side != model.x_dim:
            raise ValueError(f"cannot show data of dimension {model.x_dim} as images; pass "
                             "image_shape (these figures are for image data such as MNIST)")
        image_shape = (side, side)
    return tuple(int(s) for s in image_shape)


@torch.no_grad()
def encoder_means(guide, x, num_draws=64):
    """The mean of q(z | x) for each row of x: exact where the distribution knows it (Gaussian
    guides), else the average of ``num_draws`` draws (flows such as ``iaf``)."""
    q = guide.distribution(x)
    try:
        return q.mean
    except NotImplementedError:
        return q.sample((num_draws,)).mean(0)


def project(z):
    """2-D coordinates of z (N, D), the axis names and a description of the projection."""
    if z.shape[-1] == 2:
        return z, ("z_1", "z_2"), "encoder means (the latent space itself)"
    if z.shape[-1] == 1:
        return torch.cat([z, torch.zeros_like(z)], -1), ("z_1", ""), "encoder means (1-D)"
    centred = z - z.mean(0)
    _, singular, right = torch.linalg.svd(centred, full_matrices=False)
    share = (singular[:2] ** 2).sum() / (singular ** 2).sum()
    return (centred @ right[:2].T, ("principal component 1", "principal component 2"),
            f"PCA of the {z.shape[-1]}-D encoder means ({100 * share:.0f}% of their variance)")


def latent_map(guide, x, labels):
    """Encoder means E_q[z | x] of the rows of x in two dimensions, with their labels and the
    median position of each label: {coordinates, axes, method, labels, centres}."""
    coordinates, axes, method = project(encoder_means(guide, x).cpu())
    labels = torch.as_tensor(labels).cpu()
    centres = {int(label): coordinates[labels == label].median(0).values.tolist()
               for label in sorted(set(labels.tolist()))}
    return {"coordinates": coordinates, "axes": axes, "method": method, "labels": labels,
            "centres": centres}


def nearest_labels(z_means, labels, z, count=25):
    """Which labels the encoder gives the ``count`` data points whose encoder means lie nearest
    to the latent point z: {"blueprint_region_label", "blueprint_region_share", ...}."""
    labels = torch.as_tensor(labels).cpu()
    distances = (z_means - z.reshape(1, -1)).norm(dim=-1)
    nearest = labels[distances.argsort()[:min(count, len(labels))]]
    values, counts = nearest.unique(return_counts=True)
    best = counts.argmax()
    return {"blueprint_region_label": int(values[best]),
            "blueprint_region_share": counts[best].item() / nearest.numel(),
            "blueprint_region_count": int(nearest.numel())}


@torch.no_grad()
def prior_quantiles(model, probabilities, num_draws=20000):
    """Quantiles of each latent dimension under the run's own prior, shape (P, z_dim), its
    medians (z_dim,) and a description. Exact for the standard normal prior; otherwise
    empirical, from ``num_draws`` draws of p(z)."""
    probabilities = torch.as_tensor(probabilities, dtype=torch.float64)
    if isinstance(model.prior, StandardNormalPrior):
        values = torch.distributions.Normal(0.0, 1.0).icdf(probabilities)
        values = values.unsqueeze(-1).expand(-1, model.z_dim)
        return values.float(), torch.zeros(model.z_dim), "quantiles of the prior N(0, 1)"
    draws = model.prior().sample((num_draws,)).double().cpu()
    values = torch.quantile(draws, probabilities, dim=0)
    medians = draws.median(0).values
    name = type(model.prior).__name__
    return (values.float(), medians.float(),
            f"empirical quantiles of the run's prior ({name}, {num_draws} draws)")


@torch.no_grad()
def latent_grid(model, grid_size=15, directions=(0, 1), low=0.03, high=0.97,
                image_shape=None):
    """Decoded means f(z) on a grid_size x grid_size grid of z along latent dimensions
    ``directions``: each coordinate runs over the quantiles ``low``..``high`` of the run's own
    prior in that dimension; every other dimension sits at the prior's median.

    :returns: dict with ``columns`` and ``rows`` (the z values of the grid's columns, first
        direction, and rows, second direction, top to bottom), ``images`` (grid_size,
        grid_size, H, W), ``directions``, the ``probabilities`` and a ``description``.
    """
    image_shape = image_shape_of(model, image_shape)
    first, second = (int(d) for d in directions)
    if model.z_dim == 1:
        second = None
    elif not (0 <= first < model.z_dim and 0 <= second < model.z_dim and first != second):
        raise ValueError(f"--directions must be two different latent dimensions in "
                         f"0..{model.z_dim - 1}, got {list(directions)}")
    probabilities = torch.linspace(low, high, grid_size, dtype=torch.float64)
    quantiles, medians, description = prior_quantiles(model, probabilities)
    device = next(model.parameters()).device
    z = medians.to(device).expand(grid_size, grid_size, model.z_dim).clone()
    columns = quantiles[:, first]
    z[..., first] = columns.to(device).view(1, -1)
    rows = None
    if second is not None:
        rows = quantiles[:, second].flip(0)            # upwards on the page
        z[..., second] = rows.to(device).view(-1, 1)
    if model.z_dim > 2:
        description += "; all other dimensions at the prior's median"
    images = model.decode(z).reshape(grid_size, grid_size, *image_shape).cpu()
    return {"columns": columns, "rows": rows, "images": images, "probabilities": probabilities,
            "directions": (first, second), "description": description}


@torch.no_grad()
def blueprint(model, z, num_draws=7, image_shape=None):
    """One latent point z: the decoded mean f(z) and ``num_draws`` data points x ~ p(x | z), as
    images: {z, mean (H, W), draws (num_draws, H, W)}."""
    image_shape = image_shape_of(model, image_shape)
    device = next(model.parameters()).device
    z = torch.as_tensor(z, dtype=torch.float32, device=device).reshape(-1)
    if z.numel() != model.z_dim:
        raise ValueError(f"--z needs {model.z_dim} comma-separated values (z_dim = "
                         f"{model.z_dim}), got {z.numel()}")
    output = model.decoder(z)
    mean = model.likelihood.mean(output).reshape(image_shape).cpu()
    draws = model.likelihood(output).sample((num_draws,)).reshape(num_draws, *image_shape).cpu()
    return {"z": z.cpu(), "mean": mean, "draws": draws}


def _posterior_grid(density, centre, half_width, points):
    """The normalized posterior on a square grid: (first axis, second axis, probabilities)."""
    axis = torch.linspace(-1.0, 1.0, points, dtype=torch.float32)
    first = centre[0] + half_width * axis
    second = centre[1] + half_width * axis
    z = torch.stack(torch.meshgrid(first, second, indexing="ij"), -1).reshape(-1, 1, 2)
    log_prior, log_likelihood = density(z.to(density.x.device))
    log_joint = (log_prior + log_likelihood).reshape(points, points).double().cpu()
    probabilities = torch.softmax(log_joint.flatten(), 0).reshape(points, points)
    return first, second, probabilities


def _grid_probabilities(log_density, first, second, device):
    """A log density evaluated on the grid first x second, normalized over the grid."""
    grid_z = torch.stack(torch.meshgrid(first, second, indexing="ij"), -1)
    log_values = log_density(grid_z.reshape(-1, 1, 2).to(device)).reshape(len(first),
                                                                          len(second))
    return torch.softmax(log_values.double().cpu().flatten(), 0).reshape(len(first), len(second))


@torch.no_grad()
def posterior_view(model, guide, x, num_prior_samples=1000, grid_points=160,
                   num_proposals=5000, num_resampled=1000, num_guide_draws=2000):
    """Prior p(z), guide q(z | x) and true posterior p(z | x) of one data point x (1, x_dim),
    with ``num_prior_samples`` naive draws z ~ p(z) and their normalized importance weights
    p(x | z_k) / sum_j p(x | z_j).

    For z_dim = 2 the true posterior is computed on grids (``panels``: the whole prior region,
    and zoomed onto the posterior), with the guide's and the prior's densities on the same
    grids; otherwise it is represented by ``num_resampled`` draws importance-resampled from
    ``num_proposals`` guide draws, and every set of draws is projected on the posterior's two
    principal directions.

    :returns: dict with ``prior_ess`` (the effective number of prior samples, 1 / sum w_k^2 for
        normalized weights), ``prior_weight_share`` (prior_ess / K), ``num_prior_samples``,
        ``prior_weights``, ``prior_z``, ``guide_z`` and, for z_dim = 2, ``panels``, ``grid``
        and ``zoom_grid`` (normalized posterior probabilities, each summing to 1),
        ``posterior_mean`` and ``posterior_sd``; for other z_dim ``posterior_samples`` and the
        ``projected`` draws.
    """
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"the posterior view shows one data point: pass x of shape "
                         f"(1, x_dim), got {tuple(x.shape)}")
    density = LatentLogDensity(model, x)
    prior_z = density.sample_prior(num_prior_samples)                   # (K, 1, D)
    _, prior_log_weights = density(prior_z)                            # log p(x | z_k)
    ess = effective_sample_size(prior_log_weights).item()
    view = {"prior_ess": ess, "prior_weight_share": ess / num_prior_samples,
            "num_prior_samples": num_prior_samples,
            "prior_weights": torch.softmax(prior_log_weights[:, 0].double(), 0).cpu(),
            "prior_z": prior_z[:, 0].cpu(), "z_dim": model.z_dim}
    q = guide.distribution(x)
    guide_z = q.sample((num_guide_draws,))[:, 0].cpu()
    view["guide_z"] = guide_z
    if model.z_dim == 2:
        # The wide view covers the prior's bulk and wherever the guide puts this x.
        guide_reach = (guide_z.mean(0).abs() + 4 * guide_z.std(0)).max().item()
        first, second, probabilities = _posterior_grid(
            density, torch.zeros(2), max(4.5, guide_reach), grid_points)
        mean = torch.stack([(probabilities.sum(1) * first.double()).sum(),
                            (probabilities.sum(0) * second.double()).sum()]).float()
        spread = torch.stack([
            ((probabilities.sum(1) * (first.double() - mean[0]) ** 2).sum()).sqrt(),
            ((probabilities.sum(0) * (second.double() - mean[1]) ** 2).sum()).sqrt()])
        half_width = float(max(6 * spread.max().item(), 9.0 / grid_points * 4, 0.05))
        zoom = _posterior_grid(density, mean, half_width, grid_points)
        panels = []
        for title, (a, b, p) in (("the whole prior region", (first, second, probabilities)),
                                 ("zoomed onto the posterior", zoom)):
            panels.append({
                "title": title, "first": a, "second": b, "posterior": p,
                "guide": _grid_probabilities(q.log_prob, a, b, x.device),
                "prior": _grid_probabilities(model.prior().log_prob, a, b, x.device)})
        view.update(panels=panels, grid=probabilities, zoom_grid=zoom[2], posterior_mean=mean,
                    posterior_sd=spread.float())
        return view
    proposals = q.sample((num_proposals,))                                 # (K, 1, D)
    log_prior, log_likelihood = density(proposals)
    log_weights = (log_prior + log_likelihood - q.log_prob(proposals))[:, 0]
    chosen = torch.multinomial(torch.softmax(log_weights.double(), 0), num_resampled,
                               replacement=True)
    posterior_z = proposals[chosen, 0].cpu()
    centre = posterior_z.mean(0)
    _, _, right = torch.linalg.svd(posterior_z - centre, full_matrices=False)
    basis = right[:2].T
    view.update(posterior_samples=posterior_z, projected={
        name: (z - centre) @ basis for name, z in
        (("prior", view["prior_z"]), ("guide", guide_z), ("posterior", posterior_z))})
    return view


@torch.no_grad()
def reconstructions(model, guide, x):
    """The decoded encoder means f(E_q[z | x]) of the rows of x, shape (N, x_dim)."""
    return model.decode(encoder_means(guide, x)).cpu()


@torch.no_grad()
def samples(model, count=10):
    """The story run forwards: z ~ p(z), the blueprints f(z) and x ~ p(x | z)."""
    trace = poutine.trace(model).get_trace(batch_size=count)
    z, x = trace.nodes["z"]["value"], trace.nodes["x"]["value"]
    return {"z": z.cpu(), "x": x.cpu(), "means": model.decode(z).cpu()}

"""Pictures of the generative story, computed from a trained model.

Each function draws one figure, writes it atomically as a PNG of a fixed pixel size
(``FIGURE_SIZES[name]`` inches at ``DPI``) and returns the numbers behind it, so that they can be
checked and quoted. Colours come from Paul Tol's colour-blind-safe "muted" palette, and every
colour-coded figure also carries text labels.

- :func:`latent_map`: encoder means of data points, coloured by label (a projection for z_dim > 2);
- :func:`manifold`: decoded means E[x | z] on a grid over z at prior quantiles;
- :func:`blueprint`: one z, its decoded mean f(z) and draws x ~ p(x | z);
- :func:`posterior`: prior, guide and true posterior of one data point over z-space, with the
  naive prior samples and the share of them that carries the importance weight;
- :func:`convergence`: log p-hat against K for several estimators on one data point;
- :func:`reconstructions` and :func:`samples`.
"""

import math

import numpy as np
import torch
from pyro import poutine

from evaluation.diagnostics import effective_sample_size, import_arviz
from evaluation.estimators import estimate
from evaluation.log_density import LatentLogDensity
from inference.io import atomic_savefig

DPI = 100
FIGURE_SIZES = {
    "latent_map": (7.0, 6.0),
    "manifold": (7.0, 7.0),
    "blueprint": (10.0, 2.6),
    "posterior": (12.0, 5.4),
    "convergence": (12.0, 4.8),
    "reconstructions": (10.0, 2.4),
    "samples": (10.0, 2.4),
}
#: Paul Tol's "muted" scheme (nine colours) and a pale grey: distinguishable with colour blindness
PALETTE = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677",
           "#882255", "#AA4499", "#777777")
PRIOR_COLOUR, GUIDE_COLOUR, POSTERIOR_COLOUR = "#777777", "#0077BB", "#EE7733"
ESTIMATOR_COLOURS = {"prior": "#777777", "importance": "#0077BB", "ais": "#EE7733",
                     "mixture": "#009988", "elbo": "#CC3311"}


def pixel_size(name):
    """The (width, height) in pixels of the PNG that figure ``name`` is written as."""
    width, height = FIGURE_SIZES[name]
    return int(round(width * DPI)), int(round(height * DPI))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(name, **kwargs):
    plt = _pyplot()
    return plt.subplots(figsize=FIGURE_SIZES[name], dpi=DPI, **kwargs)


def _save(figure, path):
    atomic_savefig(path, figure, dpi=DPI)
    _pyplot().close(figure)


def _image_shape(model, image_shape):
    if image_shape is None:
        side = int(round(math.sqrt(model.x_dim)))
        if side * side != model.x_dim:
            raise ValueError(f"cannot show data of dimension {model.x_dim} as images; pass "
                             "image_shape (these figures are for image data such as MNIST)")
        image_shape = (side, side)
    return tuple(int(s) for s in image_shape)


def _mosaic(images, columns, pad=1, gap_value=0.3):
    """Tile images (N, H, W) into one array with ``columns`` columns and a light grey gap of
    ``pad`` pixels (``gap_value`` on the 0..1 scale shown with a reversed grey map)."""
    images = np.asarray(images)
    count, height, width = images.shape
    rows = math.ceil(count / columns)
    canvas = gap_value * np.ones((rows * (height + pad) - pad, columns * (width + pad) - pad))
    for index in range(count):
        row, column = divmod(index, columns)
        canvas[row * (height + pad):row * (height + pad) + height,
               column * (width + pad):column * (width + pad) + width] = images[index]
    return canvas


def encoder_means(guide, x, num_draws=64):
    """The mean of q(z | x) for each row of x: exact where the distribution knows it (Gaussian
    guides), else the average of ``num_draws`` draws (flows such as ``iaf``)."""
    with torch.no_grad():
        q = guide.distribution(x)
        try:
            return q.mean
        except NotImplementedError:
            return q.sample((num_draws,)).mean(0)


def nearest_labels(z_means, labels, z, count=25):
    """Which labels the encoder gives the ``count`` data points whose encoder means lie nearest
    to the latent point z: {"blueprint_region_label", "blueprint_region_share"}."""
    labels = torch.as_tensor(labels).cpu()
    distances = (z_means - z.reshape(1, -1)).norm(dim=-1)
    nearest = labels[distances.argsort()[:min(count, len(labels))]]
    values, counts = nearest.unique(return_counts=True)
    best = counts.argmax()
    return {"blueprint_region_label": int(values[best]),
            "blueprint_region_share": counts[best].item() / nearest.numel(),
            "blueprint_region_count": int(nearest.numel())}


def _project(z):
    """2-D coordinates of z (N, D) and a description of the method."""
    if z.shape[-1] == 2:
        return z, ("z_1", "z_2"), "encoder means (the latent space itself)"
    if z.shape[-1] == 1:
        return torch.cat([z, torch.zeros_like(z)], -1), ("z_1", ""), "encoder means (1-D)"
    centred = z - z.mean(0)
    _, singular, right = torch.linalg.svd(centred, full_matrices=False)
    share = (singular[:2] ** 2).sum() / (singular ** 2).sum()
    return (centred @ right[:2].T, ("principal component 1", "principal component 2"),
            f"PCA of the {z.shape[-1]}-D encoder means ({100 * share:.0f}% of their variance)")


@torch.no_grad()
def latent_map(model, guide, x, labels, path):
    """Encoder means E_q[z | x] of the rows of x, coloured and labelled by class.

    :returns: dict with the 2-D ``coordinates`` (N, 2), the projection ``method`` and the
        ``centres`` of each label.
    """
    coordinates, axes_names, method = _project(encoder_means(guide, x).cpu())
    labels = torch.as_tensor(labels).cpu()
    figure, axes = _figure("latent_map")
    centres = {}
    for label in sorted(set(labels.tolist())):
        chosen = labels == label
        colour = PALETTE[int(label) % len(PALETTE)] if label >= 0 else PALETTE[-1]
        points = coordinates[chosen]
        axes.scatter(points[:, 0], points[:, 1], s=4, alpha=0.5, color=colour,
                     label=str(label) if label >= 0 else "unlabelled", rasterized=True)
        centre = points.median(0).values
        centres[int(label)] = centre.tolist()
        if label >= 0:
            axes.text(centre[0], centre[1], str(label), fontsize=15, weight="bold",
                      ha="center", va="center", color="black",
                      bbox=dict(boxstyle="circle,pad=0.15", fc="white", ec=colour, alpha=0.85))
    axes.set_xlabel(axes_names[0])
    axes.set_ylabel(axes_names[1])
    axes.set_title(f"Where the encoder puts {len(labels)} test images\n{method}", fontsize=11)
    axes.legend(title="label", markerscale=4, fontsize=8, loc="center left",
                bbox_to_anchor=(1.0, 0.5), frameon=False)
    axes.grid(alpha=0.25)
    figure.tight_layout()
    _save(figure, path)
    return {"coordinates": coordinates, "method": method, "centres": centres}


@torch.no_grad()
def manifold(model, path, grid_size=15, directions=(0, 1), image_shape=None, low=0.03,
             high=0.97):
    """Decoded means f(z) on a grid_size x grid_size grid of z at prior quantiles Phi^-1(p),
    p evenly spaced in [low, high], along latent dimensions ``directions`` (the others at 0).

    :returns: dict with the grid ``values`` (the z coordinate of each row and column) and the
        decoded ``images`` (grid_size, grid_size, H, W).
    """
    image_shape = _image_shape(model, image_shape)
    first, second = (int(d) for d in directions)
    if not (0 <= first < model.z_dim and 0 <= second < model.z_dim and first != second):
        if model.z_dim == 1:
            second = None
        else:
            raise ValueError(f"--directions must be two different latent dimensions in "
                             f"0..{model.z_dim - 1}, got {directions}")
    quantiles = torch.linspace(low, high, grid_size, dtype=torch.float64)
    values = torch.distributions.Normal(0.0, 1.0).icdf(quantiles).float()
    device = next(model.parameters()).device
    z = torch.zeros(grid_size, grid_size, model.z_dim, device=device)
    z[..., first] = values.to(device).view(1, -1)          # columns: first direction
    if second is not None:
        z[..., second] = values.flip(0).to(device).view(-1, 1)  # rows: second, upwards
    images = model.decode(z).reshape(grid_size, grid_size, *image_shape).cpu()
    figure, axes = _figure("manifold")
    axes.imshow(_mosaic(images.reshape(-1, *image_shape).numpy(), grid_size), cmap="gray_r",
                vmin=0, vmax=1, interpolation="nearest")
    height, width = image_shape
    ticks = [(k * (width + 1)) + width / 2 for k in range(grid_size)]
    shown = list(range(0, grid_size, max(1, grid_size // 5)))
    axes.set_xticks([ticks[k] for k in shown], [f"{values[k]:.1f}" for k in shown])
    axes.set_yticks([(k * (height + 1)) + height / 2 for k in shown],
                    [f"{values.flip(0)[k]:.1f}" for k in shown])
    axes.set_xlabel(f"z_{first + 1} (prior quantiles {low:.0%} to {high:.0%})")
    axes.set_ylabel(f"z_{second + 1}" if second is not None else "")
    others = "" if model.z_dim <= 2 else ", all other z_d = 0"
    axes.set_title(f"The decoded blueprint E[x | z] across z-space{others}", fontsize=11)
    figure.tight_layout()
    _save(figure, path)
    return {"values": values, "images": images}


@torch.no_grad()
def blueprint(model, z, path, num_draws=7, image_shape=None):
    """One latent point z: the decoded mean f(z) and ``num_draws`` data points x ~ p(x | z).

    :returns: dict with the ``mean`` image and the ``draws`` (num_draws, H, W).
    """
    image_shape = _image_shape(model, image_shape)
    device = next(model.parameters()).device
    z = torch.as_tensor(z, dtype=torch.float32, device=device).reshape(-1)
    if z.numel() != model.z_dim:
        raise ValueError(f"--z needs {model.z_dim} comma-separated values (z_dim = "
                         f"{model.z_dim}), got {z.numel()}")
    output = model.decoder(z)
    mean = model.likelihood.mean(output).reshape(image_shape).cpu()
    draws = model.likelihood(output).sample((num_draws,)).reshape(num_draws, *image_shape).cpu()
    figure, axes = _figure("blueprint", ncols=num_draws + 1)
    panels = [(mean, "f(z) = E[x | z]")] + [(draw, f"x ~ p(x | z), draw {k + 1}")
                                            for k, draw in enumerate(draws)]
    for ax, (image, title) in zip(axes, panels):
        ax.imshow(image.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0].patch.set_edgecolor(GUIDE_COLOUR)
    label = ", ".join(f"{value:.2f}" for value in z.tolist()[:4])
    label += ", ..." if z.numel() > 4 else ""
    figure.suptitle(f"One blueprint z = [{label}] and the data points drawn from it", fontsize=11)
    figure.tight_layout()
    _save(figure, path)
    return {"mean": mean, "draws": draws}


def _posterior_grid(density, centre, half_width, points):
    """The normalized posterior on a square grid: (axis values, probabilities (P, P))."""
    axis = torch.linspace(-1.0, 1.0, points, dtype=torch.float32)
    first = centre[0] + half_width * axis
    second = centre[1] + half_width * axis
    z = torch.stack(torch.meshgrid(first, second, indexing="ij"), -1).reshape(-1, 1, 2)
    log_prior, log_likelihood = density(z.to(density.x.device))
    log_joint = (log_prior + log_likelihood).reshape(points, points).double().cpu()
    probabilities = torch.softmax(log_joint.flatten(), 0).reshape(points, points)
    return first, second, probabilities, log_joint


def _contour_levels(probabilities, masses=(0.5, 0.9, 0.99)):
    """Density levels whose super-level sets hold the given probability masses."""
    flat = probabilities.flatten().sort(descending=True).values
    cumulative = flat.cumsum(0)
    levels = sorted({flat[min(int((cumulative < m).sum()), flat.numel() - 1)].item()
                     for m in masses})
    return levels if len(levels) > 1 else None


@torch.no_grad()
def posterior(model, guide, x, path, num_prior_samples=1000, grid_points=160,
              num_proposals=5000, num_resampled=1000):
    """The prior p(z), the guide q(z | x) and the true posterior p(z | x) of one data point x
    (shape (1, x_dim)) over z-space, with ``num_prior_samples`` naive draws z ~ p(z) sized by
    their importance weight p(x | z).

    For z_dim = 2 the true posterior is computed on a grid (left: all of the prior's region,
    right: zoomed onto the posterior); otherwise it is shown by importance-resampled draws (guide
    proposal) projected on the posterior's two principal directions, with arviz density plots of
    one coordinate.

    :returns: dict with ``prior_ess`` (the effective number of prior samples, 1 / sum w_k^2 for
        normalized weights), ``prior_weight_share`` (prior_ess / K), ``num_prior_samples`` and,
        for z_dim = 2, the normalized ``grid`` probabilities (summing to 1).
    """
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"posterior() shows one data point: pass x of shape (1, x_dim), got "
                         f"{tuple(x.shape)}")
    density = LatentLogDensity(model, x)
    prior_z = density.sample_prior(num_prior_samples)                    # (K, 1, D)
    _, prior_log_weights = density(prior_z)                             # log p(x | z_k)
    ess = effective_sample_size(prior_log_weights).item()
    normalized = torch.softmax(prior_log_weights[:, 0].double(), 0).cpu()
    result = {"prior_ess": ess, "prior_weight_share": ess / num_prior_samples,
              "num_prior_samples": num_prior_samples}
    q = guide.distribution(x)
    guide_z = q.sample((2000,))[:, 0].cpu()
    prior_z = prior_z[:, 0].cpu()
    plt = _pyplot()
    if model.z_dim == 2:
        figure, (wide, zoom) = _figure("posterior", ncols=2)
        # The wide view covers the prior's bulk and wherever the guide puts this x.
        guide_reach = (guide_z.mean(0).abs() + 4 * guide_z.std(0)).max().item()
        first, second, probabilities, _ = _posterior_grid(
            density, torch.zeros(2), max(4.5, guide_reach), grid_points)
        mean = torch.stack([(probabilities.sum(1) * first.double()).sum(),
                            (probabilities.sum(0) * second.double()).sum()]).float()
        spread = torch.stack([
            ((probabilities.sum(1) * (first.double() - mean[0]) ** 2).sum()).sqrt(),
            ((probabilities.sum(0) * (second.double() - mean[1]) ** 2).sum()).sqrt()])
        half_width = float(max(6 * spread.max().item(), 9.0 / grid_points * 4, 0.05))
        zoom_first, zoom_second, zoom_probabilities, _ = _posterior_grid(
            density, mean, half_width, grid_points)
        result.update(grid=probabilities, zoom_grid=zoom_probabilities, posterior_mean=mean,
                      posterior_sd=spread.float())
        for ax, (a, b, p), title in (
                (wide, (first, second, probabilities), "the whole prior region"),
                (zoom, (zoom_first, zoom_second, zoom_probabilities),
                 "zoomed onto the posterior")):
            top = p.max().item()
            ax.contourf(a.numpy(), b.numpy(), p.T.numpy(),
                        levels=np.linspace(0.02 * top, top, 12), cmap="Oranges", alpha=0.85)
            levels = _contour_levels(p)
            if levels:
                ax.contour(a.numpy(), b.numpy(), p.T.numpy(), levels=levels,
                           colors=POSTERIOR_COLOUR, linewidths=1.2)
            grid_z = torch.stack(torch.meshgrid(a, b, indexing="ij"), -1)
            log_q = q.log_prob(grid_z.reshape(-1, 1, 2).to(x.device)).reshape(
                len(a), len(b)).double().cpu()
            q_probabilities = torch.softmax(log_q.flatten(), 0).reshape(len(a), len(b))
            q_levels = _contour_levels(q_probabilities)
            if q_levels:
                ax.contour(a.numpy(), b.numpy(), q_probabilities.T.numpy(), levels=q_levels,
                           colors=GUIDE_COLOUR, linewidths=1.2, linestyles="--")
            log_prior = density.model.prior().log_prob(grid_z.to(x.device)).double().cpu()
            prior_probabilities = torch.softmax(log_prior.flatten(), 0).reshape(len(a), len(b))
            prior_levels = _contour_levels(prior_probabilities)
            if prior_levels:
                ax.contour(a.numpy(), b.numpy(), prior_probabilities.T.numpy(),
                           levels=prior_levels, colors=PRIOR_COLOUR, linewidths=0.8,
                           linestyles=":")
            sizes = 4 + 400 * normalized.numpy()
            ax.scatter(prior_z[:, 0], prior_z[:, 1], s=sizes, facecolors="none",
                       edgecolors="black", linewidths=0.5, alpha=0.6)
            ax.set_xlim(a[0].item(), a[-1].item())
            ax.set_ylim(b[0].item(), b[-1].item())
            ax.set_xlabel("z_1"), ax.set_ylabel("z_2")
            ax.set_title(title, fontsize=10)
            ax.set_aspect("equal")
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=PRIOR_COLOUR, ls=":", label="prior p(z)"),
                   Line2D([], [], color=GUIDE_COLOUR, ls="--", label="guide q(z | x)"),
                   Line2D([], [], color=POSTERIOR_COLOUR, label="true posterior p(z | x)"),
                   Line2D([], [], marker="o", ls="", mfc="none", mec="black",
                          label="z ~ p(z), size = weight")]
        zoom.legend(handles=handles, fontsize=8, loc="upper right", framealpha=0.9)
    else:
        arviz = import_arviz()
        figure, (wide, marginal) = _figure("posterior", ncols=2)
        proposals = q.sample((num_proposals,))                              # (K, 1, D)
        log_prior, log_likelihood = density(proposals)
        log_weights = (log_prior + log_likelihood - q.log_prob(proposals))[:, 0]
        chosen = torch.multinomial(torch.softmax(log_weights.double(), 0), num_resampled,
                                   replacement=True)
        posterior_z = proposals[chosen, 0].cpu()
        centre = posterior_z.mean(0)
        _, _, right = torch.linalg.svd(posterior_z - centre, full_matrices=False)
        basis = right[:2].T

        def project(z):
            return (z - centre) @ basis

        for z, colour, label in ((prior_z, PRIOR_COLOUR, "prior draws"),
                                 (guide_z, GUIDE_COLOUR, "guide draws"),
                                 (posterior_z, POSTERIOR_COLOUR,
                                  "posterior (importance-resampled)")):
            points = project(z)
            wide.scatter(points[:, 0], points[:, 1], s=5, alpha=0.4, color=colour, label=label)
        wide.set_xlabel("posterior principal direction 1")
        wide.set_ylabel("posterior principal direction 2")
        wide.legend(fontsize=8, markerscale=3)
        wide.set_title(f"{model.z_dim}-D latent space, projected", fontsize=10)
        for z, colour, label in ((prior_z, PRIOR_COLOUR, "prior"),
                                 (guide_z, GUIDE_COLOUR, "guide"),
                                 (posterior_z, POSTERIOR_COLOUR, "posterior")):
            arviz.plot_kde(project(z)[:, 0].numpy(), ax=marginal,
                           plot_kwargs={"color": colour}, label=label)
        marginal.set_xlabel("posterior principal direction 1")
        marginal.set_title("densities along direction 1 (arviz)", fontsize=10)
        result.update(posterior_samples=posterior_z)
    figure.suptitle(
        f"Which z explain this x? Of {num_prior_samples} draws from the prior, an effective "
        f"{ess:.1f} ({100 * ess / num_prior_samples:.2f}%) carry the importance weight",
        fontsize=11)
    figure.tight_layout()
    _save(figure, path)
    plt.close("all")
    return result


def convergence(model, guide, x, path, num_samples=(1, 10, 100, 1000, 10000),
                estimators=("prior", "importance", "ais"), ais_steps=200, ais_leapfrog=5,
                max_ais_chains=100, reference=None, progress=None):
    """log p-hat(x) against K for one data point x (1, x_dim), with +-2 standard-error bands.

    ``ais`` uses K chains (up to ``max_ais_chains``) of ``ais_steps`` steps. ``reference`` is a
    (name, value) pair drawn as a horizontal line (the exact or quadrature value).

    :returns: dict estimator -> list of (K, estimate, stderr).
    """
    curves = {}
    for name in estimators:
        points = []
        for k in num_samples:
            if name == "ais" and k > max_ais_chains:
                continue
            result = estimate(name, model, guide, x, int(k), ais_steps=ais_steps,
                              ais_leapfrog=ais_leapfrog)
            points.append((int(k), result.estimate[0].item(), result.stderr[0].item()))
            if progress is not None:
                progress.update()
        curves[name] = points
    figure, (whole, zoom) = _figure("convergence", ncols=2)
    finals = []
    for name, points in curves.items():
        ks = np.array([p[0] for p in points], dtype=float)
        values = np.array([p[1] for p in points])
        errors = np.nan_to_num(np.array([p[2] for p in points]), nan=0.0)
        colour = ESTIMATOR_COLOURS.get(name, "black")
        label = f"{name} ({ais_steps} annealing steps)" if name == "ais" else name
        for axes in (whole, zoom):
            axes.plot(ks, values, "o-", color=colour, label=label)
            axes.fill_between(ks, values - 2 * errors, values + 2 * errors, color=colour,
                              alpha=0.2)
        if len(values):
            finals.append(values[-1])
    centre = reference[1] if reference is not None else (max(finals) if finals else 0.0)
    for axes, title in ((whole, "all values"), (zoom, "zoomed to +-5 nats")):
        if reference is not None:
            axes.axhline(reference[1], color="black", ls="--", lw=1,
                         label=f"{reference[0]}: {reference[1]:.2f}")
        axes.set_xscale("log")
        axes.set_xlabel("K (samples, or chains for ais)")
        axes.set_ylabel("log p-hat(x) (nats)")
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
    zoom.set_ylim(centre - 5, centre + 5)
    zoom.legend(fontsize=9, loc="lower right")
    figure.suptitle("Estimates of log p(x) for one image against K, +-2 standard errors",
                    fontsize=11)
    figure.tight_layout()
    _save(figure, path)
    return curves


def _two_rows(name, top, bottom, row_names, title, image_shape, path):
    """A figure of two rows of images (each (count, x_dim)) labelled ``row_names``."""
    count = top.shape[0]
    rows = torch.cat([top.cpu(), bottom.cpu()]).reshape(2 * count, *image_shape)
    figure, axes = _figure(name)
    axes.imshow(_mosaic(rows.numpy(), count), cmap="gray_r", vmin=0, vmax=1,
                interpolation="nearest")
    axes.set_xticks([])
    height = image_shape[0]
    axes.set_yticks([height / 2, height * 1.5 + 1], list(row_names))
    axes.set_title(title, fontsize=11)
    figure.tight_layout()
    _save(figure, path)


@torch.no_grad()
def reconstructions(model, guide, x, path, image_shape=None):
    """Data points (top) and the decoded encoder means f(E_q[z | x]) (bottom)."""
    image_shape = _image_shape(model, image_shape)
    decoded = model.decode(encoder_means(guide, x))
    _two_rows("reconstructions", x, decoded, ("x", "f(E_q[z | x])"),
              "Test images and their reconstructions through the encoder and decoder",
              image_shape, path)
    return {"reconstructions": decoded.cpu()}


@torch.no_grad()
def samples(model, path, count=10, image_shape=None):
    """The story run forwards: z ~ p(z), the blueprint f(z) (top) and x ~ p(x | z) (bottom)."""
    image_shape = _image_shape(model, image_shape)
    trace = poutine.trace(model).get_trace(batch_size=count)
    z, x = trace.nodes["z"]["value"], trace.nodes["x"]["value"]
    means = model.decode(z)
    _two_rows("samples", means, x, ("f(z)", "x ~ p(x | z)"),
              "New data from the model's own story: z ~ p(z), then x ~ p(x | z)",
              image_shape, path)
    return {"z": z.cpu(), "x": x.cpu(), "means": means.cpu()}

"""Pictures of the generative story, drawn from what :mod:`evaluation.story` computed.

Each function draws one figure and writes it atomically as a PNG of a fixed pixel size
(``FIGURE_SIZES[name]`` inches at ``DPI``); it computes nothing about the model. Colours come
from :mod:`evaluation.reporting.palette`, and every colour-coded figure also carries text labels.
"""

import math

import numpy as np
import torch

from evaluation.reporting import palette
from evaluation.reporting.plots import DPI, convergence as plot_convergence, pyplot, save

FIGURE_SIZES = {
    "latent_map": (7.0, 6.0),
    "manifold": (7.0, 7.0),
    "blueprint": (10.0, 2.6),
    "posterior": (12.0, 5.4),
    "convergence": (12.0, 4.8),
    "reconstructions": (10.0, 2.4),
    "samples": (10.0, 2.4),
}


def pixel_size(name):
    """The (width, height) in pixels of the PNG that figure ``name`` is written as."""
    width, height = FIGURE_SIZES[name]
    return int(round(width * DPI)), int(round(height * DPI))


def _figure(name, **kwargs):
    return pyplot().subplots(figsize=FIGURE_SIZES[name], dpi=DPI, **kwargs)


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


def latent_map(view, path):
    """Encoder means, coloured and labelled by class (``view`` from story.latent_map)."""
    coordinates, labels = view["coordinates"], view["labels"]
    figure, axes = _figure("latent_map")
    for label in sorted(set(labels.tolist())):
        colour = palette.category_colour(label)
        points = coordinates[labels == label]
        axes.scatter(points[:, 0], points[:, 1], s=4, alpha=0.5, color=colour,
                     label=str(label) if label >= 0 else "unlabelled", rasterized=True)
        if label >= 0:
            centre = view["centres"][int(label)]
            axes.text(centre[0], centre[1], str(label), fontsize=15, weight="bold",
                      ha="center", va="center", color="black",
                      bbox=dict(boxstyle="circle,pad=0.15", fc="white", ec=colour, alpha=0.85))
    axes.set_xlabel(view["axes"][0])
    axes.set_ylabel(view["axes"][1])
    axes.set_title(f"Where the encoder puts {len(labels)} test images\n{view['method']}",
                   fontsize=11)
    axes.legend(title="label", markerscale=4, fontsize=8, loc="center left",
                bbox_to_anchor=(1.0, 0.5), frameon=False)
    axes.grid(alpha=0.25)
    figure.tight_layout()
    save(figure, path)


def manifold(grid, path):
    """Decoded means on a grid of z (``grid`` from story.latent_grid)."""
    images = grid["images"]
    grid_size, _, height, width = images.shape
    first, second = grid["directions"]
    figure, axes = _figure("manifold")
    axes.imshow(_mosaic(images.reshape(-1, height, width).numpy(), grid_size), cmap="gray_r",
                vmin=0, vmax=1, interpolation="nearest")
    shown = list(range(0, grid_size, max(1, grid_size // 5)))
    axes.set_xticks([k * (width + 1) + width / 2 for k in shown],
                    [f"{grid['columns'][k]:.1f}" for k in shown])
    probabilities = grid["probabilities"]
    span = f"{probabilities[0].item():.0%} to {probabilities[-1].item():.0%}"
    axes.set_xlabel(f"z_{first + 1} ({span})")
    if second is not None:
        axes.set_yticks([k * (height + 1) + height / 2 for k in shown],
                        [f"{grid['rows'][k]:.1f}" for k in shown])
        axes.set_ylabel(f"z_{second + 1} ({span})")
    else:
        axes.set_yticks([])
    axes.set_title(f"The decoded blueprint E[x | z] across z-space\n{grid['description']}",
                   fontsize=10)
    figure.tight_layout()
    save(figure, path)


def blueprint(result, path):
    """One z, its decoded mean and its draws (``result`` from story.blueprint)."""
    draws, z = result["draws"], result["z"]
    figure, axes = _figure("blueprint", ncols=len(draws) + 1)
    panels = [(result["mean"], "f(z) = E[x | z]")] + [
        (draw, f"x ~ p(x | z), draw {k + 1}") for k, draw in enumerate(draws)]
    for ax, (image, title) in zip(axes, panels):
        ax.imshow(image.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    label = ", ".join(f"{value:.2f}" for value in z.tolist()[:4])
    label += ", ..." if z.numel() > 4 else ""
    figure.suptitle(f"One blueprint z = [{label}] and the data points drawn from it", fontsize=11)
    figure.tight_layout()
    save(figure, path)


def _contour_levels(probabilities, masses=(0.5, 0.9, 0.99)):
    """Density levels whose super-level sets hold the given probability masses."""
    flat = probabilities.flatten().sort(descending=True).values
    cumulative = flat.cumsum(0)
    levels = sorted({flat[min(int((cumulative < m).sum()), flat.numel() - 1)].item()
                     for m in masses})
    return levels if len(levels) > 1 else None


def _posterior_panel(ax, panel, prior_z, sizes):
    a, b = panel["first"].numpy(), panel["second"].numpy()
    posterior = panel["posterior"]
    top = posterior.max().item()
    ax.contourf(a, b, posterior.T.numpy(), levels=np.linspace(0.02 * top, top, 12),
                cmap="Oranges", alpha=0.85)
    for name, colour, width, style in (("posterior", palette.POSTERIOR, 1.2, "-"),
                                       ("guide", palette.GUIDE, 1.2, "--"),
                                       ("prior", palette.PRIOR, 0.8, ":")):
        levels = _contour_levels(panel[name])
        if levels:
            ax.contour(a, b, panel[name].T.numpy(), levels=levels, colors=colour,
                       linewidths=width, linestyles=style)
    ax.scatter(prior_z[:, 0], prior_z[:, 1], s=sizes, facecolors="none", edgecolors="black",
               linewidths=0.5, alpha=0.6)
    ax.set_xlim(a[0], a[-1])
    ax.set_ylim(b[0], b[-1])
    ax.set_xlabel("z_1"), ax.set_ylabel("z_2")
    ax.set_title(panel["title"], fontsize=10)
    ax.set_aspect("equal")


def posterior(view, path):
    """Prior, guide and true posterior of one data point (``view`` from story.posterior_view)."""
    sizes = 4 + 400 * view["prior_weights"].numpy()
    figure, (left, right) = _figure("posterior", ncols=2)
    if "panels" in view:
        for ax, panel in zip((left, right), view["panels"]):
            _posterior_panel(ax, panel, view["prior_z"], sizes)
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=palette.PRIOR, ls=":", label="prior p(z)"),
                   Line2D([], [], color=palette.GUIDE, ls="--", label="guide q(z | x)"),
                   Line2D([], [], color=palette.POSTERIOR, label="true posterior p(z | x)"),
                   Line2D([], [], marker="o", ls="", mfc="none", mec="black",
                          label="z ~ p(z), size = weight")]
        right.legend(handles=handles, fontsize=8, loc="upper right", framealpha=0.9)
    else:
        from evaluation.diagnostics import import_arviz

        arviz = import_arviz()
        draws = ((view["projected"]["prior"], palette.PRIOR, "prior draws"),
                 (view["projected"]["guide"], palette.GUIDE, "guide draws"),
                 (view["projected"]["posterior"], palette.POSTERIOR,
                  "posterior (importance-resampled)"))
        for points, colour, label in draws:
            left.scatter(points[:, 0], points[:, 1], s=5, alpha=0.4, color=colour, label=label)
            arviz.plot_kde(points[:, 0].numpy(), ax=right, plot_kwargs={"color": colour},
                           label=label.split(" ")[0])
        left.set_xlabel("posterior principal direction 1")
        left.set_ylabel("posterior principal direction 2")
        left.legend(fontsize=8, markerscale=3)
        left.set_title(f"{view['z_dim']}-D latent space, projected", fontsize=10)
        right.set_xlabel("posterior principal direction 1")
        right.set_title("densities along direction 1 (arviz)", fontsize=10)
    share = 100 * view["prior_weight_share"]
    figure.suptitle(
        f"Which z explain this x? Of {view['num_prior_samples']} draws from the prior, an "
        f"effective {view['prior_ess']:.1f} ({share:.2f}%) carry the importance weight",
        fontsize=11)
    figure.tight_layout()
    save(figure, path)


def convergence(curves, path, reference=None, ais_steps=None):
    """log p-hat(x) of one data point against K (``curves`` from
    evaluation.estimators.convergence_curves), whole and zoomed to +-5 nats, with the exact or
    quadrature ``reference`` (a (name, value) pair) as a line."""
    labelled = {(f"ais ({ais_steps} annealing steps)" if name == "ais" and ais_steps else name):
                points for name, points in curves.items()}
    references = [] if reference is None else [
        {"label": reference[0], "value": reference[1], "colour": palette.OTHER}]
    plot_convergence([{"title": "", "curves": labelled, "references": references}], path,
                     zoom_nats=5, size=FIGURE_SIZES["convergence"],
                     suptitle="Estimates of log p(x) for one image against K, +-2 standard "
                     "errors")


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
    save(figure, path)


def reconstructions(x, decoded, image_shape, path):
    """Data points (top) and their reconstructions f(E_q[z | x]) (bottom)."""
    _two_rows("reconstructions", x, decoded, ("x", "f(E_q[z | x])"),
              "Test images and their reconstructions through the encoder and decoder",
              image_shape, path)


def samples(result, image_shape, path):
    """The story run forwards: the blueprints f(z) (top) and x ~ p(x | z) (bottom)."""
    _two_rows("samples", result["means"], result["x"], ("f(z)", "x ~ p(x | z)"),
              "New data from the model's own story: z ~ p(z), then x ~ p(x | z)",
              image_shape, path)

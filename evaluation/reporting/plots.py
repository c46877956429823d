"""Plots of numbers the estimators and the training computed: training curves, estimates
against K, paired differences. Every figure is written atomically as a PNG and closed.

matplotlib is set up once, here, with the non-interactive Agg backend, so figures are drawn the
same on a machine with or without a screen.
"""

import numpy as np

from evaluation.reporting import palette
from models.utilities.files import atomic_savefig

DPI = 100


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path, dpi=DPI):
    """Write ``figure`` to ``path`` atomically and close it."""
    atomic_savefig(path, figure, dpi=dpi)
    pyplot().close(figure)


def training_curves(metrics, path, title="ELBO during training"):
    """The training objective and the validation ELBO per data point against the epoch."""
    plt = pyplot()
    epochs = [row["epoch"] for row in metrics]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(epochs, [row["train_elbo"] for row in metrics], "o-", color=palette.TRAIN,
              label="train (running mean over the epoch)")
    axes.plot(epochs, [row["validation_elbo"] for row in metrics], "s--",
              color=palette.VALIDATION, label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel("ELBO per data point (nats)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save(figure, path)


def _draw_convergence(axes, curves, references):
    finals = []
    for name, points in curves.items():
        if not points:
            continue
        ks = np.array([p[0] for p in points], dtype=float)
        values = np.array([p[1] for p in points])
        errors = np.nan_to_num(np.array([p[2] for p in points], dtype=float), nan=0.0)
        colour = palette.estimator_colour(name.split(" ")[0])
        axes.plot(ks, values, "o-", color=colour, label=name)
        axes.fill_between(ks, values - 2 * errors, values + 2 * errors, color=colour, alpha=0.2)
        finals.append(values[-1])
    for reference in references:
        colour = reference.get("colour", palette.OTHER)
        axes.axhline(reference["value"], color=colour, ls="--", lw=1,
                     label=f"{reference['label']}: {reference['value']:.2f}")
        band = 2 * np.nan_to_num(reference.get("stderr", 0.0), nan=0.0)
        if band > 0:
            axes.axhspan(reference["value"] - band, reference["value"] + band, color=colour,
                         alpha=0.15)
    axes.set_xscale("log")
    axes.set_xlabel("K (samples, or chains for ais)")
    axes.set_ylabel("log p-hat(x) (nats)")
    axes.grid(alpha=0.3)
    return finals


def convergence(panels, path, zoom_nats=None, suptitle=None, size=None):
    """Estimates of log p(x) against K with +-2 standard-error bands.

    :param panels: a list of dicts, one per panel: ``title``; ``curves`` {label: [(K, estimate,
        stderr), ...]} (the colour is the estimator's, taken from the label's first word); and
        ``references``, horizontal lines [{label, value, stderr, colour}] for values that do not
        depend on K (exact, quadrature, AIS with a fixed number of chains).
    :param float zoom_nats: also draw each panel zoomed to +-zoom_nats around its first
        reference (else its highest final estimate).
    """
    plt = pyplot()
    columns = len(panels) * (2 if zoom_nats else 1)
    figure, axes = plt.subplots(1, columns, figsize=size or (6 * columns, 4.8), squeeze=False,
                                dpi=DPI)
    axes = list(axes[0])
    for panel in panels:
        whole = axes.pop(0)
        finals = _draw_convergence(whole, panel["curves"], panel.get("references", ()))
        whole.set_title(panel.get("title", "") + (" (all values)" if zoom_nats else ""),
                        fontsize=10)
        target = whole
        if zoom_nats:
            zoom = axes.pop(0)
            _draw_convergence(zoom, panel["curves"], panel.get("references", ()))
            references = panel.get("references") or ()
            centre = references[0]["value"] if references else (max(finals) if finals else 0.0)
            zoom.set_ylim(centre - zoom_nats, centre + zoom_nats)
            zoom.set_title(f"{panel.get('title', '')} (zoomed to +-{zoom_nats:g} nats)",
                           fontsize=10)
            target = zoom
        target.legend(fontsize=8, loc="lower right")
    figure.suptitle(suptitle or "Estimates of log p(x) against K, +-2 standard errors",
                    fontsize=11)
    figure.tight_layout()
    save(figure, path)


def paired_differences(paired, path):
    """Histograms of per-data-point differences of log p-hat(x) between runs.

    :param paired: dicts with ``difference`` (a tensor), ``run``, ``baseline``, ``estimator``,
        ``mean_difference`` and ``paired_stderr``.
    """
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for index, item in enumerate(paired):
        axes.hist(item["difference"].numpy(), bins=40, alpha=0.6,
                  color=palette.CATEGORICAL[index % len(palette.CATEGORICAL)],
                  label=f"{item['run']} - {item['baseline']} ({item['estimator']}): "
                  f"{item['mean_difference']:.2f} ± {item['paired_stderr']:.2f}")
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel("per-data-point difference of log p-hat(x) (nats)")
    axes.set_ylabel("data points")
    axes.legend(fontsize=8)
    figure.tight_layout()
    save(figure, path)


def learning_curves(curves, path, references=(), title=None, window=16.0):
    """log p(x) against the training epoch (log scale) for several runs, with error bars of
    +-2 standard errors over the images, and horizontal published values.

    :param curves: dicts with ``label``, ``epochs``, ``log_px`` and ``stderr`` (lists).
    :param references: dicts with ``label`` and ``value`` (nats), drawn as dotted lines in the
        colour of the curve of the same index.
    :param window: nats shown below the lowest final value (the first epochs, far below, are
        cut off so that the differences at the end stay visible).
    """
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 6))
    for index, curve in enumerate(curves):
        colour = palette.CATEGORICAL[index % len(palette.CATEGORICAL)]
        epochs, values = np.asarray(curve["epochs"]), np.asarray(curve["log_px"])
        axes.errorbar(epochs, values, yerr=2 * np.asarray(curve["stderr"]), fmt="o-",
                      color=colour, label=curve["label"], capsize=2, elinewidth=0.8,
                      markersize=4)
    for index, reference in enumerate(references):
        colour = palette.CATEGORICAL[index % len(palette.CATEGORICAL)]
        axes.axhline(reference["value"], color=colour, linestyle=":", linewidth=1.2,
                     label=reference["label"])
    axes.set_xscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("log p(x), nats per test image")
    finals = [curve["log_px"][-1] for curve in curves if curve["log_px"]]
    if finals:
        tops = finals + [reference["value"] for reference in references]
        axes.set_ylim(min(finals) - window, max(tops) + 1.5)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1,
                frameon=False)
    axes.set_title(title or "Learning curves", fontsize=11)
    figure.tight_layout()
    save(figure, path)

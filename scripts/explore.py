"""See the generative story of a trained run: latent map, decoded manifold, one blueprint and its
draws, the posterior of one test image, estimator convergence, reconstructions, samples, and a
self-contained ``report.html`` that gathers them with the run's config, training curves and an
evaluation table.

Examples::

    python scripts/explore.py runs/mnist-z2
    python scripts/explore.py runs/mnist-z2 --z 0.1,0.5 --index 7 --out figures/

Writes latent_map.png, manifold.png, blueprint.png, posterior.png, convergence.png,
reconstructions.png, samples.png, explore.json (the numbers behind the figures) and report.html
into the run folder or ``--out``, by :func:`evaluation.reporting.exploration.explore` once the
flags are checked and the run is open.
"""

from evaluation.command_line import commands, parsers
from models.utilities.entry_points import entry_point


def _main(args):
    return commands.explore(args)


main = entry_point(_main, parsers.explore)


if __name__ == "__main__":
    main()

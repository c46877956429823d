"""What training measures besides its loss: the ELBO per data point of a split, the check of
the data before the first step, and the summary of a finished run (the test ELBO of its best
epoch)."""

import os

import pyro
import torch

from inference.checkpoint import BEST, load_state, read_checkpoint
from inference.run_folder import RunFolderError
from inference.log_weights import log_importance_weights
from models.utilities.files import atomic_write_json
from models.vae import check_batch


@torch.no_grad()
def elbo_per_datapoint(model, guide, x, batch_size=1000):
    """The ELBO log p(x_n, z_n) - log q(z_n | x_n) with one z_n ~ q(z | x_n) for each point,
    as a tensor of shape (N,) in nats."""
    values = [log_importance_weights(model, guide, x[i:i + batch_size], 1)[0]
              for i in range(0, x.shape[0], batch_size)]
    return torch.cat(values)


def mean_elbo(model, guide, split, batch_size=1000, group=None):
    """The mean ELBO per data point over a split, in nats (one z per point). With a ``group``
    of processes each scores a contiguous share of the points and the sums are combined."""
    model.eval(), guide.eval()
    x = split.data()
    if group is not None:
        x = x[group.share(x.shape[0], 1)]
    try:
        with pyro.validation_enabled(False):   # the data were validated when training began
            values = elbo_per_datapoint(model, guide, x, batch_size) if x.shape[0] else \
                torch.zeros(0, device=x.device)
    finally:
        model.train(), guide.train()
    if group is None:
        return values.mean().item()
    total = group.sum(torch.stack([values.sum().double(), torch.tensor(
        float(values.numel()), dtype=torch.float64, device=values.device)]))
    return (total[0] / total[1]).item()


def validate_data(model, dataset):
    """Check every split once, with the model's own checks (shape, finite values, the support
    of the likelihood), so that the steps need not check each minibatch."""
    for name in ("train", "validation", "test"):
        split = getattr(dataset, name)
        check_batch(split.images, model.x_dim)
        if split.dynamic:
            # Dynamic binarization draws Bernoulli(grey level): the levels must be in [0, 1].
            if (split.images < 0).any() or (split.images > 1).any():
                raise ValueError(f"the {name} split has grey levels outside [0, 1]; they cannot "
                                 "be binarized")
        else:
            model.likelihood.check_data(split.images)


def summarize(model, guide, dataset, out_dir, metrics, best, group=None, run=None):
    """Score the best-on-validation parameters on the test split and write summary.json."""
    main = group is None or group.is_main
    states = None
    if main:
        # Only the states are needed: read without building (nothing the run names is
        # imported), and only from a best.pt of this run.
        best_checkpoint = read_checkpoint(os.path.join(out_dir, BEST), map_location="cpu")
        if run is not None and best_checkpoint.get("run") not in (None, run):
            raise RunFolderError(f"{best_checkpoint['path']} belongs to another run (its run "
                                 "identity differs); move it away and --resume")
        states = (best_checkpoint["model"], best_checkpoint["guide"], best_checkpoint["path"])
    if group is not None:
        # Only the first process can read the run folder (the others may be on other machines).
        states = group.broadcast(states)
    with torch.random.fork_rng(devices=[]):
        # Restore afterwards so that scoring does not perturb the generator state of the run.
        load_state(model, states[0], "model", states[2])
        load_state(guide, states[1], "guide", states[2])
        test_elbo = mean_elbo(model, guide, dataset.test, group=group)
    summary = {
        "test_elbo": test_elbo,
        "best_epoch": best["epoch"],
        "best_validation_elbo": best["validation_elbo"],
        "epochs": len(metrics),
        "seconds_per_epoch": sum(row["seconds"] for row in metrics) / max(1, len(metrics)),
        "num_train": len(dataset.train),
        "num_test": len(dataset.test),
        **({"run": run} if run is not None else {}),
    }
    if main:
        atomic_write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary

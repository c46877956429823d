"""The inference gap and its decomposition (Cremer, Li & Duvenaud 2018, "Inference Suboptimality
in Variational Autoencoders"):

    log p(x) - ELBO[q_phi]  =  (log p(x) - ELBO[q*])  +  (ELBO[q*] - ELBO[q_phi])
         inference gap          approximation gap         amortization gap

where q_phi(z | x) is the encoder and q* the best guide of the same family for this x alone (the
fitted ``local`` guide). The approximation gap is what the family cannot express; the amortization
gap is what the encoder loses by sharing one network across all x. log p(x) is estimated by
importance sampling with q* as the proposal, so it is an estimate, not the truth: the gaps carry
its Monte Carlo error, reported as standard errors.
"""

import torch

from evaluation.estimators import elbo, importance

GAP_FIELDS = ("log_px", "elbo_amortized", "elbo_local", "approximation_gap", "amortization_gap",
              "inference_gap")


@torch.no_grad()
def gap_decomposition(model, guide, local_guide, x, num_samples, *, max_batch_elements=None):
    """Per-point gaps, each a float64 tensor of shape (N,), and their standard errors.

    :returns: dict with the ``GAP_FIELDS`` and ``<field>_stderr`` for each; the identity
        ``inference_gap == approximation_gap + amortization_gap`` holds exactly.
    """
    options = dict(max_batch_elements=max_batch_elements)
    amortized = elbo(model, guide, x, num_samples, **options)
    local = elbo(model, local_guide, x, num_samples, **options)
    log_px = importance(model, local_guide, x, num_samples, **options)
    result = {
        "log_px": log_px.estimate,
        "elbo_amortized": amortized.estimate,
        "elbo_local": local.estimate,
        "approximation_gap": log_px.estimate - local.estimate,
        "amortization_gap": local.estimate - amortized.estimate,
        "inference_gap": log_px.estimate - amortized.estimate,
    }
    # The three estimates use independent draws, so their variances add.
    variance = {"log_px": log_px.stderr ** 2, "elbo_amortized": amortized.stderr ** 2,
                "elbo_local": local.stderr ** 2}
    result.update({f"{name}_stderr": value.sqrt() for name, value in variance.items()})
    result["approximation_gap_stderr"] = (variance["log_px"] + variance["elbo_local"]).sqrt()
    result["amortization_gap_stderr"] = (variance["elbo_local"]
                                         + variance["elbo_amortized"]).sqrt()
    result["inference_gap_stderr"] = (variance["log_px"] + variance["elbo_amortized"]).sqrt()
    return result


def summarize_gaps(gaps):
    """Means over the data points, with the Monte Carlo standard error of each mean."""
    num_data = gaps["log_px"].numel()
    summary = {}
    for name in GAP_FIELDS:
        summary[name] = gaps[name].mean().item()
        summary[f"{name}_stderr"] = (gaps[f"{name}_stderr"] ** 2).sum().sqrt().item() / num_data
    return summary

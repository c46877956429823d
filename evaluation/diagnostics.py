"""Pure functions that turn log importance weights into estimates of log p(x) and diagnostics.

Every function takes ``log_weights`` of shape (K, N): K weights for each of N data points, with
log w[k, n] = log p(x_n, z_kn) - log r(z_kn | x_n) for a proposal r. Nothing here samples.

- ``log_mean_exp``: log p-hat_n = log (1/K) sum_k w_kn, computed stably (Burda et al. 2015);
- ``log_mean_exp_stderr``: its standard error by the delta method, sd(w) / (sqrt(K) mean(w));
- ``effective_sample_size``: (sum_k w)^2 / sum_k w^2 (Kong 1992), between 1 and K;
- ``pareto_khat``: the shape k of a generalized Pareto fit to the largest weights (PSIS, Vehtari
  et al. 2024); above 0.7 the weights have so heavy a tail that the estimate cannot be trusted;
- ``max_normalized_weight``: the largest w_kn / sum_k w_kn; near 1 means one draw decides all.
"""

import math
import warnings

import numpy as np
import torch

#: Pareto k-hat above this marks an importance-sampling estimate as unreliable.
KHAT_THRESHOLD = 0.7


def _check(log_weights):
    if not torch.is_tensor(log_weights) or log_weights.dim() != 2:
        shape = tuple(log_weights.shape) if torch.is_tensor(log_weights) else type(log_weights)
        raise ValueError(f"expected log weights of shape (num_samples, num_data), got {shape}")
    if torch.isnan(log_weights).any():
        raise ValueError("log weights contain NaN; check the model, guide and data")
    if (log_weights == math.inf).any():
        raise ValueError("log weights contain +inf: the proposal puts zero density where the "
                         "model does not")
    return log_weights.double()


def _normalized(log_weights):
    """exp(log w - max_k log w): weights scaled so the largest is 1, and the log of the scale."""
    top = log_weights.max(0).values
    # A data point whose weights are all -inf has no mass anywhere: keep it at -inf, not NaN.
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return (log_weights - shift).exp(), shift


def log_mean_exp(log_weights):
    """log (1/K) sum_k exp(log w[k, n]) for each data point, shape (N,), in float64, stable
    for weights whose logs span thousands of nats."""
    log_weights = _check(log_weights)
    return torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])


def log_mean_exp_stderr(log_weights):
    """Standard error of log p-hat by the delta method: sd(w) / (sqrt(K) mean(w)), shape (N,).

    NaN for K = 1, where a single draw says nothing about its own spread. The formula is
    first-order: it understates the error when the weights are heavy-tailed (see k-hat).
    """
    log_weights = _check(log_weights)
    num_samples = log_weights.shape[0]
    if num_samples < 2:
        return torch.full(log_weights.shape[1:], math.nan, dtype=torch.float64)
    weights, _ = _normalized(log_weights)
    mean = weights.mean(0)
    return weights.std(0) / (math.sqrt(num_samples) * mean)


def mean_stderr(values):
    """The mean over the first dimension and its standard error sd / sqrt(K), each (N,)."""
    values = _check(values)
    num_samples = values.shape[0]
    stderr = values.std(0) / math.sqrt(num_samples) if num_samples > 1 else \
        torch.full(values.shape[1:], math.nan, dtype=torch.float64)
    return values.mean(0), stderr


def effective_sample_size(log_weights):
    """(sum_k w)^2 / sum_k w^2 for each data point, shape (N,): K for equal weights, 1 when one
    weight dominates."""
    log_weights = _check(log_weights)
    return (2 * torch.logsumexp(log_weights, 0) - torch.logsumexp(2 * log_weights, 0)).exp()


def max_normalized_weight(log_weights):
    """max_k w[k, n] / sum_k w[k, n] for each data point, shape (N,)."""
    log_weights = _check(log_weights)
    return (log_weights.max(0).values - torch.logsumexp(log_weights, 0)).exp()


def import_arviz():
    """arviz, imported on first use (it is slow to import) without its notice about the 1.x
    refactor, which says nothing about this project's results."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        import arviz
    return arviz


def pareto_khat(log_weights):
    """Pareto k-hat of the weights of each data point, shape (N,), by PSIS through arviz.

    ``arviz.psislw`` takes the log importance ratios themselves (its LOO code passes minus the
    log-likelihood, which is the log ratio there) with samples along the *last* axis, so the
    (K, N) weights are transposed. Fewer than about 20 weights give no fit (NaN).
    """
    log_weights = _check(log_weights)
    if log_weights.shape[0] < 20:
        return torch.full(log_weights.shape[1:], math.nan, dtype=torch.float64)
    arviz = import_arviz()
    array = log_weights.T.cpu().numpy()
    with warnings.catch_warnings():
        # arviz warns once per call when some k-hat is large; we report k-hat ourselves.
        warnings.simplefilter("ignore")
        _, khat = arviz.psislw(np.ascontiguousarray(array), reff=1.0)
    return torch.as_tensor(np.asarray(khat, dtype=np.float64)).reshape(log_weights.shape[1:])


def summarize_weights(log_weights):
    """All per-data-point diagnostics of importance weights, as a dict of (N,) float64 tensors:
    ``estimate`` (log p-hat), ``stderr``, ``ess``, ``ess_fraction`` (ESS / K), ``khat`` and
    ``max_weight``."""
    log_weights = _check(log_weights)
    ess = effective_sample_size(log_weights)
    return {
        "estimate": log_mean_exp(log_weights),
        "stderr": log_mean_exp_stderr(log_weights),
        "ess": ess,
        "ess_fraction": ess / log_weights.shape[0],
        "khat": pareto_khat(log_weights),
        "max_weight": max_normalized_weight(log_weights),
    }


def fraction_flagged(khat, threshold=KHAT_THRESHOLD):
    """The fraction of data points whose k-hat exceeds ``threshold`` (NaN k-hats not counted)."""
    khat = torch.as_tensor(khat)
    if khat.numel() == 0:
        return math.nan
    return (khat > threshold).double().mean().item()

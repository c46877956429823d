"""Annealed importance sampling (Neal 2001) for decoder-based models (Wu et al. 2017), and
bidirectional Monte Carlo (Grosse et al. 2015).

For each data point x, C chains move from a normalized start density pi_0(z) (the prior p(z), or
the guide q(z | x)) to the posterior through the geometric path

    f_t(z) = pi_0(z) * (p(x, z) / pi_0(z)) ** beta_t,        0 = beta_0 < ... < beta_T = 1,

so f_0 = pi_0 and f_T = p(x, z), whose normalizer is p(x). Each chain accumulates

    log w = sum_t (beta_t - beta_{t-1}) * l(z_{t-1}),        l(z) = log p(x, z) - log pi_0(z),

and moves by an HMC transition that leaves f_t invariant; E[w] = p(x), so log-mean-exp over the
chains is a stochastic lower bound. The HMC step size is adapted for each data point towards a
target acceptance rate, as in Wu et al. (2017). Everything is vectorized over chains and data
points; data points are processed in chunks to bound memory.

Run with the schedule reversed from an exact posterior sample (available for data simulated from
the model), the same recursion gives E[w] = 1 / p(x), so -log w is a stochastic upper bound: the
two together sandwich log p(x) (BDMC). The reverse chains end at the same start density pi_0 as
the forward ones begin with, so the gap measures the setting that made the estimate: AIS from
the guide is checked by BDMC from the guide, on the guide's q(z | x) of the simulated x.

The model may be any Pyro model of the data-plate convention, with latent sites of any names
(several are annealed as one flat vector, :class:`evaluation.log_density.LatentLogDensity`), and
the guide any Pyro guide over the same sites (:class:`evaluation.log_density.GuideLogDensity`).

The standard error of an AIS estimate (the spread of the chains' weights) measures only the
Monte Carlo error over the chains: the bias of annealing with too few steps, which keeps the
estimate below log p(x) however many chains run, is not in it. The BDMC gap of :func:`bdmc`
is the tool for that bias. With fewer chains than
:data:`evaluation.diagnostics.MIN_KHAT_SAMPLES` the chains' weights get no Pareto k-hat: their
reliability is not checked (and the estimators' summary says so).
"""

import math

import torch

from evaluation.diagnostics import log_mean_exp
from evaluation.log_density import GuideLogDensity, LatentLogDensity, simulate
from inference.log_weights import (check_num_samples, default_max_batch_elements, points_per_chunk,
                                   seed_chunk)


def sigmoid_schedule(num_steps, sharpness=4.0):
    """beta_0 = 0, ..., beta_T = 1 spaced as a rescaled sigmoid: dense near both ends, where the
    intermediate distributions change fastest (Grosse et al. 2015; Wu et al. 2017)."""
    grid = torch.linspace(-1.0, 1.0, num_steps + 1, dtype=torch.float64)
    points = torch.sigmoid(sharpness * grid)
    return (points - points[0]) / (points[-1] - points[0])


def linear_schedule(num_steps):
    return torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)


def geometric_schedule(num_steps, smallest=1e-4):
    """beta_t spaced evenly in log between ``smallest`` and 1 (after beta_0 = 0)."""
    betas = torch.logspace(math.log10(smallest), 0.0, num_steps, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), betas])


SCHEDULES = {"sigmoid": sigmoid_schedule, "linear": linear_schedule,
             "geometric": geometric_schedule}
#: the defaults of AIS, shared by the ``ais`` estimator, :func:`ais_log_weights` and :func:`bdmc`
STEPS, LEAPFROG, STEP_SIZE, TARGET_ACCEPT, SCHEDULE = 500, 10, 0.05, 0.65, "sigmoid"
#: where the chains may start: the prior p(z), or the guide q(z | x)
STARTS = ("prior", "guide")


class _Start:
    """The normalized start density pi_0 of the chains: the prior, or the guide q(z | x)."""

    def __init__(self, kind, model, guide, x, density):
        self.density = density
        _check_start(kind, guide)
        self.distribution = None if kind == "prior" else GuideLogDensity(guide, x, density)

    def sample(self, num_chains):
        """Initial states z ~ pi_0 of shape (C, N, D)."""
        if self.distribution is not None:
            return self.distribution.sample((num_chains,))
        return self.density.sample_prior(num_chains)

    def evaluate(self, z):
        """(log pi_0(z), l(z), grad log pi_0, grad l), each log density of shape (C, N)."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            log_prior, log_likelihood = self.density(z)
            if self.distribution is None:
                log_start, log_ratio = log_prior, log_likelihood
            else:
                log_start = self.distribution.log_prob(z)
                log_ratio = log_prior + log_likelihood - log_start
            grad_start = torch.autograd.grad(log_start.sum(), z, retain_graph=True)[0]
            grad_ratio = torch.autograd.grad(log_ratio.sum(), z)[0]
        return log_start.detach(), log_ratio.detach(), grad_start, grad_ratio


def anneal(start, z, betas, num_leapfrog=LEAPFROG, step_size=STEP_SIZE,
           target_accept=TARGET_ACCEPT, adapt_step_size=True):
    """Run the AIS recursion from states ``z`` (C, N, D) along ``betas``; return
    (log_weights (C, N), final z, mean acceptance rate per data point (N,), final step sizes (N,)).
    ``betas`` may run backwards (from 1 to 0) for reverse AIS."""
    num_chains, num_data, _ = z.shape
    step = torch.full((num_data, 1), float(step_size), dtype=z.dtype, device=z.device)
    log_weights = torch.zeros(num_chains, num_data, dtype=torch.float64, device=z.device)
    acceptance = torch.zeros(num_data, dtype=torch.float64, device=z.device)
    log_start, log_ratio, grad_start, grad_ratio = start.evaluate(z)
    betas = betas.tolist()
    for previous, beta in zip(betas[:-1], betas[1:]):
        log_weights += (beta - previous) * log_ratio.double()

        def log_f(ls, lr):
            return ls + beta * lr

        def grad_f(gs, gr):
            return gs + beta * gr

        momentum = torch.randn_like(z)
        kinetic = 0.5 * (momentum ** 2).sum(-1)
        z_new, p = z, momentum + 0.5 * step * grad_f(grad_start, grad_ratio)
        for leap in range(num_leapfrog):
            z_new = z_new + step * p
            new = start.evaluate(z_new)
            scale = 1.0 if leap < num_leapfrog - 1 else 0.5
            p = p + scale * step * grad_f(new[2], new[3])
        log_accept = (log_f(new[0], new[1]) - 0.5 * (p ** 2).sum(-1)
                      - log_f(log_start, log_ratio) + kinetic)
        log_accept = torch.nan_to_num(log_accept, nan=-math.inf)
        accept_prob = log_accept.clamp(max=0.0).exp()
        accepted = torch.rand_like(accept_prob) < accept_prob
        keep = accepted.unsqueeze(-1)
        z = torch.where(keep, z_new.detach(), z)
        log_start = torch.where(accepted, new[0], log_start)
        log_ratio = torch.where(accepted, new[1], log_ratio)
        grad_start = torch.where(keep, new[2], grad_start)
        grad_ratio = torch.where(keep, new[3], grad_ratio)
        rate = accept_prob.mean(0)
        acceptance += rate.double()
        if adapt_step_size:
            # Wu et al. (2017): nudge each data point's step size towards the target rate.
            factor = torch.where(rate > target_accept, 1.02, 0.98).unsqueeze(-1)
            step = (step * factor).clamp(1e-5, 1.0)
    return log_weights, z, acceptance / max(1, len(betas) - 1), step.squeeze(-1)


def _check_start(start, guide):
    if start not in STARTS:
        raise ValueError(f"unknown AIS start {start!r}; valid: {', '.join(STARTS)}")
    if start == "guide" and guide is None:
        raise ValueError("AIS from the guide (--ais-start guide) needs a guide; use "
                         "--ais-start prior")


def _check_settings(num_chains, num_steps, num_leapfrog, step_size, target_accept, schedule):
    """Refuse AIS settings that make no sense, with the flag to change; returns num_chains."""
    num_chains = check_num_samples(num_chains)
    if int(num_steps) < 1 or int(num_leapfrog) < 1:
        raise ValueError(f"AIS needs at least one step and one leapfrog step, got "
                         f"{num_steps} steps and {num_leapfrog} leapfrog steps")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown AIS schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"the target acceptance rate must lie in (0, 1), got {target_accept}")
    if not 0.0 < step_size < math.inf:
        raise ValueError(f"the HMC step size (--ais-step-size) must be positive, got {step_size}")
    return num_chains


def ais_log_weights(model, guide, x, num_chains=16, *, num_steps=STEPS, num_leapfrog=LEAPFROG,
                    step_size=STEP_SIZE, target_accept=TARGET_ACCEPT, schedule=SCHEDULE,
                    start="prior", max_batch_elements=None):
    """AIS log weights (C, N): log-mean-exp over the C chains estimates log p(x_n) from below.

    :returns: (log_weights, info) where ``info`` holds per-data-point ``acceptance`` rates and
        final ``step_size``.
    """
    num_chains = _check_settings(num_chains, num_steps, num_leapfrog, step_size, target_accept,
                                 schedule)
    betas = SCHEDULES[schedule](int(num_steps))
    if max_batch_elements is None:
        max_batch_elements = default_max_batch_elements(x[0].numel(), x.device)
    if num_chains > max_batch_elements:
        raise ValueError(f"{num_chains} AIS chains per data point exceed the "
                         f"{max_batch_elements} (chain, data point) pairs one chunk may hold; "
                         "use fewer chains (--ais-chains) or raise --max-batch-elements")
    data_step = points_per_chunk(num_chains, max_batch_elements)
    weights, acceptance, steps = [], [], []
    for begin in range(0, x.shape[0], data_step):
        seed_chunk(begin)
        x_chunk = x[begin:begin + data_step]
        density = LatentLogDensity(model, x_chunk)
        chain_start = _Start(start, model, guide, x_chunk, density)
        z = chain_start.sample(num_chains)
        log_weights, _, rate, step = anneal(chain_start, z, betas, num_leapfrog, step_size,
                                            target_accept)
        weights.append(log_weights), acceptance.append(rate), steps.append(step)
    info = {"acceptance": torch.cat(acceptance), "step_size": torch.cat(steps)}
    return torch.cat(weights, 1), info


def bdmc(model, num_data, num_chains=4, *, guide=None, start="prior", like=None,
         num_steps=STEPS, num_leapfrog=LEAPFROG, step_size=STEP_SIZE,
         target_accept=TARGET_ACCEPT, schedule=SCHEDULE, max_batch_elements=None):
    """Bidirectional Monte Carlo (Grosse et al. 2015) on ``num_data`` points simulated from the
    model itself: (z*, x) ~ p(z) p(x | z), so z* is an exact posterior sample for x.

    Forward AIS from the start density pi_0 (``start``: the prior, or the guide q(z | x) of the
    simulated x, as the estimate to be checked was made) gives a stochastic lower bound of
    log p(x); reverse AIS from z* back to the same pi_0 gives a stochastic upper bound. Their gap
    bounds the error of forward AIS with these settings and this start on data like the model's
    own. The points are simulated and annealed a block at a time, at most
    ``max_batch_elements`` (chain, point) pairs in each; the simulated points kept for the
    result must fit in ``BDMC_BYTES``, else the call is refused before any work.

    :param like: a data tensor whose rows show the shape of x, for a model that needs data to
        run (see :func:`evaluation.log_density.simulate`).
    :returns: dict of (N,) tensors ``lower``, ``upper``, ``gap`` and the simulated ``x`` and
        ``z`` (the latents flattened as :class:`evaluation.log_density.LatentLogDensity` does).
    """
    num_chains = _check_settings(num_chains, num_steps, num_leapfrog, step_size, target_accept,
                                 schedule)
    _check_start(start, guide)
    num_data, x_one = check_bdmc_fits(model, num_data, like)
    if max_batch_elements is None:
        max_batch_elements = default_max_batch_elements(x_one.numel(), x_one.device)
    if num_chains > max_batch_elements:
        raise ValueError(f"{num_chains} AIS chains per data point exceed the "
                         f"{max_batch_elements} (chain, data point) pairs one chunk may hold; "
                         "use fewer chains (--ais-chains) or raise --max-batch-elements")
    betas = SCHEDULES[schedule](int(num_steps))
    block = points_per_chunk(num_chains, max_batch_elements)
    results = {key: [] for key in ("lower", "upper", "x", "z")}
    for begin in range(0, num_data, block):
        x, z_true = simulate(model, min(block, num_data - begin), like)
        density = LatentLogDensity(model, x)
        chain_start = _Start(start, model, guide, x, density)
        z = chain_start.sample(num_chains)
        forward, *_ = anneal(chain_start, z, betas, num_leapfrog, step_size, target_accept)
        z_star = z_true.unsqueeze(0).expand(num_chains, *z_true.shape).contiguous()
        reverse, *_ = anneal(chain_start, z_star, betas.flip(0), num_leapfrog, step_size,
                             target_accept)
        for key, value in (("lower", log_mean_exp(forward)), ("upper", -log_mean_exp(reverse)),
                           ("x", x), ("z", z_true)):
            results[key].append(value)
    result = {key: torch.cat(values) for key, values in results.items()}
    result["gap"] = result["upper"] - result["lower"]
    return result


#: at most this many bytes for the points BDMC simulates and returns
BDMC_BYTES = 2 ** 30


def check_bdmc_fits(model, num_data, like=None):
    """Refuse, before any work, a number of points to simulate for BDMC that is not a positive
    whole number or whose points cannot be held (``BDMC_BYTES``). Returns (num_data, one
    simulated x), the latter drawn beside the random stream of the simulation."""
    if isinstance(num_data, bool) or int(num_data) != num_data or num_data < 1:
        raise ValueError(f"BDMC needs at least one simulated point (--bdmc), got {num_data}")
    num_data = int(num_data)
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1] \
        if isinstance(model, torch.nn.Module) else []
    with torch.random.fork_rng(devices=devices):
        x_one, z_one = simulate(model, 1, like)
    needed = num_data * (x_one.numel() + z_one.numel() + 3) * x_one.element_size()
    if needed > BDMC_BYTES:
        raise ValueError(f"BDMC on {num_data} simulated points would hold "
                         f"{needed / 2 ** 30:.1f} GiB of them (limit "
                         f"{BDMC_BYTES / 2 ** 30:.0f} GiB); simulate fewer points (--bdmc)")
    return num_data, x_one

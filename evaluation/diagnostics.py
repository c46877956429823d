"""Pure functions that turn log importance weights into estimates of log p(x) and diagnostics.

Every function takes ``log_weights`` of shape (K, N): K weights for each of N data points, with
log w[k, n] = log p(x_n, z_kn) - log r(z_kn | x_n) for a proposal r. Nothing here samples.

- ``log_mean_exp``: log p-hat_n = log (1/K) sum_k w_kn, computed stably (Burda et al. 2015);
- ``log_mean_exp_stderr``: its standard error by the delta method, sd(w) / (sqrt(K) mean(w));
- ``covering_stderr``: the standard error the estimators report per point, which also counts the
  tail of the weights that K draws rarely show (see :func:`covering_stderr`);
- ``spread_stderr``: the standard deviation of log p-hat over repeated draws under the same tail
  model, the part each point adds to the error of a mean over points;
- ``effective_sample_size``: (sum_k w)^2 / sum_k w^2 (Kong 1992), between 1 and K;
- ``pareto_khat``: the shape k of a generalized Pareto fit to the largest weights (PSIS, Vehtari
  et al. 2024); above 0.7 the weights have so heavy a tail that the estimate cannot be trusted;
- ``max_normalized_weight``: the largest w_kn / sum_k w_kn; near 1 means one draw decides all;
- :class:`WeightSummary`: all of these accumulated chunk by chunk, so that K x N weights never
  have to be held at once (any K runs in bounded memory) and the numbers do not depend on how
  the weights were chunked.

(Over 300 lines: every statistic is computed twice, from all K weights at once and streamed
chunk by chunk, and the two are kept side by side so that they stay the same numbers.)
"""

import math
import warnings

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


#: the tail model of :func:`covering_stderr` reaches out to the weight that K draws exceed with
#: this probability (in all, not each): smaller reaches give wider errors
POINT_TAIL_REACH = 0.05

#: the reach of :func:`spread_stderr`, whose root mean square matches the spread of the
#: estimates over repeated draws
SPREAD_TAIL_REACH = 0.2


def covering_stderr(log_weights):
    """The standard error of log p-hat that the estimators report per point, shape (N,): the
    larger of the delta method's and that of a model of the weights whose tail is fitted to the
    largest ones, as a root mean square error with the first-order bias of a log of a mean,
    -se^2 / 2. About 95% of estimates lie within two of these errors of log p(x).

    Why: the delta method reads the spread of the weights off the K draws themselves. Where the
    weights have a heavy tail (a proposal narrower than the posterior, or shifted from it), the
    draws that decide the mean are rare, and a sample that misses them is low *and* reports a
    small spread: the estimates furthest from the truth claim the smallest errors. On the
    linear-Gaussian model with such proposals 11-15% of the points lay beyond two delta-method
    errors of the exact log p(x) (3-6% beyond three), not 5%, and the mean over the points
    spread 1.1-1.3 times its reported error over seeds. Batches of the K draws do not help:
    every batch misses the same tail (tests/test_standard_errors.py measures all this).

    The model: above u, the (M + 1)-th largest weight (M = :func:`psis_tail_size`, the tail
    PSIS fits), the weights are Pareto, w = u exp(k v) with v ~ Exp(1) and k the Hill estimate
    mean_i log(w_i / u) over the M largest (steadier than the generalized Pareto fit of k-hat
    at these M; capped at 1); below u, the draws as they are. The error is the model's root mean
    square about the sample mean, relative to the sample mean, over K draws, each a tail draw
    with chance M / K, with the tail counted out to the weight that K draws exceed with
    probability ``POINT_TAIL_REACH`` (finite for any k, where a Pareto's variance is infinite
    from k = 1/2). Where the weights are light-tailed the model agrees with the draws and the
    delta method is what is reported.

    Two errors from one model, because a point's interval and a mean over points ask different
    things. A point's error must also cover the samples that fell short of their tail, which
    are low and report small errors; reaching further into the tail (``POINT_TAIL_REACH`` =
    0.05) puts 4-5% of the points of the linear-Gaussian test beyond two errors (7% at 0.2). A
    mean over many points only needs each point's spread, which errors and skew average out of:
    :func:`spread_stderr`, the same model reaching to ``SPREAD_TAIL_REACH`` = 0.2, whose
    sqrt(sum_n se_n^2) / N is within 6% of the spread of the mean over seeds there (the point
    errors' would overstate it by 40%). The estimators report both (``stderr`` and
    ``stderr_spread``), and means over points use the second.

    A point whose sample missed its tail entirely can still lie far out (k-hat flags many such
    points). Fewer than ``MIN_KHAT_SAMPLES`` weights have no tail to fit: the delta method
    (with the bias term) alone. NaN for K = 1."""
    return _whole_summary(log_weights)["stderr"]


def spread_stderr(log_weights):
    """The standard deviation of log p-hat over repeated draws of the K weights, shape (N,):
    the tail model of :func:`covering_stderr` reaching to ``SPREAD_TAIL_REACH`` (never below the
    delta method's; with the bias term). What each point adds to the Monte Carlo error of a mean
    over points, sqrt(sum_n se_n^2) / N. For Pareto weights, where the model is exact, its root
    mean square is the spread of the estimates."""
    return _whole_summary(log_weights)["stderr_spread"]


def _whole_summary(log_weights):
    log_weights = _check(log_weights)
    summary = WeightSummary(log_weights.shape[1], log_weights.shape[0], log_weights.device,
                            log_moments=False)
    summary.update(slice(None), log_weights)
    return summary.result()


def _gauss_legendre(order):
    """Nodes and weights of Gauss-Legendre quadrature on [-1, 1] (Golub & Welsch 1969)."""
    index = torch.arange(1, order, dtype=torch.float64)
    off_diagonal = index / torch.sqrt(4 * index ** 2 - 1)
    jacobi = torch.diag(off_diagonal, 1) + torch.diag(off_diagonal, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    return nodes, 2 * vectors[0] ** 2


#: (exp(k v) - 1)^p exp(-v) on [0, log(M / reach)] is smooth: 32 nodes give it to rounding
_NODES, _NODE_WEIGHTS = _gauss_legendre(32)


def _tail_model_stderr(top, top_log_weight, mean, squares, count, tail_reach):
    """The relative standard error of the mean of K weights under the tail model of
    :func:`covering_stderr` reaching to ``tail_reach``, shape (N,), from a
    :class:`WeightSummary`'s state: the M + 1 largest log weights ``top`` (M + 1, N), the
    largest log weight, and the count, mean and sum of squared deviations of the weights on the
    scale where the largest is 1. NaN where the (M + 1)-th largest weight is zero (a tail of
    fewer weights has no Pareto fit).

    Every reduction runs along the M + 1 weights or the quadrature nodes with
    :func:`_pairwise_sum`, so a point's value does not depend on the points computed with it."""
    num_tail = top.shape[0] - 1
    scaled = top.sort(0, descending=True).values - _finite_or_zero(top_log_weight)
    threshold = scaled[num_tail]                           # log u, on the scale of the largest
    tail = scaled[:num_tail].exp()
    u = threshold.exp()
    # Hill's estimate of the Pareto shape: the mean log excess of the M largest over u. Beyond
    # k = 1 not even the mean exists; the estimate is capped there to stay finite (k-hat flags).
    shape = (_pairwise_sum(scaled[:num_tail] - threshold, 0) / num_tail).clamp(max=1.0)
    shape = torch.where(torch.isfinite(shape), shape, torch.zeros_like(shape))
    # The bulk: the draws below u as they are; squares about the sample mean.
    bulk_squares = ((squares - _pairwise_sum((tail - mean) ** 2, 0)).clamp(min=0.0)
                    / (count - num_tail))
    # The tail: w = u exp(k v), v ~ Exp(1) below reach = log(M / tail_reach), where K draws
    # pass with probability tail_reach; moments of exp(k v) - 1 by quadrature (stable at k = 0).
    reach = math.log(num_tail / tail_reach)
    nodes = ((_NODES + 1) * (reach / 2)).to(top.device).unsqueeze(-1)          # (G, 1)
    weights = (_NODE_WEIGHTS * (reach / 2)).to(top.device).unsqueeze(-1) * torch.exp(-nodes)
    inside = -math.expm1(-reach)
    excess = torch.expm1(shape * nodes)                                         # (G, N)
    first = _pairwise_sum(weights * excess, 0) / inside
    second = _pairwise_sum(weights * excess ** 2, 0) / inside
    offset = u - mean
    tail_squares = offset ** 2 + 2 * offset * u * first + u ** 2 * second   # E[(w - mean)^2]
    tail_fraction = num_tail / count
    # The mean square about the sample mean, relative to the sample mean: a sample that fell
    # short of the tail its largest draws imply is further from the truth, and so is its error.
    squares_per_draw = (1 - tail_fraction) * bulk_squares + tail_fraction * tail_squares
    result = (squares_per_draw / count).sqrt() / mean
    return torch.where(torch.isfinite(threshold), result, torch.full_like(result, math.nan))


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


#: fewer weights than this give no Pareto fit (k-hat is NaN)
MIN_KHAT_SAMPLES = 20


def psis_tail_size(num_samples):
    """M, the number of largest weights PSIS fits a generalized Pareto distribution to:
    ceil(min(K / 5, 3 sqrt(K))) (Vehtari et al. 2024, with relative efficiency 1)."""
    return int(math.ceil(min(num_samples / 5.0, 3 * math.sqrt(num_samples))))


def _pairwise_sum(values, dim):
    """The sums of ``values`` along ``dim``, added pairwise in an order set by the length of
    ``dim`` alone: the second half is added to the first, element by element (the middle one of
    an odd length waits), until one is left.

    Each sum is therefore the same bits however many other sums are taken with it, and where.
    torch's own reductions choose their order by the whole shape (vectorized along a row or down
    the columns, split among threads or GPU blocks), so that a data point's k-hat would change
    in its last bits with the number of points fitted with it: with the number of processes."""
    sums, length = values, values.shape[dim]
    while length > 1:
        half = (length + 1) // 2
        upper = sums.narrow(dim, half, length - half)
        if sums is values:   # the sums build up in a copy, not in the input
            sums = values.narrow(dim, 0, half).clone()
        sums.narrow(dim, 0, length - half).add_(upper)
        length = half
    return sums.narrow(dim, 0, 1).squeeze(dim)


def _gpd_shape(tails):
    """The shape k of a generalized Pareto distribution fitted to each column of ``tails``
    (n, C), each sorted ascending and positive: the empirical Bayes estimate of Zhang & Stephens
    (2009) with the weak prior of PSIS (Vehtari et al. 2024), vectorized over the columns. A
    column's k does not depend on the other columns, to the bit (see :func:`_pairwise_sum`)."""
    n = tails.shape[0]
    prior_bs, prior_k = 3.0, 10.0
    m_est = 30 + int(n ** 0.5)
    b = 1 - torch.sqrt(m_est / (torch.arange(1, m_est + 1, dtype=tails.dtype,
                                             device=tails.device) - 0.5))
    b = b.unsqueeze(-1) / (prior_bs * tails[int(n / 4 + 0.5) - 1]) + 1 / tails[-1]   # (m, C)
    k = _pairwise_sum(torch.log1p(-b.unsqueeze(1) * tails.unsqueeze(0)), 1) / n       # (m, C)
    length_scale = n * (torch.log(-(b / k)) - k - 1)
    # weight_j = 1 / sum_i exp(l_i - l_j): the normalized profile likelihood of b_j
    weights = 1 / _pairwise_sum(torch.exp(length_scale.unsqueeze(0)
                                          - length_scale.unsqueeze(1)), 1)
    weights = torch.where(weights >= 10 * torch.finfo(tails.dtype).eps, weights,
                          torch.zeros_like(weights))
    weights = weights / _pairwise_sum(weights, 0)
    b_post = _pairwise_sum(b * weights, 0)
    k_post = _pairwise_sum(torch.log1p(-b_post * tails), 0) / n
    return (n * k_post + prior_k * 0.5) / (n + prior_k)


def pareto_khat_of_top(top, num_samples, columns_at_once=1024):
    """Pareto k-hat of each data point from its M + 1 largest log weights (``top``, shape
    (M + 1, N), any order, M = :func:`psis_tail_size`), out of ``num_samples`` in all.

    The tail is the M largest weights above the (M + 1)-th, shifted by it:
    w - w_(M+1) on the scale where the largest weight is 1, exactly as PSIS (and
    ``arviz.psislw``) forms it; a tail with ties at the cutoff is shorter, and one of four or
    fewer weights gives k = inf. NaN for fewer than ``MIN_KHAT_SAMPLES`` weights.
    """
    top = top.double()
    num_data = top.shape[1]
    if num_samples < MIN_KHAT_SAMPLES or num_data == 0:
        return torch.full((num_data,), math.nan, dtype=torch.float64)
    x = top.sort(0).values
    x = x - x[-1]
    cutoff = torch.clamp(x[0], min=math.log(torch.finfo(torch.float64).tiny))
    tail = x[1:]
    above = tail > cutoff
    shifted = tail.exp() - cutoff.exp()
    khat = torch.full((num_data,), math.nan, dtype=torch.float64, device=top.device)
    full = above.all(0) & torch.isfinite(top).all(0)
    index = full.nonzero().flatten()
    for start in range(0, index.numel(), columns_at_once):
        chosen = index[start:start + columns_at_once]
        if shifted.shape[0] <= 4:
            khat[chosen] = math.inf
        else:
            khat[chosen] = _gpd_shape(shifted[:, chosen])
    for column in (~full).nonzero().flatten().tolist():   # ties at the cutoff, or -inf weights
        if not torch.isfinite(top[-1:, column].max()):
            continue
        values = shifted[above[:, column], column]
        khat[column] = math.inf if values.numel() <= 4 else _gpd_shape(values.unsqueeze(1))[0]
    return khat.cpu()


def pareto_khat(log_weights):
    """Pareto k-hat of the weights of each data point, shape (N,): the shape of a generalized
    Pareto fit to the largest weights (PSIS, Vehtari et al. 2024). Fewer than
    ``MIN_KHAT_SAMPLES`` weights give no fit (NaN)."""
    log_weights = _check(log_weights)
    num_samples = log_weights.shape[0]
    if num_samples < MIN_KHAT_SAMPLES:
        return torch.full(log_weights.shape[1:], math.nan, dtype=torch.float64)
    top = log_weights.topk(psis_tail_size(num_samples) + 1, dim=0).values
    return pareto_khat_of_top(top, num_samples)


#: at most this many bytes for the largest weights that the Pareto fits keep per data point
TAIL_BYTES = 2 ** 30


class WeightSummary:
    """Accumulates what the diagnostics need from (K, N) log weights given chunk by chunk: per
    data point the largest log weight m, the mean and the sum of squared deviations of
    w exp(-m) (merged with the pairwise formula of Chan et al. 1979, rescaled as m grows), the
    same moments of log w (for the ELBO, with ``log_moments``), and the M + 1 largest log
    weights (for Pareto k-hat).

    The state takes O(N M) memory, M ~ 3 sqrt(K), whatever K is; a K so large that even that
    does not fit in ``TAIL_BYTES`` is refused before any work is done.

    :param int num_data: N.
    :param int num_samples: K, the number of weights each data point will receive in all.
    :param bool log_moments: also keep the moments of log w (only the ELBO needs them).
    """

    def __init__(self, num_data, num_samples, device="cpu", log_moments=True):
        self.num_data, self.num_samples = int(num_data), int(num_samples)
        self.log_moments = bool(log_moments)
        self.tail = psis_tail_size(self.num_samples) + 1
        if self.num_samples < MIN_KHAT_SAMPLES:
            self.tail = 0
        needed = 8 * self.num_data * self.tail
        if needed > TAIL_BYTES:
            raise ValueError(
                f"K = {self.num_samples} samples for each of {self.num_data} points needs "
                f"{needed / 2 ** 30:.1f} GiB for the Pareto tails of the weights (limit "
                f"{TAIL_BYTES / 2 ** 30:.0f} GiB); evaluate fewer points at once (--num-data) "
                "or use a smaller K")
        options = dict(dtype=torch.float64, device=device)
        self.count = torch.zeros(self.num_data, **options)
        self.top_log_weight = torch.full((self.num_data,), -math.inf, **options)
        self.weight_mean = torch.zeros(self.num_data, **options)      # of w exp(-m)
        self.weight_squares = torch.zeros(self.num_data, **options)   # sum of squared deviations
        if self.log_moments:
            self.log_mean = torch.zeros(self.num_data, **options)
            self.log_squares = torch.zeros(self.num_data, **options)
        self.top = torch.full((self.tail, self.num_data), -math.inf, **options)

    def update(self, data, log_weights):
        """Add the weights ``log_weights`` (k, n) of the data points ``data`` (a slice or an
        index of n points). A NaN or +inf weight is reported by :meth:`result`: both reach the
        largest log weight m and stay there, so no check (and no wait for a GPU) is needed here."""
        log_weights = log_weights.double()
        k = log_weights.shape[0]
        if k == self.num_samples and self.tail <= k:
            self._first_and_only(data, log_weights)
            return
        count = self.count[data]
        total = count + k
        # Weights on the scale of the new largest weight; all -inf stays at a scale of 1.
        chunk_top = log_weights.max(0).values
        old_top = self.top_log_weight[data]
        new_top = torch.maximum(old_top, chunk_top)
        shift = _finite_or_zero(new_top)
        rescale = torch.exp(old_top - shift)
        old_mean = self.weight_mean[data] * rescale
        old_squares = self.weight_squares[data] * rescale ** 2
        weights = torch.exp(log_weights - shift)
        chunk_mean = weights.mean(0)
        chunk_squares = ((weights - chunk_mean) ** 2).sum(0)
        self.weight_mean[data], self.weight_squares[data] = _merge(
            count, old_mean, old_squares, k, chunk_mean, chunk_squares)
        self.top_log_weight[data] = new_top
        if self.log_moments:
            chunk_log_mean = log_weights.mean(0)
            chunk_log_squares = ((log_weights - chunk_log_mean) ** 2).sum(0)
            self.log_mean[data], self.log_squares[data] = _merge(
                count, self.log_mean[data], self.log_squares[data], k, chunk_log_mean,
                chunk_log_squares)
        self.count[data] = total
        if self.tail:
            merged = torch.cat([self.top[:, data], log_weights])
            self.top[:, data] = merged.topk(self.tail, dim=0).values

    def _first_and_only(self, data, log_weights):
        """All K weights of the points at once (the usual chunk, whose columns are whole): the
        general update with nothing to merge, in fewer operations (each costs tens of microseconds
        right after a chunk, whose arithmetic has pushed their code and data out of the caches).
        For finite and -inf weights every step gives the bits of the merge with an empty state
        (times 1, plus 0, the top of -inf and the new weights), so whole and split columns are
        summarized alike."""
        top = log_weights.max(0).values
        weights = (log_weights - _finite_or_zero(top)).exp_()
        mean = weights.mean(0)
        # Finite: a NaN here comes from a NaN or +inf weight, which result() refuses.
        self.weight_mean[data] = mean
        self.weight_squares[data] = ((weights - mean) ** 2).sum(0)
        self.top_log_weight[data] = top
        if self.log_moments:
            log_mean = log_weights.mean(0)
            log_squares = ((log_weights - log_mean) ** 2).sum(0)
            self.log_mean[data] = torch.nan_to_num(log_mean, nan=0.0)
            self.log_squares[data] = torch.nan_to_num(log_squares, nan=0.0)
        self.count[data] = float(self.num_samples)
        if self.tail:
            self.top[:, data] = log_weights.topk(self.tail, dim=0).values

    def result(self):
        """The per-data-point diagnostics, a dict of (N,) float64 tensors on the CPU: those of
        :func:`summarize_weights` (``stderr`` is :func:`covering_stderr`, ``stderr_spread``
        :func:`spread_stderr`), ``stderr_delta`` (the delta method's,
        :func:`log_mean_exp_stderr`), plus, with ``log_moments``,
        ``log_weight_mean`` and ``log_weight_stderr`` (the mean of the log weights, the ELBO for
        guide weights, and its standard error)."""
        top = self.top_log_weight
        nan_seen, inf_seen = torch.stack([top.isnan().any(), (top == math.inf).any()]).tolist()
        if nan_seen:
            raise ValueError("log weights contain NaN; check the model, guide and data")
        if inf_seen:
            raise ValueError("log weights contain +inf: the proposal puts zero density where "
                             "the model does not")
        count, mean = self.count, self.weight_mean
        estimate = self.top_log_weight + mean.log()
        nan = torch.full_like(mean, math.nan)
        spread = (self.weight_squares / (count - 1)).sqrt() if self.num_samples > 1 else nan
        ess = count * mean ** 2 / (self.weight_squares / count + mean ** 2)
        khat = pareto_khat_of_top(self.top, self.num_samples) if self.tail else \
            torch.full((self.num_data,), math.nan, dtype=torch.float64)
        delta = spread / (count.sqrt() * mean)
        covering = spread_of_estimate = delta
        if self.tail:
            # fmax: where the tail has no fit (NaN), the delta method alone
            covering, spread_of_estimate = (torch.fmax(delta, _tail_model_stderr(
                self.top, self.top_log_weight, mean, self.weight_squares, count, reach))
                for reach in (POINT_TAIL_REACH, SPREAD_TAIL_REACH))
        result = {
            "estimate": estimate,
            # root mean square errors: the spread and the first-order bias -se^2 / 2
            "stderr": (covering ** 2 + covering ** 4 / 4).sqrt(),
            "stderr_spread": (spread_of_estimate ** 2 + spread_of_estimate ** 4 / 4).sqrt(),
            "stderr_delta": delta,
            "ess": ess,
            "ess_fraction": ess / count,
            "max_weight": 1 / (count * mean),
        }
        if self.log_moments:
            log_stderr = (self.log_squares / (count - 1)).sqrt() / count.sqrt() \
                if self.num_samples > 1 else nan
            result.update(log_weight_mean=self.log_mean, log_weight_stderr=log_stderr)
        result = {key: value.cpu() for key, value in result.items()}
        result["khat"] = khat
        return result


def _finite_or_zero(log_weight):
    """The scale of the weights: the largest log weight, or 0 where it is not finite (all
    weights zero, or a NaN or +inf weight that :meth:`WeightSummary.result` refuses)."""
    return torch.nan_to_num(log_weight, nan=0.0, posinf=0.0, neginf=0.0)


def _merge(count_a, mean_a, squares_a, count_b, mean_b, squares_b):
    """Mean and sum of squared deviations of two groups merged (Chan, Golub & LeVeque 1979)."""
    total = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / total)
    squares = squares_a + squares_b + delta ** 2 * count_a * count_b / total
    # A group of -inf weights has NaN moments: its mean stays -inf (log w) or 0 (w).
    return torch.nan_to_num(mean, nan=0.0), torch.nan_to_num(squares, nan=0.0)


def summarize_weights(log_weights):
    """All per-data-point diagnostics of importance weights, as a dict of (N,) float64 tensors:
    ``estimate`` (log p-hat), ``stderr`` (:func:`covering_stderr`), ``stderr_spread``
    (:func:`spread_stderr`), ``ess``, ``ess_fraction`` (ESS / K), ``khat`` and ``max_weight``;
    the same numbers a :class:`WeightSummary` gives for the weights in chunks (which also gives
    ``stderr_delta``)."""
    result = _whole_summary(log_weights)
    del result["stderr_delta"]
    return result


def fraction_flagged(khat, threshold=KHAT_THRESHOLD):
    """The fraction of data points whose k-hat exceeds ``threshold`` (NaN k-hats not counted)."""
    khat = torch.as_tensor(khat)
    if khat.numel() == 0:
        return math.nan
    return (khat > threshold).double().mean().item()

"""Estimators of log p(x) per data point, as free functions of (model, guide, data).

Every estimator has the signature ``fn(model, guide, x, num_samples, **options)`` and returns an
:class:`Estimate` with one value and one standard error per data point; its options are its
keyword parameters, with their defaults. ``ESTIMATORS`` maps the command-line names to them
(``ESTIMATORS.register(name, fn)`` adds one of your own in Python; ``module:function`` names one
on the command line); :func:`estimate` looks a name up, refuses options the estimator does not
take, and times it.

========== =========================================================== ==========================
name       log p-hat(x_n)                                              assumes / costs
========== =========================================================== ==========================
elbo       mean_k log w_kn, w = p(x, z) / q(z | x), z ~ q               a lower bound; K passes
importance log mean_k w_kn, z ~ q (IWAE bound, Burda et al. 2015)      q covers the posterior
prior      log mean_k p(x | z_kn), z ~ p(z)                             hopeless in many dims
mixture    z ~ a q + (1 - a) p, w = p(x, z) / (a q + (1 - a) p)        weights <= p(x|z)/(1-a)
ais        annealed importance sampling, prior -> posterior (Neal 2001) T x L gradient passes
exact      log N(x | b, W W^T + sigma^2 I)                              linear-Gaussian only
quadrature grid integration of p(x | z) p(z)                            z_dim <= 2
========== =========================================================== ==========================

(Over 300 lines: seven short estimator functions, their registry with what each declares, and
the one ``estimate`` that runs, times and shares any of them; the maths lives elsewhere.)
"""

import inspect
import math
import time
from dataclasses import dataclass, field

import pyro
import torch

from evaluation import ais as annealing
from evaluation.diagnostics import KHAT_THRESHOLD, WeightSummary, fraction_flagged
from evaluation.quadrature import points_per_chunk as quadrature_points_per_chunk
from evaluation.quadrature import quadrature_log_marginal
from inference.log_weights import (check_num_samples, chunk_seeds, default_max_batch_elements,
                                   log_weight_chunks, points_per_chunk)
from models.base.config import ConfigError, did_you_mean
from models.base.registry import Registry
from models.vae import check_batch


@dataclass
class Estimate:
    """Per-data-point estimates of log p(x) from one estimator; tensors of shape (N,), float64.

    ``stderr`` is the Monte Carlo standard error of each estimate (for ``quadrature``, the last
    change under grid refinement; for ``exact``, zero). For a log-mean-exp of weights it is
    :func:`evaluation.diagnostics.covering_stderr`, which counts the tail of the weights that
    the delta method misses, so that about 95% of the points lie within two of it of log p(x);
    ``stderr_spread`` is the standard deviation of each estimate over repeated draws
    (:func:`evaluation.diagnostics.spread_stderr`), what a mean over points adds up;
    ``stderr_delta`` keeps the delta method's (where an estimator has no other, both are the
    same as ``stderr``). ``ess``, ``khat`` and ``max_weight`` describe the importance weights
    (NaN where an estimator has none). ``khat_applies``: the estimate is a log-mean-exp of
    weights, which Pareto k-hat judges; where it applies and every k-hat is NaN (fewer than
    ``MIN_KHAT_SAMPLES`` weights, as AIS with its default 16 chains), the summary says "not
    checked", never that no point is flagged.
    """

    estimator: str
    estimate: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    max_weight: torch.Tensor
    num_samples: int
    seconds: float = math.nan
    info: dict = field(default_factory=dict)
    stderr_delta: torch.Tensor = None
    khat_applies: bool = False
    stderr_spread: torch.Tensor = None

    def __post_init__(self):
        if self.stderr_delta is None:
            self.stderr_delta = self.stderr
        if self.stderr_spread is None:
            self.stderr_spread = self.stderr

    def khat_checked(self):
        """True where k-hat judged the points, False where it applies but could not (too few
        weights), None where it does not apply (no weights, or a plain mean such as the ELBO)."""
        if torch.isfinite(self.khat).any():
            return True
        return False if self.khat_applies and self.estimate.numel() else None

    def summary(self):
        """Means over the data points. ``log_px_stderr`` is the Monte Carlo error of
        ``log_px_mean``, sqrt(sum_n se_n^2) / N of the per-point spreads ``stderr_spread``;
        ``log_px_stderr_delta`` the same from the delta method's; ``log_px_data_stderr`` is the
        spread of the per-point estimates over the data, sd / sqrt(N), the error of the mean as
        an estimate of the expectation over the data distribution. ``khat_checked`` is
        :meth:`khat_checked`; where it is not True, ``khat_frac_above_0_7`` is NaN and
        ``num_flagged`` None: nothing was flagged because nothing was checked."""
        num_data = self.estimate.numel()
        data_stderr = self.estimate.std().item() / math.sqrt(num_data) if num_data > 1 \
            else math.nan
        checked = self.khat_checked()
        return {
            "estimator": self.estimator,
            "num_samples": self.num_samples,
            "num_data": num_data,
            "log_px_mean": self.estimate.mean().item(),
            "log_px_stderr": _stderr_of_mean(self.stderr_spread, num_data),
            "log_px_stderr_delta": _stderr_of_mean(self.stderr_delta, num_data),
            "log_px_data_stderr": data_stderr,
            "ess_mean": _nanmean(self.ess),
            "ess_fraction_mean": _nanmean(self.ess) / self.num_samples if self.num_samples
            else math.nan,
            "khat_mean": _nanmean(self.khat),
            "khat_checked": checked,
            "khat_frac_above_0_7": fraction_flagged(self.khat, KHAT_THRESHOLD) if checked
            else math.nan,
            "num_flagged": int((self.khat > KHAT_THRESHOLD).sum()) if checked else None,
            "max_weight_mean": _nanmean(self.max_weight),
            "seconds": self.seconds,
            **{key: _nanmean(value) if torch.is_tensor(value) else value
               for key, value in self.info.items()},
        }


def _stderr_of_mean(stderr, num_data):
    """sqrt(sum_n se_n^2) / N over the finite standard errors."""
    finite = stderr[torch.isfinite(stderr)]
    return (finite ** 2).sum().sqrt().item() / num_data if finite.numel() else math.nan


def _nanmean(values):
    values = values[torch.isfinite(values)]
    return values.mean().item() if values.numel() else math.nan


def _nan(num_data):
    return torch.full((num_data,), math.nan, dtype=torch.float64)


def _from_weights(name, log_weights, num_samples, info=None):
    summary = WeightSummary(log_weights.shape[1], log_weights.shape[0], log_weights.device,
                            log_moments=False)
    summary.update(slice(None), log_weights)
    return _from_summary(name, summary.result(), num_samples, info)


def _from_summary(name, diagnostics, num_samples, info=None):
    return Estimate(name, diagnostics["estimate"], diagnostics["stderr"], diagnostics["ess"],
                    diagnostics["khat"], diagnostics["max_weight"], num_samples,
                    info=info or {}, stderr_delta=diagnostics["stderr_delta"],
                    stderr_spread=diagnostics["stderr_spread"], khat_applies=True)


def _streamed(model, guide, x, num_samples, progress=False, log_moments=False, **options):
    """The diagnostics of K weights per point, reduced chunk by chunk as they are computed, so
    that no K x N array is ever held (see :class:`evaluation.diagnostics.WeightSummary`)."""
    summary = WeightSummary(x.shape[0], num_samples, x.device, log_moments=log_moments)
    for data, _, log_weights in log_weight_chunks(model, guide, x, num_samples,
                                                  progress=progress, **options):
        summary.update(data, log_weights)
    return summary.result()


def elbo(model, guide, x, num_samples, *, max_batch_elements=None, progress=False):
    """The ELBO, E_q[log p(x, z) - log q(z | x)], averaged over K draws: a lower bound."""
    diagnostics = _streamed(model, guide, x, num_samples, progress, log_moments=True,
                            max_batch_elements=max_batch_elements)
    result = _from_summary("elbo", diagnostics, num_samples)
    # k-hat judges a log-mean-exp of weights; the ELBO is a plain mean of log weights, whose
    # standard error is trustworthy, so it is not flagged.
    result.estimate = diagnostics["log_weight_mean"]
    result.stderr = result.stderr_delta = result.stderr_spread = diagnostics["log_weight_stderr"]
    result.khat = _nan(x.shape[0])
    result.khat_applies = False
    return result


def importance(model, guide, x, num_samples, *, max_batch_elements=None, progress=False):
    """Importance sampling with the guide as proposal: the IWAE bound of Burda et al. (2016)."""
    return _from_summary("importance", _streamed(
        model, guide, x, num_samples, progress, max_batch_elements=max_batch_elements),
        num_samples)


def prior(model, guide, x, num_samples, *, max_batch_elements=None, progress=False):
    """The naive estimator: z ~ p(z), log p-hat = log mean_k p(x | z_k). Unbiased in p(x) but its
    variance grows exponentially with the latent dimension."""
    return _from_summary("prior", _streamed(
        model, guide, x, num_samples, progress, proposal="prior",
        max_batch_elements=max_batch_elements), num_samples)


def mixture(model, guide, x, num_samples, *, mixture_weight=0.5, max_batch_elements=None,
            progress=False):
    """Defensive importance sampling (Hesterberg 1995) with proposal a q(z | x) + (1 - a) p(z)."""
    return _from_summary("mixture", _streamed(
        model, guide, x, num_samples, progress, proposal="mixture",
        mixture_weight=mixture_weight, max_batch_elements=max_batch_elements), num_samples,
        info={"mixture_weight": mixture_weight})


#: what the standard error of ``ais`` leaves out, in its summary
AIS_STDERR_EXCLUDES = ("annealing bias: the s.e. is over the chains only; the BDMC gap "
                       "(--bdmc) bounds the bias")


def ais(model, guide, x, num_samples, *, ais_steps=annealing.STEPS,
        ais_leapfrog=annealing.LEAPFROG, ais_step_size=annealing.STEP_SIZE,
        ais_target_accept=annealing.TARGET_ACCEPT, ais_schedule=annealing.SCHEDULE,
        ais_start="prior", max_batch_elements=None, progress=False):
    """Annealed importance sampling with ``num_samples`` chains per data point
    (see :mod:`evaluation.ais`).

    Its ``stderr`` is the Monte Carlo error over the chains alone: it says nothing of the
    annealing bias of too few steps, which makes AIS a stochastic lower bound whatever the
    number of chains (the BDMC gap, ``evaluate.py --bdmc``, bounds that bias on data simulated
    from the model); the summary says so in ``stderr_excludes``. With fewer chains than
    ``MIN_KHAT_SAMPLES`` (the default 16) the chains' weights get no k-hat, and the summary
    says "not checked" (``khat_checked`` False) rather than that no point is flagged."""
    log_weights, info = annealing.ais_log_weights(
        model, guide, x, num_samples, num_steps=ais_steps, num_leapfrog=ais_leapfrog,
        step_size=ais_step_size, target_accept=ais_target_accept, schedule=ais_schedule,
        start=ais_start, max_batch_elements=max_batch_elements)
    info = {"acceptance": info["acceptance"].cpu(), "step_size": info["step_size"].cpu(),
            "ais_steps": int(ais_steps), "ais_leapfrog": int(ais_leapfrog),
            "ais_start": ais_start, "stderr_excludes": AIS_STDERR_EXCLUDES}
    return _from_weights("ais", log_weights, num_samples, info=info)


def exact(model, guide, x, num_samples=None, progress=False):
    """The closed-form log p(x) of a linear-Gaussian model (probabilistic PCA)."""
    from models.linear_gaussian import log_marginal

    with torch.no_grad():
        values = log_marginal(model, x).cpu()
    num_data = values.numel()
    return Estimate("exact", values, torch.zeros(num_data, dtype=torch.float64), _nan(num_data),
                    _nan(num_data), _nan(num_data), 0)


def quadrature(model, guide, x, num_samples=None, *, quadrature_tolerance=1e-4,
               max_batch_elements=None, progress=False):
    """Adaptive grid integration for latent dimension <= 2 (see :mod:`evaluation.quadrature`)."""
    values, error, points = quadrature_log_marginal(
        model, x, tolerance=quadrature_tolerance, max_batch_elements=max_batch_elements)
    num_data = values.numel()
    return Estimate("quadrature", values.cpu(), error.cpu(), _nan(num_data), _nan(num_data),
                    _nan(num_data), 0, info={"grid_points_per_dim": points.double().cpu()})


def _by_samples(model, x, num_samples, max_batch_elements):
    return points_per_chunk(num_samples, max_batch_elements)


def _by_point(model, x, num_samples, max_batch_elements):
    return 1


def _by_quadrature_grid(model, x, num_samples, max_batch_elements):
    return quadrature_points_per_chunk(model, x, max_batch_elements)


@dataclass(frozen=True)
class OwnSamples:
    """An estimator whose K is a setting of its own rather than ``--num-samples``: AIS runs
    ``--ais-chains`` chains per data point. Scripts add the flag ``--<option>`` (for example
    ``--ais-chains``), score the estimator once at that K rather than on a grid of K, and
    label it "K <unit>"."""

    option: str
    default: int
    unit: str
    help: str


class EstimatorRegistry(Registry):
    """The estimators by name. Members are functions ``fn(model, guide, x, num_samples,
    **options) -> Estimate``; ``deterministic`` ones ignore K.

    Besides the registered names, ``module:function`` names a user's own estimator, imported
    from ``module`` (on the Python path or in the working directory) when the name is looked
    up: by a script, only for a name given on its command line, never one read from a file.

    ``chunking[name](model, x, num_samples, max_batch_elements)`` is the number of data points
    of the estimator's chunks (which start at the first point): several processes then score
    whole chunks each and get the numbers of one process. An estimator without it runs in the
    first process only."""

    custom_form = "module:function"

    def __init__(self, entries, deterministic=(), chunking=None, own_samples=None,
                 option_help=None, option_choices=None, kinds=None):
        super().__init__("estimator", entries, allow_custom=True,
                         context=("model", "guide", "x", "num_samples", "progress"))
        self.deterministic = set(deterministic)
        #: {name: kind}, what the verdicts judge each estimator as (:mod:`evaluation.verdicts`)
        self.kinds = dict(kinds or {})
        self.chunking = dict(chunking or {})
        self.own_samples = dict(own_samples or {})
        #: {option: what it means} and {option: the values it may take}, for the scripts' flags
        self.option_help = dict(option_help or {})
        self.option_choices = dict(option_choices or {})

    def get(self, name):
        member = super().get(name)
        if inspect.isclass(member) or not callable(member):
            raise ConfigError(f"the estimator {name!r} must be a function fn(model, guide, x, "
                              f"num_samples, **options) that returns an Estimate; got {member!r}")
        return member

    def register(self, name, function, deterministic=False, chunking=None, own_samples=None,
                 option_help=None, option_choices=None, kind=None):
        """Add an estimator of your own under ``name``; ``chunking`` as in the class doc;
        ``own_samples`` an :class:`OwnSamples` where its K is a setting of its own;
        ``option_help`` and ``option_choices`` what its options mean and may be; ``kind`` what
        the verdicts judge it as (:data:`KINDS`; default ``sampling``, a stochastic lower
        bound checked by its k-hat and against the other estimates)."""
        if kind is not None:
            if kind not in KINDS:
                raise ConfigError(f"unknown kind {kind!r} of the estimator {name!r}; valid: "
                                  f"{', '.join(KINDS)}")
            self.kinds[name] = kind
        self.option_help.update(option_help or {})
        self.option_choices.update(option_choices or {})
        self._entries[name] = function
        if deterministic:
            self.deterministic.add(name)
        if chunking is not None:
            self.chunking[name] = chunking
        if own_samples is not None:
            self.own_samples[name] = own_samples

    def kind_of(self, name):
        """The kind of estimator ``name``: the one it declared, else ``sampling``."""
        return self.kinds.get(name, "sampling")

    def own_samples_of(self, name):
        """The :class:`OwnSamples` of estimator ``name``, or None where K is ``--num-samples``."""
        return self.own_samples.get(name)

    def uses_samples(self, name):
        return name not in self.deterministic


#: the kinds of estimator the verdicts know (:mod:`evaluation.verdicts`): ``guide``, importance
#: sampling from q(z | x); ``defensive``, a proposal mixing q with something wider; ``prior``,
#: the prior as proposal; ``annealed``, AIS; ``sampling``, another stochastic lower bound of
#: log p(x); ``bound``, a deterministic bound such as the ELBO, never trusted as log p(x);
#: ``reference``, an exact or numerically exact value
KINDS = ("guide", "defensive", "prior", "annealed", "sampling", "bound", "reference")

#: what each option of the estimators means, for the flags the scripts make of them
OPTION_HELP = {
    "max_batch_elements": "at most this many (sample, data point) pairs at once (default: "
                          "about 256 MB of work per chunk)",
    "mixture_weight": "a in the mixture proposal a q(z|x) + (1 - a) p(z)",
    "ais_steps": "intermediate distributions T of AIS",
    "ais_leapfrog": "leapfrog steps per HMC transition",
    "ais_step_size": "initial HMC step size (adapted per data point)",
    "ais_target_accept": "acceptance rate the step size adapts towards",
    "ais_schedule": "spacing of the annealing temperatures",
    "ais_start": "start the chains from the prior or from the guide q(z|x)",
    "quadrature_tolerance": "refine the grid until log p-hat changes by less (nats)",
}
#: the values an option may take, where they are few
OPTION_CHOICES = {"ais_schedule": sorted(annealing.SCHEDULES), "ais_start": ("prior", "guide")}

ESTIMATORS = EstimatorRegistry({
    "elbo": elbo,
    "importance": importance,
    "prior": prior,
    "mixture": mixture,
    "ais": ais,
    "exact": exact,
    "quadrature": quadrature,
}, deterministic=("exact", "quadrature"), chunking={
    "elbo": _by_samples, "importance": _by_samples, "prior": _by_samples,
    "mixture": _by_samples, "ais": _by_samples, "exact": _by_point,
    "quadrature": _by_quadrature_grid}, own_samples={
    "ais": OwnSamples("ais_chains", 16, "chains", "AIS chains per data point: the K of ais")},
    option_help=OPTION_HELP, option_choices=OPTION_CHOICES, kinds={
    "elbo": "bound", "importance": "guide", "mixture": "defensive", "prior": "prior",
    "ais": "annealed", "exact": "reference", "quadrature": "reference"})


def validate_data(model, x):
    """Refuse data the model cannot score, with its own checks (shape, finite values, the
    support of its likelihood), once for the whole estimate."""
    if not torch.is_tensor(x) or x.dim() != 2:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected data as a tensor of shape (num_data, x_dim), got {shape}")
    if hasattr(model, "x_dim"):
        check_batch(x, model.x_dim)
    if hasattr(model, "likelihood") and hasattr(model.likelihood, "check_data"):
        model.likelihood.check_data(x)


def options_for(name, options):
    """The subset of ``options`` that the estimator called ``name`` takes."""
    accepted = ESTIMATORS.options(name)
    return {key: value for key, value in options.items() if key in accepted}


def estimate(name, model, guide, x, num_samples, progress=False, group=None, **options):
    """Run the estimator called ``name`` with ``options`` and time it. An option it does not
    take is an error (pick the relevant ones with :func:`options_for`). ``progress`` shows a
    progress bar over the chunks of a long estimate.

    The random numbers come from one seed drawn from torch's generator (the only draw the
    estimate makes from it), from which each chunk of data points seeds its own (see
    :func:`inference.log_weights.chunk_seeds`). With a ``group`` of processes
    (:mod:`inference.distributed`), each process scores whole chunks of ``x`` and every process
    receives the whole result: the same per-point numbers as one process.
    """
    function = ESTIMATORS.get(name)
    accepted = ESTIMATORS.options(name)
    for key in options:
        if key not in accepted:
            raise ConfigError(f"the {name} estimator has no option {key!r}"
                              f"{did_you_mean(key, accepted)}; its options: "
                              f"{', '.join(sorted(accepted)) or 'none'}")
    if ESTIMATORS.uses_samples(name):
        num_samples = check_num_samples(num_samples)
    if "progress" in inspect.signature(function).parameters:
        options = dict(options, progress=progress)
    validate_data(model, x)
    if "max_batch_elements" in accepted and options.get("max_batch_elements") is None:
        options["max_batch_elements"] = default_max_batch_elements(x[0].numel(), x.device)
    seed = int(torch.randint(0, 2 ** 62, ()).item())
    part = slice(0, x.shape[0])
    if group is not None:
        # One chunk budget and one seed for all (a GPU's budget depends on its free memory).
        seed, budget = group.broadcast((seed, options.get("max_batch_elements")))
        if budget is not None:
            options["max_batch_elements"] = budget
        part = _share(group, name, model, x, num_samples, budget)
    start = time.perf_counter()
    result = None
    if part.stop > part.start:
        # The data were checked once, here; Pyro's per-sample checks would each wait for the
        # device.
        with torch.no_grad(), pyro.validation_enabled(False), \
                chunk_seeds(seed, part.start, x.device):
            result = function(model, guide, x[part], num_samples, **options)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    if group is not None:
        result = _gathered(group, result)
    result.seconds = time.perf_counter() - start
    return result


def _share(group, name, model, x, num_samples, budget):
    """This process's part of the data points: whole chunks of the estimator's grid, or all of
    them in the first process for an estimator whose chunks are unknown."""
    chunking = ESTIMATORS.chunking.get(name)
    if chunking is None:
        return slice(0, x.shape[0]) if group.is_main else slice(0, 0)
    step = chunking(model, x, num_samples, budget if budget is not None else x.shape[0])
    return group.share(x.shape[0], step)


#: the per-data-point tensors of an Estimate
_PER_POINT = ("estimate", "stderr", "ess", "khat", "max_weight", "stderr_delta", "stderr_spread")


def _gathered(group, result):
    """The whole Estimate from the parts of the processes, in data order."""
    parts = [part for part in group.gather(_on_cpu(result)) if part is not None]
    first = parts[0]
    joined = {name: torch.cat([getattr(part, name) for part in parts]) for name in _PER_POINT}
    info = {}
    for key, value in first.info.items():
        if torch.is_tensor(value) and value.dim() == 1:
            info[key] = torch.cat([part.info[key] for part in parts])
        else:
            info[key] = value
    return Estimate(first.estimator, num_samples=first.num_samples, info=info,
                    khat_applies=first.khat_applies, **joined)


def _on_cpu(result):
    if result is None:
        return None
    moved = {name: getattr(result, name).cpu() for name in _PER_POINT}
    info = {key: value.cpu() if torch.is_tensor(value) else value
            for key, value in result.info.items()}
    return Estimate(result.estimator, num_samples=result.num_samples, info=info,
                    khat_applies=result.khat_applies, **moved)


def convergence_curves(model, guide, x, num_samples, estimators, options=None, max_chains=None,
                       progress=None):
    """Estimates of log p(x) against K: {estimator: [(K, mean estimate, its Monte Carlo s.e.)]}
    over the data points x, each estimator given the ``options`` it takes. ``max_chains`` caps K
    for ``ais``, where K counts chains."""
    options = options or {}
    curves = {}
    for name in estimators:
        points = []
        for k in num_samples:
            if name == "ais" and max_chains is not None and k > max_chains:
                continue
            result = estimate(name, model, guide, x, int(k), **options_for(name, options))
            summary = result.summary()
            points.append((int(k), summary["log_px_mean"], summary["log_px_stderr"]))
            if progress is not None:
                progress()
        curves[name] = points
    return curves

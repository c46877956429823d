"""Training objectives for SVI, chosen by ``--objective``, and KL warm-up.

========= ================================================================================
name      per data point, with K = ``--num-particles`` draws z_k ~ q(z | x)
========= ================================================================================
elbo      mean_k [log p(x, z_k) - log q(z_k | x)]    (Trace_ELBO; Kingma & Welling 2014)
meanfield E_q[log p(x | z)] - KL(q(z | x) || p(z)), the KL analytic where torch knows it
          (TraceMeanField_ELBO), else estimated as in ``elbo``
iwae      log (1/K) sum_k p(x, z_k) / q(z_k | x)     (Burda et al. 2015)
========= ================================================================================

The IWAE loss is written here from the per-data-point log weights of
:func:`inference.log_weights.log_importance_weights` rather than taken from Pyro's
``RenyiELBO(alpha=0)``. That class does keep the data plate when every site sits in it, but its
log weights already carry the subsampling scale N / B of the plate, so on a minibatch it
maximizes (1/K-average of w^(N/B)) instead of (N / B) log mean_k w: a different objective
whenever B < N. Here the log-mean-exp is taken per data point first and scaled afterwards.

KL warm-up (Bowman et al. 2016; Sønderby et al. 2016) multiplies log p(z) - log q(z | x) by a
weight that grows linearly from ~0 to 1 over the first ``--kl-warmup-epochs`` epochs, by scaling
every latent (not observed) site of the model and the guide.

Without the JIT, the ``elbo`` and ``meanfield`` losses are computed here as Trace_ELBO and
TraceMeanField_ELBO compute them (same traces, same sums, same numbers; tested against them),
but from Pyro's public API only: ``poutine.trace``, ``poutine.replay``, ``pyro.plate`` and the
checks of ``pyro.util``. Pyro's classes read the loss back to the host at every step, and their
parts that return tensors (``_get_traces``, ``_differentiable_loss_particle``,
``_compute_log_r``) are private: they may change in any release that ``pyro-ppl>=1.9`` accepts.

(Over 300 lines: the three objectives share their traces, their registry and KL warm-up; the
Trace_ELBO estimator on Pyro's public API is half of the module.)
"""

import math
import numbers
import warnings

import pyro
import torch
from pyro import poutine
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape
from torch.distributions import kl_divergence

from inference.log_weights import log_importance_weights, plate_nesting
from models.base.config import ConfigError
from models.base.registry import Registry


class ScaleLatents(Messenger):
    """Multiply the log density of every latent sample site by ``weight``; observed sites keep
    their scale. The ELBO becomes E_q[log p(x | z) + weight * (log p(z) - log q(z | x))]."""

    def __init__(self, weight=1.0):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and self.weight != 1.0:
            msg["scale"] = self.weight * msg["scale"]


class IWAELoss:
    """The negative importance-weighted bound, -(N / B) sum_n log (1/K) sum_k w_kn, for a
    minibatch of B of N points; a loss callable for ``pyro.infer.SVI``."""

    def __init__(self, num_particles):
        self.num_particles = _check_particles(num_particles)
        self._nesting = {}

    def __call__(self, model, guide, x, num_data=None, batch_size=None):
        # The plates of a model do not change from step to step: find their nesting once.
        key = (id(model), id(guide))
        if key not in self._nesting:
            self._nesting[key] = plate_nesting(model, guide, x)
        log_weights = log_importance_weights(model, guide, x, self.num_particles,
                                             max_batch_elements=self.num_particles * x.shape[0],
                                             nesting=self._nesting[key])
        bound = torch.logsumexp(log_weights, dim=0) - math.log(self.num_particles)
        return -bound.sum() * ((num_data or x.shape[0]) / x.shape[0])


def _check_particles(num_particles):
    if isinstance(num_particles, bool) or int(num_particles) != num_particles or \
            num_particles < 1:
        raise ConfigError(f"--num-particles must be a whole number of at least 1, got "
                          f"{num_particles}")
    return int(num_particles)


class Objective:
    """Base class of training objectives: the keyword parameters of ``__init__`` are the
    options (``--objective-option``; ``--num-particles`` sets ``num_particles``), and
    :meth:`loss_function` gives the loss that a training step differentiates."""

    context_parameters = ()
    #: whether a JIT-compiled form of the loss exists
    jit_supported = True

    def __init__(self, num_particles=1):
        self.num_particles = _check_particles(num_particles)

    def loss_function(self, jit=False):
        """A function ``(model, guide, x, **kwargs) -> loss``: a 0-dim tensor whose value is the
        loss (minus the objective, summed over the minibatch and scaled to the data set) and
        whose gradient is that of the objective. Nothing is read back to the host."""
        raise NotImplementedError

    def _particles(self):
        return dict(num_particles=self.num_particles,
                    vectorize_particles=self.num_particles > 1, max_plate_nesting=1)


#: the name Pyro's ELBO classes give the plate of vectorized particles
PARTICLE_PLATE = "num_particles_vectorized"


def importance_traces(model, guide, args, kwargs, num_particles=1, max_plate_nesting=1):
    """The traces Trace_ELBO scores: the guide's, z ~ q(z | x), with the score parts of each
    site, and the model's replayed at that z, with log p of each site. K = ``num_particles``
    particles are drawn at once in a plate to the left of the ``max_plate_nesting`` plates of
    the model and the guide, as Pyro's ``vectorize_particles`` does (the same plate, the same
    draws). Pyro's checks run where its validation is on."""
    if num_particles > 1:
        max_plate_nesting += 1
        model = pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting)(model)
        guide = pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting)(guide)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    replayed = poutine.replay(model, trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    if is_validation_enabled():
        for trace in (model_trace, guide_trace):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    check_site_shape(site, max_plate_nesting)
        check_if_enumerated(guide_trace)
    return model_trace, guide_trace


def _is_zero(term):
    """Whether a score part is the number 0 (what Pyro gives where a term is absent)."""
    return isinstance(term, numbers.Number) and term == 0


def _plates(site):
    return frozenset(frame for frame in site["cond_indep_stack"] if frame.vectorized)


def _log_r(model_trace, guide_trace):
    """{plates: sum of log p - log q over the model's sites in those plates}, without gradient:
    the weight of the score-function term of a site that is not reparameterized."""
    log_r = {}
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample":
            term = site["log_prob"]
            if not site["is_observed"]:
                term = term - guide_trace.nodes[name]["log_prob"]
            plates = _plates(site)
            log_r[plates] = log_r[plates] + term.detach() if plates in log_r else term.detach()
    return log_r


def _downstream(log_r, site):
    """The part of ``log_r`` a site's score function multiplies: summed over every plate that
    is not one of the site's (the Rao-Blackwellization of Trace_ELBO by the plates)."""
    total = None
    for plates, value in log_r.items():
        for frame in plates:
            if frame not in site["cond_indep_stack"] and value.shape[frame.dim] != 1:
                value = value.sum(frame.dim, True)
        while value.shape and value.shape[0] == 1:
            value = value.squeeze(0)
        total = value if total is None else total + value
    return 0.0 if total is None else total


class _TensorTraceELBO:
    """Trace_ELBO's estimator, returned as tensors: the loss, minus mean_k [log p(x, z_k) -
    log q(z_k | x)], and the surrogate loss whose gradient is its gradient (score-function
    terms included), without Trace_ELBO's ``.item()`` calls (each of which would wait for the
    device at every step). The sum is the same as JitTrace_ELBO traces."""

    def __init__(self, num_particles=1, max_plate_nesting=1):
        self.num_particles, self.max_plate_nesting = num_particles, max_plate_nesting

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs):
        model_trace, guide_trace = importance_traces(model, guide, args, kwargs,
                                                     self.num_particles, self.max_plate_nesting)
        elbo_particle, surrogate_elbo_particle, log_r = 0.0, 0.0, None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo_particle = elbo_particle + site["log_prob_sum"]
                surrogate_elbo_particle = surrogate_elbo_particle + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            _, score_function_term, entropy_term = site["score_parts"]
            elbo_particle = elbo_particle - site["log_prob_sum"]
            if not _is_zero(entropy_term):
                surrogate_elbo_particle = surrogate_elbo_particle - entropy_term.sum()
            if not _is_zero(score_function_term):
                if log_r is None:
                    log_r = _log_r(model_trace, guide_trace)
                surrogate_elbo_particle = (surrogate_elbo_particle
                                           + (_downstream(log_r, site)
                                              * score_function_term).sum())
        # One vectorized trace holds the K particles: its sums are over all of them.
        return (0.0 - elbo_particle / self.num_particles,
                0.0 - surrogate_elbo_particle / self.num_particles)


def _check_reparameterized(site):
    _, score_function_term, entropy_term = site["score_parts"]
    if not (site["fn"].has_rsample and not _is_zero(entropy_term)
            and _is_zero(score_function_term)):
        raise NotImplementedError(
            f"the meanfield objective needs a reparameterized guide, and site {site['name']!r} "
            "is not; use --objective elbo")


def _scaled(value, site):
    """``value`` scaled and masked as Pyro scales and masks the log density of ``site``."""
    scale, mask = site["scale"], site["mask"]
    if not (isinstance(scale, numbers.Number) and scale == 1.0):
        value = value * scale
    if mask is None or mask is True:
        return value
    if mask is False:
        return value * 0.0
    return torch.where(mask, value, value.new_zeros(()))


def meanfield_loss(model_trace, guide_trace):
    """Minus TraceMeanField_ELBO's estimate: -(sum of log p(x | z) - KL(q(z | x) || p(z))),
    the KL analytic where torch knows it for a latent site, else log p(z) - log q(z | x) at the
    drawn z (with q's entropy term); auxiliary sites of the guide add their entropy term."""
    if is_validation_enabled():
        shared = [[name for name, site in trace.nodes.items()
                   if site["type"] == "sample" and name in other.nodes]
                  for trace, other in ((model_trace, guide_trace), (guide_trace, model_trace))]
        if shared[0] != shared[1]:
            warnings.warn("Failed to verify mean field restriction on the guide: the model "
                          f"samples {shared[0]}, the guide {shared[1]}; to remove this warning, "
                          "sample the sites in the same order")
    elbo_particle = 0
    for name, model_site in model_trace.nodes.items():
        if model_site["type"] != "sample":
            continue
        if model_site["is_observed"]:
            elbo_particle = elbo_particle + model_site["log_prob_sum"]
            continue
        guide_site = guide_trace.nodes[name]
        if is_validation_enabled():
            _check_reparameterized(guide_site)
        try:
            kl_qp = _scaled(kl_divergence(guide_site["fn"], model_site["fn"]), guide_site)
        except NotImplementedError:
            # No analytic KL: the sampled log p(z) - log q(z | x).
            entropy_term = guide_site["score_parts"].entropy_term
            elbo_particle = elbo_particle + model_site["log_prob_sum"] - entropy_term.sum()
            continue
        if torch.is_tensor(kl_qp):
            kl_qp_sum = kl_qp.sum()
        else:
            kl_qp_sum = kl_qp * torch.Size(guide_site["fn"].batch_shape).numel()
        elbo_particle = elbo_particle - kl_qp_sum
    for name, guide_site in guide_trace.nodes.items():
        if guide_site["type"] == "sample" and name not in model_trace.nodes:
            if is_validation_enabled():
                _check_reparameterized(guide_site)
            elbo_particle = elbo_particle - guide_site["score_parts"].entropy_term.sum()
    return -elbo_particle


#: the traced graph is not re-run to compare it with a second trace: the loss is random
_JIT_OPTIONS = {"jit_options": {"check_trace": False}}


def _combined(loss_and_surrogate_loss):
    """value: the loss; gradient: the surrogate loss's (the trick of Trace_ELBO)."""

    def loss_function(model, guide, *args, **kwargs):
        loss, surrogate_loss = loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())

    return loss_function


class ELBOObjective(Objective):
    """The ELBO of Trace_ELBO (traced by JitTrace_ELBO with ``jit``):
    mean_k [log p(x, z_k) - log q(z_k | x)]."""

    def loss_function(self, jit=False):
        if jit:
            return _combined(JitTrace_ELBO(**_JIT_OPTIONS,
                                           **self._particles()).loss_and_surrogate_loss)
        return _combined(_TensorTraceELBO(self.num_particles).loss_and_surrogate_loss)


class MeanFieldObjective(Objective):
    """TraceMeanField_ELBO: the KL term analytic where torch knows it (traced by
    JitTraceMeanField_ELBO with ``jit``; else :func:`meanfield_loss`)."""

    def loss_function(self, jit=False):
        if jit:
            return JitTraceMeanField_ELBO(**_JIT_OPTIONS,
                                          **self._particles()).differentiable_loss

        def loss_function(model, guide, *args, **kwargs):
            traces = importance_traces(model, guide, args, kwargs, self.num_particles)
            return meanfield_loss(*traces) / self.num_particles

        return loss_function


class IWAEObjective(Objective):
    """The importance-weighted bound of Burda et al. (2016) with K = ``num_particles``."""

    jit_supported = False

    def loss_function(self, jit=False):
        if jit:
            raise ConfigError("the iwae objective has no JIT-compiled form; drop --jit")
        return IWAELoss(self.num_particles)


OBJECTIVES = Registry("objective", {
    "elbo": ELBOObjective,
    "meanfield": MeanFieldObjective,
    "iwae": IWAEObjective,
}, base=Objective)


def make_objective(training):
    """The :class:`Objective` a :class:`models.base.config.TrainingConfig` names, and whether
    its loss is JIT-compiled: ``jit`` True asks for it (an error where it cannot be), False
    refuses it, and None (the default) takes it where the objective has it and no KL warm-up
    changes the loss from step to step."""
    spec = OBJECTIVES.resolve(training.objective)
    objective = OBJECTIVES.get(spec.name)(**spec.options)
    possible = objective.jit_supported and not training.kl_warmup_epochs
    if training.jit and not possible:
        raise ConfigError("--jit supports --objective elbo and meanfield without KL warm-up; "
                          "drop --jit")
    return objective, (possible if training.jit is None else bool(training.jit))


def kl_weight(warmup_epochs, epoch, step, num_batches):
    """The warm-up weight at the ``step``-th minibatch (1-based) of ``epoch`` (1-based) for a
    warm-up over ``warmup_epochs`` epochs (0: no warm-up)."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, ((epoch - 1) * num_batches + step) / (warmup_epochs * num_batches))


def warmed(fn, scaler):
    """``fn`` run under the latent scaling ``scaler`` (a :class:`ScaleLatents`)."""

    def scaled(*args, **kwargs):
        with scaler:
            return fn(*args, **kwargs)

    return scaled

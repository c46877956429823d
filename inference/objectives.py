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
"""

import math

import torch
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero
from pyro.poutine.messenger import Messenger

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


class _TensorTraceELBO(Trace_ELBO):
    """Pyro's Trace_ELBO estimator, returned as tensors: the loss and the surrogate loss that
    ``Trace_ELBO.differentiable_loss`` combines, without its ``.item()`` calls (each of which
    would wait for the device at every step). The sum is the same as JitTrace_ELBO traces."""

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs):
        loss, surrogate_loss = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
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
                if not is_identically_zero(entropy_term):
                    surrogate_elbo_particle = surrogate_elbo_particle - entropy_term.sum()
                if not is_identically_zero(score_function_term):
                    if log_r is None:
                        log_r = _compute_log_r(model_trace, guide_trace)
                    summed = log_r.sum_to(site["cond_indep_stack"])
                    surrogate_elbo_particle = (surrogate_elbo_particle
                                               + (summed * score_function_term).sum())
            loss = loss - elbo_particle / self.num_particles
            surrogate_loss = surrogate_loss - surrogate_elbo_particle / self.num_particles
        return loss, surrogate_loss


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
        return _combined(_TensorTraceELBO(**self._particles()).loss_and_surrogate_loss)


class MeanFieldObjective(Objective):
    """TraceMeanField_ELBO: the KL term analytic where torch knows it. (Without the JIT it reads
    one value back to the host per step, inside Pyro.)"""

    def loss_function(self, jit=False):
        if jit:
            return JitTraceMeanField_ELBO(**_JIT_OPTIONS,
                                          **self._particles()).differentiable_loss
        elbo = TraceMeanField_ELBO(**self._particles())

        def loss_function(model, guide, *args, **kwargs):
            total = 0.0
            for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
                total = total + elbo._differentiable_loss_particle(model_trace, guide_trace)[1]
            return total / self.num_particles

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

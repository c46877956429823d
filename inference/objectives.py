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
from pyro.poutine.messenger import Messenger

from inference.log_weights import log_importance_weights
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

    def __call__(self, model, guide, x, num_data=None, batch_size=None):
        log_weights = log_importance_weights(model, guide, x, self.num_particles,
                                             max_batch_elements=self.num_particles * x.shape[0])
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
    :meth:`loss` gives the loss callable that ``pyro.infer.SVI`` minimizes."""

    context_parameters = ()
    #: whether a JIT-compiled form of the loss exists
    jit_supported = True

    def __init__(self, num_particles=1):
        self.num_particles = _check_particles(num_particles)

    def loss(self, jit=False):
        raise NotImplementedError

    def _particles(self):
        return dict(num_particles=self.num_particles,
                    vectorize_particles=self.num_particles > 1, max_plate_nesting=1)


class ELBOObjective(Objective):
    """Trace_ELBO (JitTrace_ELBO with ``jit``): mean_k [log p(x, z_k) - log q(z_k | x)]."""

    def loss(self, jit=False):
        if jit:
            return JitTrace_ELBO(ignore_jit_warnings=True, **self._particles())
        return Trace_ELBO(**self._particles())


class MeanFieldObjective(Objective):
    """TraceMeanField_ELBO: the KL term analytic where torch knows it."""

    def loss(self, jit=False):
        if jit:
            return JitTraceMeanField_ELBO(ignore_jit_warnings=True, **self._particles())
        return TraceMeanField_ELBO(**self._particles())


class IWAEObjective(Objective):
    """The importance-weighted bound of Burda et al. (2015) with K = ``num_particles``."""

    jit_supported = False

    def loss(self, jit=False):
        return IWAELoss(self.num_particles)


OBJECTIVES = Registry("objective", {
    "elbo": ELBOObjective,
    "meanfield": MeanFieldObjective,
    "iwae": IWAEObjective,
}, base=Objective)


def make_loss(training):
    """The SVI loss a :class:`models.base.config.TrainingConfig` asks for (its ``objective``,
    ``jit`` and ``kl_warmup_epochs``)."""
    spec = OBJECTIVES.resolve(training.objective)
    objective = OBJECTIVES.get(spec.name)(**spec.options)
    if training.jit and (not objective.jit_supported or training.kl_warmup_epochs):
        raise ConfigError("--jit supports --objective elbo and meanfield without KL warm-up; "
                          "drop --jit")
    return objective.loss(jit=training.jit)


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

"""The loss a training step differentiates: the objective's estimate of minus its bound (the
ELBO of ``Trace_ELBO``, or the chosen objective) on a minibatch, scaled by N / B, computed by
the literal Pyro model and guide, or by a graph the JIT traced from them."""

import torch

from inference.log_weights import error_summary, strict_tracing
from inference.objectives import ScaleLatents, make_objective, warmed


def give_up(log, what, flag, task, error, insist):
    """Say that ``what`` could not ``task`` and go on without it, or, where its ``flag``
    insisted, stop with that."""
    detail = error_summary(error)
    if insist:
        raise ValueError(f"{flag} could not {task} ({detail}); run without {flag}") from error
    log(f"{what} could not {task} ({detail}); training without it")


class StepLoss:
    """``loss(x, num_data, kl_weight)``: minus the objective's bound on the minibatch ``x``,
    scaled by ``num_data`` / B, as a 0-dim tensor with its autograd graph.

    Where the objective allows it (``training.jit`` is not False) the loss of a whole minibatch
    size is traced once by the JIT and replayed (``JitTrace_ELBO``); the trace draws nothing
    from the run's random stream. A model that cannot be traced is run plainly from then on,
    with a message (an error when ``training.jit`` insists). During KL warm-up (``kl_weight`` <
    1) the plain loss runs, with log p(z) - log q(z | x) scaled by the weight."""

    def __init__(self, model, guide, training, log=print):
        self.model, self.guide, self.log = model, guide, log
        self.objective, self.jit = make_objective(training)
        self.insist_on_jit = training.jit is True
        self.scaler = ScaleLatents(1.0)
        self.plain_loss = self.objective.loss_function(jit=False)
        self.warmed_model = warmed(model, self.scaler)
        self.warmed_guide = warmed(guide, self.scaler)
        self.jit_loss = self.objective.loss_function(jit=True) if self.jit else None
        self._traced = set()

    def __call__(self, x, num_data, kl_weight=1.0):
        self.scaler.weight = kl_weight
        if self.jit_loss is None or kl_weight != 1.0:
            return self.plain_loss(self.warmed_model, self.warmed_guide, x, num_data=num_data)
        batch_size = x.shape[0]
        try:
            if batch_size not in self._traced:
                # Tracing runs the model and guide several times; it must not draw from the
                # run's random stream, or a resumed run (which traces anew) would not follow
                # the uninterrupted one.
                devices = [x.device] if x.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices), \
                        torch.jit.optimized_execution(False), strict_tracing():
                    self.compiled(x, num_data)
            # The traced graph's own optimization passes slow its backward pass on the CPU.
            with torch.jit.optimized_execution(False):
                loss = self.compiled(x, num_data)
        except Exception as error:
            if batch_size in self._traced:
                raise
            give_up(self.log, "the JIT", "--jit", "trace this model and guide", error,
                    self.insist_on_jit)
            self.jit_loss = None
            return self(x, num_data, kl_weight)
        self._traced.add(batch_size)
        return loss

    def compiled(self, x, num_data):
        """The loss by the JIT's graph of minibatches like ``x`` (traced at the first call)."""
        return self.jit_loss(self.model, self.guide, x, num_data=num_data,
                             batch_size=x.shape[0])

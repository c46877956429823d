"""The training step: one SVI step of the literal Pyro model and guide, composed of small parts
that each do one thing:

- :class:`inference.training.losses.StepLoss`: the objective's loss of a minibatch, plain or
  compiled by the JIT;
- :class:`inference.training.gradients.LossGradients` (one process) or
  :class:`inference.training.gradients.DistributedGradients` (several): its gradients;
- one ``torch.optim.Adam`` over every parameter of the model and the guide
  (:mod:`inference.training.optimizer`);
- on CUDA, :class:`inference.training.cuda_graphs.GraphedSteps`: the loss and its gradients
  replayed as one CUDA graph per minibatch size.
"""

import pyro
import torch

from inference.training.cuda_graphs import GraphedSteps
from inference.training.gradients import DistributedGradients, LossGradients
from inference.training.losses import StepLoss
from inference.training.optimizer import (adam, flush_subnormals, forget_stale_params,
                                          load_optimizer_state, optimizer_state, parameters,
                                          set_learning_rate)


class TrainingStep:
    """One SVI step of the literal Pyro model and guide: the objective's loss, autograd, and one
    ``torch.optim.Adam`` over every parameter of both. The call returns the loss as a 0-dim
    tensor on the device and reads nothing back to the host.

    :param training: the :class:`models.base.config.TrainingConfig`; its ``jit`` is honoured as
        :func:`inference.objectives.make_objective` explains, its ``cuda_graph`` as
        :class:`inference.training.cuda_graphs.GraphedSteps` does.
    :param log: where to say that the JIT or a CUDA graph was given up for this model.
    :param group: the :class:`inference.distributed.ProcessGroup` of a run of several
        processes, or None.
    """

    def __init__(self, model, guide, training, log=print, group=None):
        self.model, self.guide, self.log, self.group = model, guide, log, group
        # The JIT reads the parameters through Pyro's param store: no stale entries of another
        # model may shadow these ones.
        forget_stale_params()
        self.loss = StepLoss(model, guide, training, log)
        self.names, self.params = parameters(model, guide)
        self.optimizer = adam(self.params, training.learning_rate, training.adam_eps)
        self.gradients = LossGradients(self.loss) if group is None else \
            DistributedGradients(self.loss, group)
        self.use_graphs = training.cuda_graph is not False and group is None and self.loss.jit
        insist_on_graph = training.cuda_graph is True
        if insist_on_graph:
            device = self.params[0].device if self.params else torch.device("cpu")
            if device.type != "cuda" or not self.loss.jit or group is not None:
                raise ValueError("--cuda-graph needs a CUDA device (--device cuda), the JIT and "
                                 f"one process (here: {device.type}, "
                                 f"{'JIT' if self.loss.jit else 'no JIT'}, "
                                 f"{'one process' if group is None else 'several processes'})")
        # The warm-up steps of a graph are this step's eager ones (looked up at each call).
        self.graphed = GraphedSteps(lambda *args: self._eager(*args), self.loss,
                                    self.optimizer, self.params, log, insist_on_graph)

    def __call__(self, x, num_data, kl_weight=1.0, fraction=None):
        """One step on the minibatch ``x``; the loss is log p - log q scaled by
        ``num_data`` / B. In a group of processes ``x`` is this process's ``fraction`` of the
        global minibatch; the loss is weighted so that the averaged gradient is that of the
        whole minibatch."""
        self.loss.scaler.weight = kl_weight
        if self.use_graphs and x.is_cuda and kl_weight == 1.0 and self.loss.jit_loss is not None:
            loss = self.graphed(x, num_data, fraction)
            if loss is not None:
                return loss
        return self._eager(x, num_data, kl_weight, fraction)

    def _eager(self, x, num_data, kl_weight, fraction):
        self.optimizer.zero_grad(set_to_none=True)
        with pyro.validation_enabled(False):
            loss = self.gradients(x, num_data, kl_weight, fraction)
        self.optimizer.step()
        return loss.detach()

    # The parts a caller may look at or replace (tests, the benchmark's variants).

    @property
    def objective(self):
        return self.loss.objective

    @property
    def jit_loss(self):
        return self.loss.jit_loss

    @jit_loss.setter
    def jit_loss(self, function):
        self.loss.jit_loss = function

    @property
    def graphs(self):
        """The CUDA graph of each minibatch shape captured so far (None where capture failed)."""
        return self.graphed.graphs

    @property
    def parallel(self):
        """The ``DistributedDataParallel`` wrapper of the loss, or None in one process."""
        return getattr(self.gradients, "parallel", None)

    def set_learning_rate(self, learning_rate):
        set_learning_rate(self.optimizer, learning_rate)

    def flush_subnormals(self):
        """See :func:`inference.training.optimizer.flush_subnormals`."""
        flush_subnormals(self.optimizer)

    def state(self):
        """The optimizer's state, with the parameter names, for a checkpoint."""
        return optimizer_state(self.optimizer, self.names)

    def load_state(self, state, path=None):
        """Restore :meth:`state` (see :func:`inference.training.optimizer.load_optimizer_state`)."""
        load_optimizer_state(self.optimizer, self.names, self.params, state, path)

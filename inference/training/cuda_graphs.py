"""A training step replayed as CUDA graphs: the loss of the model and the guide and its
gradients, captured once per minibatch size, then replayed with one launch instead of the
hundreds of kernels that otherwise wait on the host's launching of them. Adam steps eagerly on
the graph's gradients, so the learning rate may change between steps."""

import collections

import pyro
import torch

from inference.training.losses import give_up

#: steps of a minibatch size taken as they are before a CUDA graph captures them (the first
#: traces the JIT's graph; the others let cuBLAS and the allocator settle)
GRAPH_WARMUP_STEPS = 3


class GraphedSteps:
    """``steps(x, num_data, fraction)``: the step on the CUDA minibatch ``x`` by the graph of its
    size, captured after ``GRAPH_WARMUP_STEPS`` eager steps taken on a side stream; None where
    that size could not be captured (its steps are then the caller's eager ones).

    :param eager: the eager step, ``eager(x, num_data, kl_weight, fraction)``, for the
        warm-up steps.
    :param loss: the :class:`inference.training.losses.StepLoss` whose compiled loss is
        captured.
    :param insist: raise, rather than say so and go on, where a step cannot be captured.
    """

    def __init__(self, eager, loss, optimizer, params, log=print, insist=False):
        self.eager, self.loss, self.optimizer, self.params = eager, loss, optimizer, params
        self.log, self.insist = log, insist
        #: the graph of each minibatch shape: None where capture failed
        self.graphs = {}
        self._eager_steps = collections.Counter()

    def __call__(self, x, num_data, fraction=None):
        # The capture, its streams and the replays belong on the device of the data, which need
        # not be the current device (--device cuda:1 leaves cuda:0 current): a capture on the
        # current device's stream does not hold the kernels the step runs on the data's device.
        with torch.cuda.device(x.device):
            return self._graphed(x, num_data, fraction)

    def _graphed(self, x, num_data, fraction):
        key = (tuple(x.shape), x.dtype, num_data)
        graph = self.graphs.get(key)
        if graph is not None:
            return graph(x)
        self._eager_steps[key] += 1
        if key in self.graphs:
            return None
        if self._eager_steps[key] > GRAPH_WARMUP_STEPS:
            self.graphs[key] = self._capture(x, num_data)
            return None if self.graphs[key] is None else self.graphs[key](x)
        # As CUDA's guide to graphs asks, the steps before a capture run on a side stream, so
        # that autograd's lazily made streams are not the legacy one.
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            loss = self.eager(x, num_data, 1.0, fraction)
        torch.cuda.current_stream(x.device).wait_stream(side)
        return loss

    def _capture(self, x, num_data):
        """A :class:`GraphStep` for minibatches like ``x``, or None (with a message) where the
        step cannot be captured. Capturing records the kernels without running them and draws
        no random numbers; the first replay is the step."""
        static_x = x.clone()
        graph = torch.cuda.CUDAGraph()
        # Gradients allocated inside the capture live in the graph's memory: each replay writes
        # them afresh.
        self.optimizer.zero_grad(set_to_none=True)
        # A capture stream of the data's device: torch.cuda.graph's own is made once, on the
        # device that is current at the first capture of the process.
        stream = torch.cuda.Stream(x.device)
        try:
            with pyro.validation_enabled(False), torch.jit.optimized_execution(False), \
                    torch.cuda.graph(graph, stream=stream):
                static_loss = self.loss.compiled(static_x, num_data)
                static_loss.backward()
        except Exception as error:
            give_up(self.log, "a CUDA graph", "--cuda-graph", "capture this training step",
                    error, self.insist)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        return GraphStep(graph, static_x, static_loss.detach(), self.optimizer, self.params,
                         [p.grad for p in self.params])


class GraphStep:
    """The step of one minibatch size as a captured graph: the minibatch is copied into the
    graph's input, the graph replayed, and Adam steps on the graph's gradients."""

    def __init__(self, graph, static_x, static_loss, optimizer, params, grads):
        self.graph, self.static_x, self.static_loss = graph, static_x, static_loss
        self.optimizer, self.params, self.grads = optimizer, params, grads

    def __call__(self, x):
        self.static_x.copy_(x)
        self.graph.replay()
        # A step of another minibatch size may have given the parameters other gradients.
        for param, grad in zip(self.params, self.grads):
            param.grad = grad
        self.optimizer.step()
        return self.static_loss.clone()

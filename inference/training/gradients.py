"""How a step gets the gradients of its loss: autograd in this process, or, in a group of
processes, through ``DistributedDataParallel``, which averages them across the processes."""

import torch

from inference.distributed import data_parallel


class LossGradients:
    """``gradients(x, num_data, kl_weight, fraction)``: the loss of the minibatch ``x``, whose
    gradients autograd has accumulated into the parameters."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, x, num_data, kl_weight=1.0, fraction=None):
        loss = self.loss(x, num_data, kl_weight)
        loss.backward()
        return loss


class _Loss(torch.nn.Module):
    """A step's loss as a module over the model and the guide, the form
    ``DistributedDataParallel`` wraps (as Pyro's ``ELBOModule`` does)."""

    def __init__(self, loss):
        super().__init__()
        self.model, self.guide = loss.model, loss.guide
        self._loss = (loss,)

    def forward(self, x, num_data, kl_weight, fraction):
        # The mean over G processes of G * fraction * (loss of the share, scaled by N / its
        # size) is the loss of the whole minibatch, scaled by N / B.
        size = torch.distributed.get_world_size()
        return self._loss[0](x, num_data, kl_weight) * (size * fraction)


class DistributedGradients:
    """The gradients of the loss of a whole global minibatch, in each process of ``group``
    from its ``fraction`` of it: ``DistributedDataParallel`` copies rank 0's parameters to every
    process when it is made, and averages the gradients during each backward pass. A process
    lost meanwhile ends the step with :class:`inference.distributed.ProcessGroupFailed`.

    :param parallel: the wrapped loss (default: the loss wrapped by
        :func:`inference.distributed.data_parallel`).
    """

    def __init__(self, loss, group, parallel=None):
        self.group = group
        if parallel is None:
            devices = [group.device] if group.device.type == "cuda" else None
            parallel = data_parallel(_Loss(loss), device_ids=devices)
        self.parallel = parallel

    def __call__(self, x, num_data, kl_weight=1.0, fraction=None):
        try:
            loss = self.parallel(x, num_data, kl_weight, fraction)
            loss.backward()   # the gradients are averaged across the processes here
        except RuntimeError as error:
            if self.group.is_collective_error(error):
                raise self.group.failure("averaging gradients", error) from error
            raise
        return loss

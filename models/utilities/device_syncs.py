"""Counting host-device synchronizations: the operations that make the host wait for a GPU.

A CPU never waits, but the same operations would on a GPU, so :class:`SyncCounter` counts them
on any device. ``scripts/benchmark.py`` reports the counts per training step and per evaluation
chunk, and ``tests/test_speed.py`` checks that they are zero."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: operations that make the host wait for a GPU: reading a value back, or a result whose shape
#: depends on the values
READS = ("_local_scalar_dense", "is_nonzero", "equal")
DATA_DEPENDENT = ("nonzero", "masked_select", "unique", "_unique2", "unique_consecutive")


class SyncCounter(TorchDispatchMode):
    """Counts the operations that would make the host wait for a GPU while it is active: reads
    of floating-point or boolean values (``.item()``, ``bool()``), and results whose shape
    depends on the values. Reads of integer scalars are left out: the JIT's graphs turn tensor
    shapes into such scalars, which live on the host on every device. So are reads made while
    the JIT traces: they are of the tracer's own shape tensors, on the host (a read of a
    model's values there stops the trace, see ``inference.log_weights.strict_tracing``).

    ``count`` holds the number counted so far; use it as a context manager::

        counter = SyncCounter()
        with counter:
            step(x, num_data)
        assert counter.count == 0
    """

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        tracing = torch._C._get_tracing_state() is not None
        if not tracing and (name in DATA_DEPENDENT or (
                name in READS and args and torch.is_tensor(args[0]) and (
                    args[0].is_floating_point() or args[0].dtype == torch.bool))):
            self.count += 1
        return func(*args, **(kwargs or {}))

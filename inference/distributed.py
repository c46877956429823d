"""Several processes, one run: ``torch.distributed`` as launched by ``torchrun``.

``torchrun --nproc-per-node G scripts/train.py ...`` starts G copies of a script with the
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` set;
:func:`from_environment` joins them into a process group (NCCL for CUDA devices, gloo for the
CPU) and gives each process its device (``cuda:LOCAL_RANK`` on a machine with GPUs).

- Training (:mod:`inference.training`) wraps the loss of the model and guide in
  ``DistributedDataParallel``: every process takes a disjoint share of each global minibatch,
  and the gradients are averaged so that each update is that of one process with the whole
  minibatch.
- Evaluation (:func:`evaluation.estimators.estimate`) gives each process whole chunks of the
  data points and gathers the per-point results; a point's random numbers depend on its place in
  the data, not on the process (see :func:`inference.log_weights.chunk_seeds`).

A process that fails or stops answering ends the others: a collective that waits longer than
``VAE_DIST_TIMEOUT`` seconds (default 600) fails in every process, each of which then stops
with one line (:class:`ProcessGroupFailed`); ``torchrun`` stops the rest when one exits. With
NCCL this holds because :func:`from_environment` makes its collectives wait for their end and
raise (:func:`raise_collective_errors`); docs/distributed.md says where it cannot be promised.
"""

import datetime
import gc
import inspect
import math
import os

import torch
import torch.distributed as dist

#: seconds a collective waits for the other processes before the run is given up
DEFAULT_TIMEOUT = 600.0


class ProcessGroupFailed(ConnectionError):
    """Another process of the run failed or stopped answering; this one cannot go on."""


def timeout_seconds():
    text = os.environ.get("VAE_DIST_TIMEOUT", str(DEFAULT_TIMEOUT))
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"VAE_DIST_TIMEOUT must be a positive number of seconds, got {text!r}")
    return value


class ProcessGroup:
    """The processes of one run: this one's ``rank`` among ``size``, and the collectives the
    project uses. Rank 0 is the one that writes files and prints."""

    def __init__(self, rank, size, local_rank, device):
        self.rank, self.size, self.local_rank, self.device = rank, size, local_rank, device

    @property
    def is_main(self):
        return self.rank == 0

    def _guard(self, what, function, *args):
        try:
            return function(*args)
        except (RuntimeError, ConnectionError) as error:
            raise self.failure(what, error) from error

    def failure(self, what, error):
        """The :class:`ProcessGroupFailed` to raise for ``error`` of a collective."""
        if isinstance(error, ProcessGroupFailed):
            return error
        detail = " ".join(str(error).split())[:300]
        return ProcessGroupFailed(
            f"process {self.rank} of {self.size} lost the others while {what} ({detail}); "
            "the run stops here; the files of finished epochs are intact, so the same command "
            "with --resume continues it")

    @staticmethod
    def is_collective_error(error):
        """Whether ``error`` came from the communication between the processes."""
        distributed_error = getattr(dist, "DistError", ())
        text = str(error)
        return isinstance(error, (ConnectionError, distributed_error)) or any(
            word in text for word in ("gloo", "Gloo", "NCCL", "Connection closed", "timed out"))

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object), in every process."""
        box = [value if self.is_main else None]
        self._guard("sharing a value", dist.broadcast_object_list, box, 0)
        return box[0]

    def from_main(self, what, function):
        """``function()`` as the first process computes it, in every process. The others do not
        call it (it reads what only the first process's machine need have, such as the run
        folder) but take a copy of its value (any picklable object). Where it fails in the
        first process, every process stops: the first with its error, the others with its
        message, rather than waiting for a value that does not come."""
        value = error = message = None
        if self.is_main:
            try:
                value = function()
            except Exception as failure:
                error, message = failure, " ".join(str(failure).split()) or type(failure).__name__
        value, message = self.broadcast((value, message))
        if error is not None:
            raise error
        if message is not None:
            raise ValueError(f"process {self.rank} of {self.size} stops: the first process "
                             f"could not {what} ({message})")
        return value

    def gather(self, value):
        """[value of rank 0, value of rank 1, ...] in every process."""
        values = [None] * self.size
        self._guard("gathering results", dist.all_gather_object, values, value)
        return values

    def sum(self, tensor):
        """The elementwise sum of ``tensor`` over the processes (in place; returned)."""
        self._guard("adding up results", dist.all_reduce, tensor)
        return tensor

    def share(self, num_items, step):
        """This process's part of ``num_items`` items cut into blocks of ``step`` (the last
        one shorter): contiguous runs of whole blocks, as equal as can be, in rank order."""
        num_blocks = math.ceil(num_items / step) if num_items else 0
        first = self.rank * num_blocks // self.size
        last = (self.rank + 1) * num_blocks // self.size
        return slice(min(num_items, first * step), min(num_items, last * step))


def launched():
    """True inside a process that ``torchrun`` started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


#: NCCL's settings of what a failed or timed-out collective does; one set by the user is kept
NCCL_ERROR_SETTINGS = ("TORCH_NCCL_BLOCKING_WAIT", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
                       "NCCL_BLOCKING_WAIT", "NCCL_ASYNC_ERROR_HANDLING")


def raise_collective_errors(environ=os.environ):
    """Ask NCCL (before the process group is made) that a collective that fails or outlasts the
    timeout raise an error in the process waiting on it (``TORCH_NCCL_BLOCKING_WAIT=1``), which
    then stops with one line (:class:`ProcessGroupFailed`), unless the user chose a setting of
    their own (:data:`NCCL_ERROR_SETTINGS`). Returns whether it did.

    By default NCCL's collectives return before they are done, and a watchdog thread that finds
    one failed or timed out aborts the whole process (SIGABRT), so that no error reaches this
    project's code. Waiting instead costs each collective a wait of the host for the device:
    in training, once per step (the averaging of the gradients)."""
    if any(name in environ for name in NCCL_ERROR_SETTINGS):
        return False
    environ["TORCH_NCCL_BLOCKING_WAIT"] = "1"
    return True


def from_environment(device_name="auto"):
    """The :class:`ProcessGroup` of a run launched by ``torchrun`` with several processes (None
    for a single process), with this process's device for ``device_name`` (auto, cpu, cuda)."""
    if not launched():
        return None
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device_name.startswith("cuda") or (device_name == "auto"
                                                    and torch.cuda.is_available())
    if wants_cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device_name} asks for CUDA, which this machine lacks")
        if device_name not in ("auto", "cuda"):
            raise ValueError(f"with several processes each takes the GPU of its local rank; "
                             f"pass --device cuda or auto, not {device_name}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    timeout = datetime.timedelta(seconds=timeout_seconds())
    if not dist.is_initialized():
        if backend == "nccl":
            raise_collective_errors()
        dist.init_process_group(backend, timeout=timeout)
    return ProcessGroup(rank, size, local_rank, device)


def shutdown(group):
    """Leave the group (each process when it is done; the others may still be working)."""
    if group is None or not dist.is_initialized():
        return
    # A DistributedDataParallel wrapper left in a reference cycle still holds the gloo group;
    # were it freed only while the interpreter shuts down, gloo's worker threads would abort the
    # process (SIGABRT, "terminate called without an active exception"). Free it now.
    gc.collect()
    dist.destroy_process_group()


def data_parallel(module, device_ids=None):
    """``module`` (the loss of the model and the guide) wrapped in ``DistributedDataParallel``
    of the default process group: rank 0's parameters and buffers are copied to every process
    now, the gradients are averaged during each backward pass, and the buffers (constants of
    the model and the guide) are not broadcast again before each forward pass.

    torch 2.13 says the last with ``forward_sync_buffers=False``; the torch releases before it,
    which the package accepts (``torch>=2.1``), lack that keyword, and their
    ``broadcast_buffers=False`` (deprecated since 2.13) also skips the copy of the buffers at
    construction, which is then made here."""
    wrapper = torch.nn.parallel.DistributedDataParallel
    if "forward_sync_buffers" in inspect.signature(wrapper.__init__).parameters:
        return wrapper(module, device_ids=device_ids, forward_sync_buffers=False)
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
    return wrapper(module, device_ids=device_ids, broadcast_buffers=False)

"""The optimizer of a training step: one ``torch.optim.Adam`` over every parameter of the model
and the guide, its state in a checkpoint (and the state of Pyro's optimizer wrapper that older
checkpoints hold), and the flushing of its subnormal numbers on the CPU."""

import pyro
import torch

from inference.checkpoint import CheckpointError
from inference.log_weights import error_summary


def parameters(model, guide):
    """(names, tensors) of every parameter the step trains, named as Pyro names them
    (``model$$$decoder.0.weight``, ``guide$$$encoder.0.bias``)."""
    named = [(f"model$$${name}", p) for name, p in model.named_parameters()]
    named += [(f"{guide.pyro_name}$$${name}", p) for name, p in guide.named_parameters()]
    return [name for name, _ in named], [p for _, p in named]


def forget_stale_params():
    """Drop parameters of earlier models from Pyro's global param store.

    ``pyro.module`` keeps whatever tensor the store already holds under a name, so leftovers of an
    earlier model named ``model$$$...`` would silently shadow the new model's parameters.
    """
    store = pyro.get_param_store()
    for name in list(store.keys()):
        if name.split("$$$")[0] in ("model", "guide", "local_guide"):
            del store[name]


def adam(params, learning_rate, eps=1e-8):
    """``torch.optim.Adam`` over ``params``, fused into one kernel where this build of torch can
    (measured on two CPU cores at batch 128: about 30% less time per step than one update per
    parameter); the arithmetic is Adam's either way."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=learning_rate, eps=eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=learning_rate, eps=eps)


def set_learning_rate(optimizer, learning_rate):
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def flush_subnormals(optimizer):
    """Set to zero the entries of Adam's running averages that have decayed below the smallest
    normal float (1.2e-38 in float32), on the CPU.

    A parameter whose gradient is zero for a while (a pixel of a VampPrior pseudo-input held at
    0 or 1 by its hard tanh, the weights of a unit that never fires) has its averages multiplied
    by beta1 = 0.9 and beta2 = 0.999 at every step, until they fall into the subnormal range,
    where x86 CPUs compute tens of times slower: for thousands of steps for the second moment.
    Its update there is below 1e-30, so zero changes nothing that float32 parameters can show.
    On a GPU subnormals cost nothing extra; they are left."""
    if optimizer.param_groups[0]["params"][0].device.type != "cpu":
        return
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0:
                value.masked_fill_(value.abs() < torch.finfo(value.dtype).tiny, 0.0)


def optimizer_state(optimizer, names):
    """The optimizer's state, with the parameter names, for a checkpoint."""
    return {"optimizer": "torch.optim.Adam", "names": names, "state": optimizer.state_dict()}


def load_optimizer_state(optimizer, names, params, state, path=None):
    """Restore :func:`optimizer_state`, or the per-parameter state of Pyro's optimizer wrapper
    that checkpoints written before held, converted. A state that does not fit these parameters
    (other names, sizes or groups, or not an optimizer's state at all) is refused with a
    :class:`CheckpointError` that names the checkpoint's ``optimizer`` entry."""
    try:
        if state.get("optimizer") == "torch.optim.Adam":
            if list(state["names"]) != names:
                raise ValueError("it belongs to other parameters")
            loaded = state["state"]
        else:
            loaded = pyro_optimizer_state(state, names, optimizer, path)
        optimizer.load_state_dict(loaded)
        for index, param in enumerate(params):
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"its {key} of parameter {names[index]} has shape "
                                     f"{tuple(value.shape)}, not {tuple(param.shape)}")
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        raise CheckpointError(
            f"{path or 'the checkpoint'} has a damaged 'optimizer' entry: the Adam state of "
            f"this model's parameters ({error_summary(error)}); the run cannot continue from it "
            "bit for bit. Resume from a copy of the folder, or train again into another "
            "--out") from error


def pyro_optimizer_state(state, names, optimizer, path=None):
    """Convert the state of ``pyro.optim.Adam`` ({parameter name: the state dict of one torch
    Adam per parameter}) into the state dict of one torch Adam over ``names``."""
    converted = optimizer.state_dict()
    missing = [name for name in names if name not in state]
    if missing and state:
        raise ValueError(f"the optimizer state in {path} lacks {missing[0]}; it belongs to "
                         "another model")
    for index, name in enumerate(names):
        if name in state and state[name].get("state"):
            (per_parameter,) = state[name]["state"].values()
            converted["state"][index] = per_parameter
    return converted

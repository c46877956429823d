"""A thin SVI driver: epochs of shuffled minibatches, validation, checkpoints, resume.

    step = TrainingStep(model, guide, config.training)   # the objective, autograd, Adam
    for epoch in epochs:
        for x in train.batches(batch_size, shuffle=True):
            step(x, num_data=N)     # minibatch ELBO scaled by N / B: unbiased for the full ELBO

A step is SVI's: the loss of the literal Pyro model and guide (Trace_ELBO's estimator, or the
chosen objective), differentiated by autograd, then one ``torch.optim.Adam`` over every parameter
of the model and the guide. It reads nothing back to the host: the losses are summed on the
device and read when the progress bar refreshes (every ``CHECK_EVERY`` steps) and at the end of
the epoch. The data are validated once, when training starts, and Pyro's per-step validation is
off during the steps. Where the objective allows it the loss is compiled with the JIT
(``JitTrace_ELBO``); a model that cannot be traced trains without it, with a message. On CUDA
the compiled loss and its gradients are then captured in a CUDA graph for each minibatch size
and replayed (``--no-cuda-graph`` turns this off).

Everything a run produces goes to one folder: ``config.json``, ``metrics.csv``, ``checkpoint.pt``
(after the last finished epoch), ``best.pt`` (best validation ELBO) and ``summary.json``, all
written atomically; ``after_epoch`` lets the caller add more (``train.py`` draws ``elbo.png``).
Resuming from ``checkpoint.pt`` restores parameters, optimizer moments and random number
generator states, so a run that was split in two ends exactly where an uninterrupted run with
the same seed ends (on the CPU; GPU kernels are not all deterministic). ``time_budget`` ends a
run cleanly at the end of the last epoch that fits, to be continued with ``--resume``.
"""

import collections
import csv
import io
import math
import os
import time

import pyro
import torch
from tqdm.auto import tqdm

from inference.checkpoint import (BEST, LAST, CheckpointError, check_resumable, load_state,
                                  new_run_id, read_checkpoint, restore_rng_state, rng_state,
                                  save_checkpoint)
from inference.log_weights import error_summary, log_importance_weights, strict_tracing
from inference.objectives import ScaleLatents, kl_weight, make_objective, warmed
from inference.run_folder import RunFolderError, config_record, repair
from models.base.config import derived_seed
from models.base.io import atomic_copy, atomic_write_json, atomic_write_text
from models.vae import check_batch

# train_elbo is the training objective per point (the IWAE bound for --objective iwae, the
# KL-weighted ELBO during warm-up); validation_elbo is always the plain ELBO.
METRIC_FIELDS = ("epoch", "train_elbo", "validation_elbo", "kl_weight", "seconds")


#: steps between two reads of the losses (progress bar, divergence check): the only times a
#: training step waits for the device
CHECK_EVERY = 50
#: steps between two flushes of the optimizer's subnormal numbers (see
#: TrainingStep.flush_subnormals): fewer than the 150 or so that beta1 = 0.9 takes to carry a
#: running average through the subnormal range
FLUSH_EVERY = 100
#: steps of a minibatch size taken as they are before a CUDA graph captures them (the first
#: traces the JIT's graph; the others let cuBLAS and the allocator settle)
GRAPH_WARMUP_STEPS = 3


@torch.no_grad()
def elbo_per_datapoint(model, guide, x, batch_size=1000):
    """The ELBO log p(x_n, z_n) - log q(z_n | x_n) with one z_n ~ q(z | x_n) for each point,
    as a tensor of shape (N,) in nats."""
    values = [log_importance_weights(model, guide, x[i:i + batch_size], 1)[0]
              for i in range(0, x.shape[0], batch_size)]
    return torch.cat(values)


def mean_elbo(model, guide, split, batch_size=1000, group=None):
    """The mean ELBO per data point over a split, in nats (one z per point). With a ``group``
    of processes each scores a contiguous share of the points and the sums are combined."""
    model.eval(), guide.eval()
    x = split.data()
    if group is not None:
        x = x[group.share(x.shape[0], 1)]
    try:
        with pyro.validation_enabled(False):   # the data were validated when training began
            values = elbo_per_datapoint(model, guide, x, batch_size) if x.shape[0] else \
                torch.zeros(0, device=x.device)
    finally:
        model.train(), guide.train()
    if group is None:
        return values.mean().item()
    total = group.sum(torch.stack([values.sum().double(), torch.tensor(
        float(values.numel()), dtype=torch.float64, device=values.device)]))
    return (total[0] / total[1]).item()


def validate_data(model, dataset):
    """Check every split once, with the model's own checks (shape, finite values, the support
    of the likelihood), so that the steps need not check each minibatch."""
    for name in ("train", "validation", "test"):
        split = getattr(dataset, name)
        check_batch(split.images, model.x_dim)
        if split.dynamic:
            # Dynamic binarization draws Bernoulli(grey level): the levels must be in [0, 1].
            if (split.images < 0).any() or (split.images > 1).any():
                raise ValueError(f"the {name} split has grey levels outside [0, 1]; they cannot "
                                 "be binarized")
        else:
            model.likelihood.check_data(split.images)


def adam(params, learning_rate, eps=1e-8):
    """``torch.optim.Adam`` over ``params``, fused into one kernel where this build of torch can
    (measured on two CPU cores at batch 128: about 30% less time per step than one update per
    parameter); the arithmetic is Adam's either way."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=learning_rate, eps=eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=learning_rate, eps=eps)


#: Burda et al. (2016), section 5: "for 3^i epochs with learning rate 0.001 * 10^(-i/7), for
#: i = 0, ..., 7", 3,280 epochs in all
BURDA_STAGES = 8
BURDA_EPOCHS = (3 ** BURDA_STAGES - 1) // 2


def learning_rate_at(training, epoch):
    """The Adam step size of epoch ``epoch`` (counted from 1) under ``training``'s schedule.

    ``burda`` is the schedule of Burda, Grosse & Salakhutdinov (2016), "Importance Weighted
    Autoencoders": stage i = 0..7 lasts 3^i of the 3,280 epochs at ``learning_rate`` *
    10^(-i/7). It is laid over ``num_epochs`` in proportion: with 3,280 epochs it is the paper's;
    with fewer, each epoch takes the rate of the stage its start falls in (a stage shorter than
    an epoch is skipped)."""
    if training.learning_rate_schedule == "constant":
        return training.learning_rate
    # Integer arithmetic: the start of epoch e lies at (e - 1) * 3280 / num_epochs paper epochs.
    start = (epoch - 1) * BURDA_EPOCHS
    stage, stage_end = 0, 1
    while stage < BURDA_STAGES - 1 and start >= stage_end * training.num_epochs:
        stage += 1
        stage_end += 3 ** stage
    return training.learning_rate * 10 ** (-stage / 7)


def parameters(model, guide):
    """(names, tensors) of every parameter the step trains, named as Pyro names them
    (``model$$$decoder.0.weight``, ``guide$$$encoder.0.bias``)."""
    named = [(f"model$$${name}", p) for name, p in model.named_parameters()]
    named += [(f"{guide.pyro_name}$$${name}", p) for name, p in guide.named_parameters()]
    return [name for name, _ in named], [p for _, p in named]


class TrainingStep:
    """One SVI step of the literal Pyro model and guide: the objective's loss, autograd, and one
    ``torch.optim.Adam`` over every parameter of both. The call returns the loss as a 0-dim
    tensor on the device and reads nothing back to the host.

    :param training: the :class:`models.base.config.TrainingConfig`; its ``jit`` is honoured as
        :func:`inference.objectives.make_objective` explains.
    :param log: where to say that the JIT was given up for this model.
    """

    def __init__(self, model, guide, training, log=print, group=None):
        self.model, self.guide, self.log = model, guide, log
        # The JIT reads the parameters through Pyro's param store: no stale entries of another
        # model may shadow these ones.
        forget_stale_params()
        self.objective, self.jit = make_objective(training)
        self.insist_on_jit = training.jit is True
        self.names, self.params = parameters(model, guide)
        self.optimizer = adam(self.params, training.learning_rate, training.adam_eps)
        self.scaler = ScaleLatents(1.0)
        self.plain_loss = self.objective.loss_function(jit=False)
        self.warmed_model = warmed(model, self.scaler)
        self.warmed_guide = warmed(guide, self.scaler)
        self.jit_loss = self.objective.loss_function(jit=True) if self.jit else None
        self._traced = set()
        self.parallel, self.group = None, group
        # CUDA graphs of the loss and its gradients, by minibatch: None where capture failed.
        self.graphs, self._eager_steps = {}, collections.Counter()
        self.use_graphs = training.cuda_graph is not False and group is None and self.jit
        self.insist_on_graph = training.cuda_graph is True
        if self.insist_on_graph:
            device = self.params[0].device if self.params else torch.device("cpu")
            if device.type != "cuda" or not self.jit or group is not None:
                raise ValueError("--cuda-graph needs a CUDA device (--device cuda), the JIT and "
                                 f"one process (here: {device.type}, "
                                 f"{'JIT' if self.jit else 'no JIT'}, "
                                 f"{'one process' if group is None else 'several processes'})")
        if group is not None:
            # DistributedDataParallel copies rank 0's parameters to every process now and
            # averages the gradients during each backward pass.
            devices = [group.device] if group.device.type == "cuda" else None
            self.parallel = torch.nn.parallel.DistributedDataParallel(
                _Loss(self), device_ids=devices, forward_sync_buffers=False)

    def __call__(self, x, num_data, kl_weight=1.0, fraction=None):
        """One step on the minibatch ``x``; the loss is log p - log q scaled by
        ``num_data`` / B. In a group of processes ``x`` is this process's ``fraction`` of the
        global minibatch; the loss is weighted so that the averaged gradient is that of the
        whole minibatch."""
        self.scaler.weight = kl_weight
        if self.use_graphs and x.is_cuda and kl_weight == 1.0 and self.jit_loss is not None:
            # The capture, its streams and the replays belong on the device of the data, which
            # need not be the current device (--device cuda:1 leaves cuda:0 current): a capture
            # on the current device's stream does not hold the kernels the step runs on the
            # data's device.
            with torch.cuda.device(x.device):
                loss = self._graphed(x, num_data, fraction)
            if loss is not None:
                return loss
        return self._eager(x, num_data, kl_weight, fraction)

    def _graphed(self, x, num_data, fraction):
        """The step on ``x`` (on the current CUDA device) by the CUDA graph of its minibatch
        size, captured after ``GRAPH_WARMUP_STEPS`` steps taken on a side stream; None where
        that size could not be captured (its steps are taken without a graph)."""
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
            loss = self._eager(x, num_data, 1.0, fraction)
        torch.cuda.current_stream(x.device).wait_stream(side)
        return loss

    def _eager(self, x, num_data, kl_weight, fraction):
        self.optimizer.zero_grad(set_to_none=True)
        with pyro.validation_enabled(False):
            if self.parallel is None:
                loss = self._loss(x, num_data, kl_weight)
                loss.backward()
            else:
                try:
                    loss = self.parallel(x, num_data, kl_weight, fraction)
                    loss.backward()   # the gradients are averaged across the processes here
                except RuntimeError as error:
                    if self.group.is_collective_error(error):
                        raise self.group.failure("averaging gradients", error) from error
                    raise
        self.optimizer.step()
        return loss.detach()

    def _loss(self, x, num_data, kl_weight):
        if self.jit_loss is None or kl_weight != 1.0:
            return self.plain_loss(self.warmed_model, self.warmed_guide, x, num_data=num_data)
        batch_size = x.shape[0]
        arguments = dict(num_data=num_data, batch_size=batch_size)
        try:
            if batch_size not in self._traced:
                # Tracing runs the model and guide several times; it must not draw from the
                # run's random stream, or a resumed run (which traces anew) would not follow
                # the uninterrupted one.
                devices = [x.device] if x.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices), \
                        torch.jit.optimized_execution(False), strict_tracing():
                    self.jit_loss(self.model, self.guide, x, **arguments)
            # The traced graph's own optimization passes slow its backward pass on the CPU.
            with torch.jit.optimized_execution(False):
                loss = self.jit_loss(self.model, self.guide, x, **arguments)
        except Exception as error:
            if batch_size in self._traced:
                raise
            self._do_without("the JIT", "--jit", "trace this model and guide", error,
                             self.insist_on_jit)
            self.jit_loss = None
            return self._loss(x, num_data, kl_weight)
        self._traced.add(batch_size)
        return loss

    def _do_without(self, what, flag, task, error, insist):
        """Say that ``what`` could not ``task`` and go on without it, or, where its ``flag``
        insisted, stop with that."""
        detail = error_summary(error)
        if insist:
            raise ValueError(f"{flag} could not {task} ({detail}); run without {flag}") \
                from error
        self.log(f"{what} could not {task} ({detail}); training without it")

    def _capture(self, x, num_data):
        """A :class:`_GraphStep` for minibatches like ``x``, or None (with a message) where the
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
                static_loss = self.jit_loss(self.model, self.guide, static_x, num_data=num_data,
                                            batch_size=x.shape[0])
                static_loss.backward()
        except Exception as error:
            self._do_without("a CUDA graph", "--cuda-graph", "capture this training step",
                             error, self.insist_on_graph)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        return _GraphStep(graph, static_x, static_loss.detach(), self.optimizer, self.params,
                          [p.grad for p in self.params])

    def set_learning_rate(self, learning_rate):
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

    def flush_subnormals(self):
        """Set to zero the entries of Adam's running averages that have decayed below the
        smallest normal float (1.2e-38 in float32), on the CPU.

        A parameter whose gradient is zero for a while (a pixel of a VampPrior pseudo-input held
        at 0 or 1 by its hard tanh, the weights of a unit that never fires) has its averages
        multiplied by beta1 = 0.9 and beta2 = 0.999 at every step, until they fall into the
        subnormal range, where x86 CPUs compute tens of times slower: for thousands of steps
        for the second moment. Its update there is below 1e-30, so zero changes nothing that
        float32 parameters can show. On a GPU subnormals cost nothing extra; they are left."""
        if self.optimizer.param_groups[0]["params"][0].device.type != "cpu":
            return
        for state in self.optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0:
                    value.masked_fill_(value.abs() < torch.finfo(value.dtype).tiny, 0.0)

    def state(self):
        """The optimizer's state, with the parameter names, for a checkpoint."""
        return {"optimizer": "torch.optim.Adam", "names": self.names,
                "state": self.optimizer.state_dict()}

    def load_state(self, state, path=None):
        """Restore :meth:`state`, or the per-parameter state of Pyro's optimizer wrapper that
        checkpoints written before held, converted. A state that does not fit these parameters
        (other names, sizes or groups, or not an optimizer's state at all) is refused with a
        :class:`CheckpointError` that names the checkpoint's ``optimizer`` entry."""
        try:
            if state.get("optimizer") == "torch.optim.Adam":
                if list(state["names"]) != self.names:
                    raise ValueError("it belongs to other parameters")
                loaded = state["state"]
            else:
                loaded = pyro_optimizer_state(state, self.names, self.optimizer, path)
            self.optimizer.load_state_dict(loaded)
            self._check_state_shapes()
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError,
                IndexError) as error:
            raise CheckpointError(
                f"{path or 'the checkpoint'} has a damaged 'optimizer' entry: the Adam state of "
                f"this model's parameters ({error_summary(error)}); the run cannot continue "
                "from it bit for bit. Resume from a copy of the folder, or train again into "
                "another --out") from error

    def _check_state_shapes(self):
        for index, param in enumerate(self.params):
            for key, value in self.optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"its {key} of parameter {self.names[index]} has shape "
                                     f"{tuple(value.shape)}, not {tuple(param.shape)}")


class _GraphStep:
    """A training step whose loss and gradients replay a captured CUDA graph: one launch for
    the hundreds of kernels of the model, the guide and autograd, which on a GPU otherwise wait
    on the host's launching of them. The minibatch is copied into the graph's input, and Adam
    steps as usual on the graph's gradients (so the learning rate may change between steps)."""

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


class _Loss(torch.nn.Module):
    """The loss of a :class:`TrainingStep` as a module over the model and the guide, the form
    ``DistributedDataParallel`` wraps (as Pyro's ``ELBOModule`` does)."""

    def __init__(self, step):
        super().__init__()
        self.model, self.guide = step.model, step.guide
        self._step = (step,)

    def forward(self, x, num_data, kl_weight, fraction):
        # The mean over G processes of G * fraction * (loss of the share, scaled by N / its
        # size) is the loss of the whole minibatch, scaled by N / B.
        size = torch.distributed.get_world_size()
        return self._step[0]._loss(x, num_data, kl_weight) * (size * fraction)


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


def forget_stale_params():
    """Drop parameters of earlier models from Pyro's global param store.

    ``pyro.module`` keeps whatever tensor the store already holds under a name, so leftovers of an
    earlier model named ``model$$$...`` would silently shadow the new model's parameters.
    """
    store = pyro.get_param_store()
    for name in list(store.keys()):
        if name.split("$$$")[0] in ("model", "guide", "local_guide"):
            del store[name]


def write_metrics(out_dir, metrics, run=None):
    """Write ``metrics.csv``: one row per finished epoch, each with the run's identity
    ``run`` in its last column (where the run has one)."""
    buffer = io.StringIO()
    fields = METRIC_FIELDS + (("run",) if run is not None else ())
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in metrics:
        # Runs begun before KL warm-up existed kept no kl_weight in their history: it was 1.
        writer.writerow({"kl_weight": 1.0, **row, **({"run": run} if run is not None else {})})
    atomic_write_text(os.path.join(out_dir, "metrics.csv"), buffer.getvalue())


def epoch_seed(seed, epoch, rank=None):
    """The seed of an epoch of a run of several processes: the order of the data (``rank``
    None) is the same in all, the noise of each process its own."""
    return derived_seed(seed, epoch, "order" if rank is None else rank)


def fit(model, guide, dataset, config, out_dir, *, checkpoint=None, progress=True, log=print,
        after_epoch=None, time_budget=None, group=None, run_id=None):
    """Train ``model`` and ``guide`` by SVI on ``dataset`` as ``config`` says; write the run folder.

    :param config: the run's :class:`models.base.config.RunConfig`; training follows
        ``config.training``. It is saved as ``config.json`` and in every checkpoint.
    :param dict checkpoint: a loaded checkpoint to resume from (see ``load_checkpoint``).
    :param after_epoch: called as ``after_epoch(out_dir, metrics)`` after each epoch's files
        are written (to draw curves, say).
    :param float time_budget: seconds this call may train; it stops at the end of the last
        epoch that is expected to finish within them (``--resume`` continues the run).
    :param group: the :class:`inference.distributed.ProcessGroup` of a run of several
        processes (each needs the same ``checkpoint``): each trains on its share of every
        minibatch of ``training.batch_size`` (the global size), with the data order of the
        epoch the same in all and its own noise; losses and ELBOs are combined across them;
        only the first process writes files, logs and calls ``after_epoch``.
    :param str run_id: the identity of a new run (default: a fresh one; a restarted run keeps
        the one its ``config.json`` holds); a resumed run keeps its checkpoint's.
    :returns: the summary dict written to ``summary.json``.
    """
    training = config.training
    main = group is None or group.is_main
    if not main:
        log = _silent
    if main:
        os.makedirs(out_dir, exist_ok=True)
    forget_stale_params()
    validate_data(model, dataset)
    step = TrainingStep(model, guide, training, log=log, group=group)
    metrics, best, start_epoch = [], {"epoch": 0, "validation_elbo": -math.inf}, 0
    run = run_id
    if checkpoint is not None:
        check_resumable(checkpoint, METRIC_FIELDS)
        if training.num_epochs < checkpoint["epoch"]:
            raise ValueError(f"the run in {out_dir} has finished {checkpoint['epoch']} epochs; "
                             f"--num-epochs {training.num_epochs} would not continue it (give "
                             "the total number of epochs, more than that)")
        # A run begun before runs had identities takes one now.
        run = checkpoint.get("run") or run or new_run_id()
        checkpoint = dict(checkpoint, run=run)
        if main:
            repair(out_dir, checkpoint, write_metrics, after_epoch)
        step.load_state(checkpoint["optimizer"], checkpoint.get("path"))
        metrics, best, start_epoch = checkpoint["metrics"], checkpoint["best"], checkpoint["epoch"]
        restore_rng_state(checkpoint)
        log(f"resuming {out_dir} after epoch {start_epoch}")
    else:
        run = run or new_run_id()
        if main:
            atomic_write_json(os.path.join(out_dir, "config.json"), config_record(config, run))
    if group is not None:
        run = group.broadcast(run)

    train, num_data = dataset.train, len(dataset.train)
    batch_size = min(training.batch_size, num_data)
    num_batches = math.ceil(num_data / batch_size)
    num_epochs = training.num_epochs
    device = train.images.device
    began = time.perf_counter()

    model.train(), guide.train()
    watch = DivergenceWatch(training.learning_rate)
    for epoch in range(start_epoch + 1, num_epochs + 1):
        start = time.perf_counter()
        step.set_learning_rate(learning_rate_at(training, epoch))
        total = torch.zeros((), device=device)
        window, window_steps, steps, weight = torch.zeros((), device=device), 0, 0, 1.0
        bar = tqdm(total=num_batches, desc=f"epoch {epoch}/{num_epochs}", unit="batch",
                   disable=not progress or not main, leave=False, dynamic_ncols=True)
        if group is None:
            batches = ((x, None) for x in train.batches(batch_size, shuffle=True))
        else:
            order = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
            torch.manual_seed(epoch_seed(config.seed, epoch, group.rank))
            batches = train.batches(batch_size, shuffle=True, generator=order,
                                    share=(group.rank, group.size))
        for x, fraction in batches:
            weight = kl_weight(training.kl_warmup_epochs, epoch, steps + 1, num_batches)
            loss = step(x, num_data, weight, fraction)
            total, window = total + loss, window + loss
            steps, window_steps = steps + 1, window_steps + 1
            bar.update()
            if steps % FLUSH_EVERY == 0:
                step.flush_subnormals()
            if steps % CHECK_EVERY == 0 or steps == num_batches or watch.first is None:
                # The one read of the device in CHECK_EVERY steps (and at the very first step,
                # whose loss is the yardstick of divergence); with several processes the mean
                # of their losses, so that all of them decide alike.
                if group is not None:
                    window = group.sum(window) / group.size
                elbo = -window.item() / window_steps / num_data
                watch.check(elbo, epoch, steps)
                bar.set_postfix_str(f"ELBO {elbo:.2f} nats/point")
                window, window_steps = torch.zeros((), device=device), 0
        bar.close()
        if group is not None:
            total = group.sum(total) / group.size
        train_elbo = -total.item() / steps / num_data
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        # Without a validation split (--num-validation 0, the paper's protocol) the last epoch
        # is the best.
        validation_elbo = (mean_elbo(model, guide, dataset.validation, group=group)
                           if len(dataset.validation) else math.nan)
        metrics.append({"epoch": epoch, "train_elbo": train_elbo,
                        "validation_elbo": validation_elbo, "kl_weight": weight,
                        "seconds": seconds})
        improved = validation_elbo > best["validation_elbo"] or math.isnan(validation_elbo)
        if improved:
            best = {"epoch": epoch, "validation_elbo": validation_elbo}
        if main:
            # The checkpoint is the epoch's commit point; best.pt and the rest follow from it,
            # and run_folder.repair restores them from it after a crash (inference/run_folder).
            save_checkpoint(os.path.join(out_dir, LAST), config=config, model=model,
                            guide=guide, optimizer=step.state(), epoch=epoch, metrics=metrics,
                            best=best, rng=rng_state(), run=run)
            if improved:
                atomic_copy(os.path.join(out_dir, LAST), os.path.join(out_dir, BEST))
            write_metrics(out_dir, metrics, run)
            if after_epoch is not None:
                after_epoch(out_dir, metrics)
        shown = "     none" if math.isnan(validation_elbo) else f"{validation_elbo:9.3f}"
        log(f"epoch {epoch:3d}/{num_epochs}  train ELBO {train_elbo:9.3f}  validation ELBO "
            f"{shown}  ({seconds:.1f} s){'  *best*' if improved else ''}")
        elapsed = time.perf_counter() - began
        stop = time_budget is not None and epoch < num_epochs and \
            elapsed + (elapsed / (epoch - start_epoch)) > time_budget
        if group is not None:
            stop = group.broadcast(stop)   # the first process's clock decides for all
        if stop:
            log(f"stopping after epoch {epoch} of {num_epochs}: another epoch would exceed the "
                f"time budget of {time_budget / 60:g} minutes; continue with --resume")
            break
    return _summarize(model, guide, dataset, config, out_dir, metrics, best, group, run)


def _silent(*args, **kwargs):
    pass


class TrainingDiverged(ValueError):
    """The training objective or the parameters left the finite numbers, or ran away."""


class DivergenceWatch:
    """Stops a run whose training objective runs away: a non-finite loss, or an ELBO per data
    point below ``factor`` times the first one seen (which, at the start of training, is
    already as bad as an untrained model gets). It looks at the losses only when they are read
    anyway (every ``CHECK_EVERY`` steps)."""

    def __init__(self, learning_rate, factor=100.0):
        self.learning_rate, self.factor = learning_rate, factor
        self.first = None

    def check(self, elbo_per_point, epoch, step):
        if not math.isfinite(elbo_per_point):
            self._stop(epoch, step, f"the training objective became {elbo_per_point}")
        if self.first is None:
            self.first = elbo_per_point
        elif elbo_per_point < self.factor * min(self.first, -1.0):
            self._stop(epoch, step, f"the training ELBO fell to {elbo_per_point:.3g} nats per "
                       f"data point, from {self.first:.3g} at the start")

    def _stop(self, epoch, step, what):
        raise TrainingDiverged(
            f"training diverged in epoch {epoch} (by step {step}): {what}; lower "
            f"--learning-rate (now {self.learning_rate:g}) and train again (files of finished "
            "epochs are intact)")


def _summarize(model, guide, dataset, config, out_dir, metrics, best, group=None, run=None):
    """Score the best-on-validation parameters on the test split and write summary.json."""
    main = group is None or group.is_main
    states = None
    if main:
        # Only the states are needed: read without building (nothing the run names is
        # imported), and only from a best.pt of this run.
        best_checkpoint = read_checkpoint(os.path.join(out_dir, BEST), map_location="cpu")
        if run is not None and best_checkpoint.get("run") not in (None, run):
            raise RunFolderError(f"{best_checkpoint['path']} belongs to another run (its run "
                                 "identity differs); move it away and --resume")
        states = (best_checkpoint["model"], best_checkpoint["guide"], best_checkpoint["path"])
    if group is not None:
        # Only the first process can read the run folder (the others may be on other machines).
        states = group.broadcast(states)
    with torch.random.fork_rng(devices=[]):
        # Restore afterwards so that scoring does not perturb the generator state of the run.
        load_state(model, states[0], "model", states[2])
        load_state(guide, states[1], "guide", states[2])
        test_elbo = mean_elbo(model, guide, dataset.test, group=group)
    summary = {
        "test_elbo": test_elbo,
        "best_epoch": best["epoch"],
        "best_validation_elbo": best["validation_elbo"],
        "epochs": len(metrics),
        "seconds_per_epoch": sum(row["seconds"] for row in metrics) / max(1, len(metrics)),
        "num_train": len(dataset.train),
        "num_test": len(dataset.test),
        **({"run": run} if run is not None else {}),
    }
    if main:
        atomic_write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary

"""How fast the literal Pyro story trains and scores, against hand-written PyTorch of the same
computation, measured side by side in one process.

- **Training**: the project's step (``inference.training.TrainingStep``, exactly what
  ``train.py`` runs) against a hand-written PyTorch step of the same architecture, batch, data,
  estimator (one reparameterized draw of z, log p(x|z) + log p(z) - log q(z|x)) and optimizer
  (Adam with the same settings), on the same parameters. Blocks of steps alternate between the
  two, after a warm-up; the device is synchronized before every clock read.
- **Evaluation**: the ``importance`` estimator against a hand-written batched torch estimate of
  the same model (log-mean-exp of K log weights per point, in chunks of the same size); with
  ``--variants jit,plain``, also with its chunks computed without the JIT.
- **AIS**: the ``ais`` estimator started from the guide (C chains, T steps of L leapfrog steps)
  against its floor, the gradient evaluations it cannot do without: a hand-written decoder
  forward and backward (Bernoulli log-likelihood, gradient with respect to z) over the same
  points x chains, T x L + 1 times (one per leapfrog position, and the start).
- **Host-device synchronizations**: operations that make the host wait for the device (reading
  a value, data-dependent shapes), counted per training step, per evaluation chunk and per AIS
  step. On a CPU nothing waits, but the same operations would on a GPU, so they are counted
  here too.

It prints its tables to stdout and writes no file unless told to: the numbers as JSON to
``--out``, and a dated Markdown section to ``--markdown``, appended to the end of that file
(made if absent; what it held is kept, and the file is replaced atomically, so an interrupted
run leaves it as it was). Times are wall-clock seconds on this machine; compare ratios across
machines, absolute times only on the same device::

    python scripts/benchmark.py --quick              # about a minute on two CPU cores
    python scripts/benchmark.py --device cuda --data-dir ../data
    python scripts/benchmark.py --quick --markdown docs/results/benchmarks/history.md

(Over 300 lines: the hand-written PyTorch reference of the same computation lives here, beside
the timing of the project's step and estimate against it.)
"""

import math
import platform
import statistics
import time

import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from evaluation.estimators import estimate
from evaluation import command_line as cli
from evaluation.command_line import parsers
from evaluation.reporting.tables import Column, fixed, render
from inference.build import build, resolve
from models.data import load_dataset
from evaluation.diagnostics import WeightSummary
from inference.log_weights import (chunk_jit, chunks, default_max_batch_elements,
                                   log_weight_chunks)
from inference.training import TrainingStep, adam
from inference.training.gradients import LossGradients
from models.utilities.entry_points import entry_point
from models.base.config import ConfigError, RunConfig
from models.utilities.device_syncs import SyncCounter
from models.utilities.files import atomic_write_json, atomic_write_text

NUM_DATA = 50000   # the training split of MNIST: the N of the minibatch scale, and one epoch
#: how the project's step computes its loss: jit (train.py's default; on CUDA its loss and
#: gradients replay a CUDA graph), no-graph (--no-cuda-graph: the JIT without the graph), plain
#: (--no-jit), and an alternative measured but not used by train.py: the step's gradients from
#: torch.compile of the plain loss. Every variant is inference.training.TrainingStep.
VARIANTS = ("jit", "no-graph", "plain", "compile")


class HandVAE(torch.nn.Module):
    """The default story written by hand: MLP encoder and decoder, a diagonal Gaussian q(z|x),
    p(z) = N(0, I), Bernoulli p(x|z) on logits."""

    def __init__(self, x_dim, hidden_dims, z_dim):
        super().__init__()
        self.z_dim = z_dim

        def mlp(sizes):
            layers = []
            for n_in, n_out in zip(sizes[:-1], sizes[1:]):
                layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
            return torch.nn.Sequential(*layers[:-1])

        self.encoder = mlp([x_dim, *hidden_dims, 2 * z_dim])
        self.decoder = mlp([z_dim, *reversed(hidden_dims), x_dim])

    def log_weights(self, x, num_samples):
        """(K, N) log w = log p(x|z) + log p(z) - log q(z|x) for K reparameterized draws."""
        z_loc, raw = self.encoder(x).split(self.z_dim, -1)
        z_scale = torch.nn.functional.softplus(raw) + 1e-4
        eps = torch.randn((num_samples,) + z_loc.shape, device=x.device, dtype=x.dtype)
        z = z_loc + z_scale * eps
        log_q = (-0.5 * eps ** 2 - z_scale.log()).sum(-1)
        log_prior = (-0.5 * z ** 2).sum(-1)
        logits = self.decoder(z)
        log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum(-1)
        # The normalizers of log p(z) and log q(z|x) cancel.
        return log_likelihood + log_prior - log_q

    def loss(self, x, num_data):
        return -self.log_weights(x, 1).sum() * (num_data / x.shape[0])


def copy_weights(model, guide, hand):
    """Give the hand-written VAE the project's parameters, so both compute the same numbers."""
    project = [m for m in guide.encoder if isinstance(m, torch.nn.Linear)] + \
        [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    mine = [m for m in hand.encoder if isinstance(m, torch.nn.Linear)] + \
        [m for m in hand.decoder if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for source, target in zip(project, mine):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)


@torch.no_grad()
def hand_importance(hand, x, num_samples, max_batch_elements):
    """log p-hat(x_n) = log mean_k w_kn, chunked like the project's estimator."""
    result = torch.empty(x.shape[0], device=x.device)
    for data, particles in chunks(x.shape[0], num_samples, max_batch_elements):
        if particles.stop - particles.start != num_samples:
            raise ValueError("the hand-written estimate keeps whole particle columns in a chunk")
        log_weights = hand.log_weights(x[data], num_samples)
        result[data] = torch.logsumexp(log_weights, 0) - math.log(num_samples)
    return result


# ---------------------------------------------------------------------------------------------
# Measuring

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(functions, blocks, device):
    """{name: [seconds of each block]}: the blocks of the functions alternate, in an order that
    reverses from block to block, so that drifts of the machine hit all of them alike."""
    seconds = {name: [] for name in functions}
    names = list(functions)
    for block in range(blocks):
        for name in names if block % 2 == 0 else names[::-1]:
            synchronize(device)
            start = time.perf_counter()
            functions[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


class PeakMemory(TorchDispatchMode):
    """The most memory a block holds above what it started with: on CUDA the allocator's peak;
    on the CPU the heap in use (glibc's ``mallinfo2``: small blocks plus mmapped ones), sampled
    after every tensor operation. NaN where neither is available."""

    def __init__(self, device):
        super().__init__()
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return self
        self.before = self.top = _heap_in_use()
        return super().__enter__()

    def __exit__(self, *exc_info):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.before
            return None
        self.peak = self.top - self.before
        return super().__exit__(*exc_info)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        self.top = max(self.top, _heap_in_use())
        return result


def _heap_in_use():
    """Bytes of the C heap in use, or NaN without glibc's mallinfo2."""
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd
    except (OSError, AttributeError):
        return math.nan


def summary(seconds, per_block):
    """Median and minimum seconds per unit over the blocks."""
    per_unit = [value / per_block for value in seconds]
    return {"median": statistics.median(per_unit), "min": min(per_unit)}


# ---------------------------------------------------------------------------------------------
# The benchmarks

def training_benchmark(args, device, dataset, batch_size, variant):
    """The project's training step against the hand-written one at ``batch_size``."""
    config = resolve(RunConfig.from_dict({
        "model": {"x_dim": dataset.x_dim, "z_dim": args.z_dim,
                  "architecture": {"name": "mlp", "options": {"hidden_dims": args.hidden_dims}}},
        "training": {"batch_size": batch_size, "jit": variant in ("jit", "no-graph"),
                     "cuda_graph": None if variant == "jit" else False}}))
    pyro.clear_param_store()
    model, guide = build(config)
    model, guide = model.to(device), guide.to(device)
    hand = HandVAE(dataset.x_dim, args.hidden_dims, args.z_dim).to(device)
    copy_weights(model, guide, hand)
    step = TrainingStep(model, guide, config.training, log=lambda line: None)
    hand_optimizer = adam(hand.parameters(), config.training.learning_rate)
    if variant == "compile":
        step = compiled_step(step, model, guide)
    batches = [dataset.train.data(torch.randint(0, len(dataset.train), (batch_size,),
                                                device=device))
               for _ in range(args.steps)]

    def hand_step(x):
        hand_optimizer.zero_grad(set_to_none=True)
        loss = hand.loss(x, NUM_DATA)
        loss.backward()
        hand_optimizer.step()
        return loss.detach()

    # Warm up: the JIT traces at the first step, and on CUDA train.py's step captures its
    # graph at the fourth.
    for x in batches[:5]:
        step(x, NUM_DATA), hand_step(x)
    functions = {"project": lambda: [step(x, NUM_DATA) for x in batches],
                 "hand-written": lambda: [hand_step(x) for x in batches]}
    seconds = interleaved(functions, args.blocks, device)
    counter = SyncCounter()
    with counter:
        for x in batches[:5]:
            step(x, NUM_DATA)
    ours, theirs = summary(seconds["project"], args.steps), summary(seconds["hand-written"],
                                                                    args.steps)
    ratios = [a / b for a, b in zip(seconds["project"], seconds["hand-written"])]
    return {"batch_size": batch_size, "variant": variant,
            "project_step_ms": 1000 * ours["median"], "project_step_min_ms": 1000 * ours["min"],
            "hand_step_ms": 1000 * theirs["median"], "hand_step_min_ms": 1000 * theirs["min"],
            "ratio": ours["median"] / theirs["median"],
            "ratio_of_blocks": statistics.median(ratios),
            "steps_per_second": 1 / ours["median"], "syncs_per_step": counter.count / 5,
            "epoch_seconds_estimate": math.ceil(NUM_DATA / batch_size) * ours["median"]}


def compiled_step(step, model, guide):
    """The project's training step with its gradients taken from the plain loss compiled by
    ``torch.compile`` instead of the JIT's graph: measured as an alternative, not used by
    train.py."""
    loss = step.loss.plain_loss
    compiled = torch.compile(lambda x, num_data: loss(model, guide, x, num_data=num_data))
    step.gradients = LossGradients(lambda x, num_data, kl_weight: compiled(x, num_data))
    return step


def epoch_benchmark(args, device, dataset, batch_size):
    """One epoch over the whole training split (50,000 MNIST images), the project's step."""
    config = resolve(RunConfig.from_dict({
        "model": {"x_dim": dataset.x_dim, "z_dim": args.z_dim,
                  "architecture": {"name": "mlp", "options": {"hidden_dims": args.hidden_dims}}},
        "training": {"batch_size": batch_size}}))
    pyro.clear_param_store()
    model, guide = build(config)
    model, guide = model.to(device), guide.to(device)
    step = TrainingStep(model, guide, config.training, log=lambda line: None)
    num_data = len(dataset.train)
    for x in dataset.train.batches(batch_size, shuffle=True):
        step(x, num_data)                       # the traces, and a warm machine
        break
    synchronize(device)
    start = time.perf_counter()
    for x in dataset.train.batches(batch_size, shuffle=True):
        step(x, num_data)
    synchronize(device)
    return {"batch_size": batch_size, "images": num_data, "seconds": time.perf_counter() - start}


def evaluation_models(args, device, dataset):
    """The default story of ``--z-dim`` and ``--hidden-dims`` at its initial parameters, in
    evaluation mode: the project's model and guide, and the hand-written VAE given their
    parameters."""
    config = resolve(RunConfig.from_dict({
        "model": {"x_dim": dataset.x_dim, "z_dim": args.z_dim,
                  "architecture": {"name": "mlp", "options": {"hidden_dims": args.hidden_dims}}}}))
    pyro.clear_param_store()
    model, guide = build(config)
    model, guide = model.to(device).eval(), guide.to(device).eval()
    hand = HandVAE(dataset.x_dim, args.hidden_dims, args.z_dim).to(device).eval()
    copy_weights(model, guide, hand)
    return model, guide, hand


def evaluation_benchmark(args, device, dataset, num_samples, variant="jit"):
    """The importance estimator against the hand-written batched estimate at K; its chunks
    traced by the JIT (as the estimators compute them) or, for the ``plain`` variant, not."""
    jit = None if variant == "jit" else False
    model, guide, hand = evaluation_models(args, device, dataset)
    x, _ = dataset.select("test", args.eval_data)
    budget = default_max_batch_elements(x.shape[1], device)
    num_chunks = len(list(chunks(x.shape[0], num_samples, budget)))
    results = {}

    def ours():
        with chunk_jit(jit):
            results["project"] = estimate("importance", model, guide, x, num_samples,
                                          max_batch_elements=budget).estimate

    def theirs():
        results["hand-written"] = hand_importance(hand, x, num_samples, budget)

    ours(), theirs()                             # warm up
    memory = {}
    for name, function in (("project", ours), ("hand-written", theirs)):
        with PeakMemory(device) as peak:
            function()
        memory[name] = peak.peak
    seconds = interleaved({"project": ours, "hand-written": theirs}, args.eval_blocks, device)
    # Inside the chunks, in the steady state (after the chunk shapes were traced), and in all
    # (the final read-out, and the traces).
    inside, total = SyncCounter(), SyncCounter()
    counted = 0
    with torch.no_grad(), pyro.validation_enabled(False):
        summary_of_weights = WeightSummary(x.shape[0], num_samples, device)
        tiles = iter(log_weight_chunks(model, guide, x, num_samples, max_batch_elements=budget,
                                       jit=jit))
        # The first chunk (and a last one of another shape) are traced; the rest are counted.
        for index in range(num_chunks):
            steady = 1 <= index < num_chunks - 1
            if steady:
                inside.__enter__()
            data, _, log_weights = next(tiles)
            summary_of_weights.update(data, log_weights)
            if steady:
                inside.__exit__(None, None, None)
                counted += 1
    with total, chunk_jit(jit):
        estimate("importance", model, guide, x, num_samples, max_batch_elements=budget)
    pairs = x.shape[0] * num_samples
    mine, hand_seconds = summary(seconds["project"], 1), summary(seconds["hand-written"], 1)
    difference = (results["project"].double().cpu() - results["hand-written"].double().cpu())
    return {"num_samples": num_samples, "variant": variant, "num_data": x.shape[0],
            "chunks": num_chunks,
            "project_seconds": mine["median"], "hand_seconds": hand_seconds["median"],
            "ratio": mine["median"] / hand_seconds["median"],
            "ratio_of_blocks": statistics.median(
                a / b for a, b in zip(seconds["project"], seconds["hand-written"])),
            "pairs_per_second": pairs / mine["median"],
            "hand_pairs_per_second": pairs / hand_seconds["median"],
            "project_peak_bytes": memory["project"], "hand_peak_bytes": memory["hand-written"],
            # The two estimates use different random draws: they agree within Monte Carlo error.
            "mean_estimate_difference": difference.mean().item(),
            "syncs_per_chunk": inside.count / max(1, counted),
            "syncs_per_estimate": total.count}


def hand_gradients(hand, x, num_chains, num_evaluations):
    """The floor of AIS: ``num_evaluations`` gradients of log p(x | z) with respect to z through
    the hand-written decoder, for ``num_chains`` states z of every point of x at once."""
    z = torch.randn(num_chains, *x.shape[:-1], hand.z_dim, device=x.device, dtype=x.dtype)
    target = x.expand(num_chains, *x.shape)
    for _ in range(num_evaluations):
        z = z.detach().requires_grad_(True)
        log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(
            hand.decoder(z), target, reduction="sum")
        gradient, = torch.autograd.grad(log_likelihood, z)
        # a step of the same size as a leapfrog step keeps z in the same range
        z = z + 1e-3 * gradient
    return z


def ais_benchmark(args, device, dataset):
    """AIS from the guide against its floor (:func:`hand_gradients`), on ``--ais-data`` test
    images with the settings of ``--ais-chains``, ``--ais-steps`` and ``--ais-leapfrog``."""
    model, guide, hand = evaluation_models(args, device, dataset)
    x, _ = dataset.select("test", args.ais_data)
    chains, steps, leapfrog = args.ais_chains, args.ais_steps, args.ais_leapfrog
    evaluations = steps * leapfrog + 1
    options = {"ais_steps": steps, "ais_leapfrog": leapfrog, "ais_start": "guide"}

    def ours():
        estimate("ais", model, guide, x, chains, **options)

    def floor():
        hand_gradients(hand, x, chains, evaluations)

    ours(), floor()                              # warm up
    seconds = interleaved({"project": ours, "floor": floor}, args.ais_blocks, device)
    syncs = SyncCounter()
    with syncs:
        ours()
    mine, bare = summary(seconds["project"], 1), summary(seconds["floor"], 1)
    return {"num_data": x.shape[0], "chains": chains, "steps": steps, "leapfrog": leapfrog,
            "project_seconds": mine["median"], "floor_seconds": bare["median"],
            "ratio": mine["median"] / bare["median"],
            "ratio_of_blocks": statistics.median(
                a / b for a, b in zip(seconds["project"], seconds["floor"])),
            "gradients_per_second": x.shape[0] * chains * evaluations / mine["median"],
            "syncs_per_step": syncs.count / steps, "syncs_per_estimate": syncs.count}


# ---------------------------------------------------------------------------------------------
# Reporting

def environment(device):
    return {"device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "dtype": str(torch.get_default_dtype()).replace("torch.", ""),
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "pyro": pyro.__version__,
            "date": time.strftime("%Y-%m-%d")}


TRAINING_COLUMNS = (Column("batch_size", "batch", str), Column("variant", "loss", str),
                    Column("project_step_ms", "project ms/step", fixed(2)),
                    Column("hand_step_ms", "hand-written ms/step", fixed(2)),
                    Column("ratio", "ratio", fixed(3)),
                    Column("ratio_of_blocks", "paired ratio", fixed(3)),
                    Column("steps_per_second", "steps/s", fixed(1)),
                    Column("syncs_per_step", "syncs/step", fixed(1)),
                    Column("epoch_seconds_estimate", "epoch s (50,000 images)", fixed(1)))
EVALUATION_COLUMNS = (Column("num_samples", "K", str), Column("variant", "chunks", str),
                      Column("num_data", "points", str),
                      Column("project_seconds", "project s", fixed(3)),
                      Column("hand_seconds", "hand-written s", fixed(3)),
                      Column("ratio", "ratio", fixed(3)),
                      Column("ratio_of_blocks", "paired ratio", fixed(3)),
                      Column("pairs_per_second", "points x samples / s", fixed(0)),
                      Column("project_peak_bytes", "peak MB", lambda v: "" if v != v
                             else f"{v / 2 ** 20:.0f}"),
                      Column("hand_peak_bytes", "hand peak MB", lambda v: "" if v != v
                             else f"{v / 2 ** 20:.0f}"),
                      Column("syncs_per_chunk", "syncs/chunk", fixed(1)),
                      Column("syncs_per_estimate", "syncs at read-out", str))
AIS_COLUMNS = (Column("num_data", "points", str), Column("chains", "chains", str),
               Column("steps", "steps", str), Column("leapfrog", "leapfrog", str),
               Column("project_seconds", "project s", fixed(3)),
               Column("floor_seconds", "floor s", fixed(3)),
               Column("ratio", "ratio", fixed(3)),
               Column("ratio_of_blocks", "paired ratio", fixed(3)),
               Column("gradients_per_second", "points x chains x gradients / s", fixed(0)),
               Column("syncs_per_step", "syncs/step", fixed(2)),
               Column("syncs_per_estimate", "syncs per estimate", str))


def markdown(report):
    env, settings = report["environment"], report["settings"]
    lines = [f"## {env['date']}: {env['device']} ({env['device_name']}), {env['threads']} "
             f"threads, {env['dtype']}, torch {env['torch']}, pyro {env['pyro']}"
             f"{', quick' if report['quick'] else ''}", "",
             f"Batch sizes {settings['batch_sizes']}, K {settings['num_samples']}, "
             f"{settings['eval_data']} test images, MLP {settings['hidden_dims']}, z_dim "
             f"{settings['z_dim']}, seed {settings['seed'] or 0}; medians of {report['blocks']} "
             f"interleaved blocks of {report['steps']} steps (training) and of "
             f"{settings['eval_blocks']} (evaluation).", "",
             render(report["training"], TRAINING_COLUMNS, "markdown")]
    for failure in report.get("failed", []):
        lines += [f"The {failure['variant']} variant at batch {failure['batch_size']} did not "
                  f"run: {failure['error']}.", ""]
    if report.get("epoch"):
        epoch = report["epoch"]
        lines += [f"One full epoch of {epoch['images']} images at batch {epoch['batch_size']}: "
                  f"{epoch['seconds']:.1f} s.", ""]
    lines += [render(report["evaluation"], EVALUATION_COLUMNS, "markdown")]
    if report.get("ais"):
        lines += ["", "AIS from the guide against its floor (a hand-written decoder forward and "
                  "backward, steps x leapfrog + 1 times):", "",
                  render(report["ais"], AIS_COLUMNS, "markdown")]
    return "\n".join(lines) + "\n"


def append_markdown(path, text):
    """Add ``text`` at the end of the file ``path`` (made if absent), after a blank line. What
    it held is kept byte for byte: the old text and the new go to a temporary file that then
    replaces ``path`` (``models.utilities.files``), so an interrupted run leaves the file as it
    was."""
    try:
        with open(path, encoding="utf-8") as handle:
            earlier = handle.read()
    except FileNotFoundError:
        earlier = ""
    separator = "" if not earlier else "\n" if earlier.endswith("\n") else "\n\n"
    atomic_write_text(path, earlier + separator + text)


def _main(args):
    cli.check_positive(args, "blocks", "steps", "eval_blocks", "eval_data", "ais_data",
                       "ais_chains", "ais_steps", "ais_leapfrog", "ais_blocks")
    for name in args.variants:
        if name not in VARIANTS:
            raise ConfigError(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
    if args.quick:
        args.num_samples = args.num_samples or [1000]
        args.blocks, args.steps = min(args.blocks, 7), min(args.steps, 20)
        args.ais_steps, args.ais_blocks = min(args.ais_steps, 20), min(args.ais_blocks, 3)
    args.batch_sizes = args.batch_sizes or [128, 1024]
    args.num_samples = args.num_samples or [1000, 5000]
    if min(args.batch_sizes + args.num_samples) < 1:
        raise ConfigError("--batch-sizes and --num-samples need positive numbers")
    device = cli.start(args)
    data = {"dataset": "mnist" if args.data_dir else "mnist-subset", "data_dir": args.data_dir}
    dataset = load_dataset(RunConfig.from_dict({"data": data}), device)
    report = {"environment": environment(device), "quick": args.quick,
              "settings": {key: value for key, value in vars(args).items()
                           if key not in ("out", "markdown", "no_progress")},
              "blocks": args.blocks, "steps": args.steps,
              "training": [], "evaluation": [], "ais": []}
    for batch_size in args.batch_sizes:
        for variant in args.variants:
            try:
                row = training_benchmark(args, device, dataset, batch_size, variant)
            except Exception as error:  # an alternative that cannot run here is reported
                if variant in ("jit", "plain"):
                    raise
                message = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                print(f"training, batch {batch_size}, {variant}: failed ({message})")
                report.setdefault("failed", []).append({"batch_size": batch_size,
                                                        "variant": variant, "error": message})
                continue
            report["training"].append(row)
            print(f"training, batch {batch_size}, {variant}: {row['project_step_ms']:.2f} ms "
                  f"against {row['hand_step_ms']:.2f} ms hand-written (ratio "
                  f"{row['ratio']:.3f}), {row['syncs_per_step']:g} syncs per step", flush=True)
    if args.data_dir and not args.quick:
        report["epoch"] = epoch_benchmark(args, device, dataset, args.batch_sizes[0])
        print(f"one epoch of {report['epoch']['images']} images: "
              f"{report['epoch']['seconds']:.1f} s", flush=True)
    for num_samples in args.num_samples:
        for variant in [name for name in args.variants if name in ("jit", "plain")]:
            row = evaluation_benchmark(args, device, dataset, num_samples, variant)
            report["evaluation"].append(row)
            print(f"importance, K={num_samples}, {variant}, {row['num_data']} points: "
                  f"{row['project_seconds']:.3f} s against {row['hand_seconds']:.3f} s "
                  f"hand-written (ratio {row['ratio']:.3f}), {row['syncs_per_chunk']:g} syncs "
                  f"per chunk, {row['syncs_per_estimate']} when reading out the estimate",
                  flush=True)
    if not args.no_ais:
        row = ais_benchmark(args, device, dataset)
        report["ais"].append(row)
        print(f"ais from the guide, {row['num_data']} points x {row['chains']} chains x "
              f"{row['steps']} steps x {row['leapfrog']} leapfrog: {row['project_seconds']:.3f} s "
              f"against a floor of {row['floor_seconds']:.3f} s (ratio {row['ratio']:.3f}), "
              f"{row['syncs_per_step']:g} syncs per step", flush=True)
    print(render(report["training"], TRAINING_COLUMNS))
    print(render(report["evaluation"], EVALUATION_COLUMNS))
    if report["ais"]:
        print(render(report["ais"], AIS_COLUMNS))
    if args.out:
        atomic_write_json(args.out, report)
    if args.markdown:
        append_markdown(args.markdown, markdown(report))
        print(f"appended the tables to {args.markdown}")
    return report


main = entry_point(_main, parsers.benchmark)


if __name__ == "__main__":
    main()

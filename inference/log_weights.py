"""Per-data-point log importance weights for any Pyro model and guide of the project's convention.

The convention: the model and the guide take the data ``x`` of shape (N, x_dim) as their first
argument; every latent site is sampled inside a plate named ``"data"`` that indexes the data
points; the observed site(s) sit in the same plate. For K particles this module computes

    log w[k, n] = log p(x_n, z_kn) - log q(z_kn | x_n),      z_kn ~ q(z | x_n),

one weight per particle *and per data point*. (Pyro's ``Importance`` and
``vectorized_importance_weights`` sum over the data plate and give one weight per particle for the
whole batch.) Particles are vectorized with an outer ``pyro.plate("particles", K)`` to the left of
every plate of the model, and the (particle, data point) grid is cut into chunks of at most
``max_batch_elements`` pairs, so that K = 5000 over a whole test set runs in bounded memory.

Nothing here disables gradients: callers that only evaluate wrap calls in ``torch.no_grad()``;
objectives such as the IWAE bound differentiate through these weights.

(Over 300 lines: the chunking, the per-point reduction of every site, the graphs the JIT traces
of a chunk and the seeding of each chunk all serve the one computation of log w[k, n].)
"""

import collections
import contextlib
import math
import os
import warnings

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import is_validation_enabled
from tqdm.auto import tqdm
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from models.base.config import derived_seed

DATA_PLATE = "data"
PARTICLE_PLATE = "particles"
# Memory for one chunk on the CPU, in bytes; about 16 float32 values per data feature live at once.
DEFAULT_CHUNK_BYTES = 2 ** 28
#: on a GPU a chunk may take this share of the memory that is free when the estimate starts
GPU_CHUNK_SHARE = 0.25


def chunk_bytes(device=None):
    """The memory one chunk of log weights may use on ``device``: 256 MB on the CPU; on a GPU
    a quarter of its free memory (large chunks keep a GPU busy)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(DEFAULT_CHUNK_BYTES, int(GPU_CHUNK_SHARE * free))
    return DEFAULT_CHUNK_BYTES


def default_max_batch_elements(x_dim, device=None):
    """How many (particle, data point) pairs one chunk holds by default for data of ``x_dim``
    features on ``device``."""
    return max(1, chunk_bytes(device) // (16 * 4 * max(1, int(x_dim))))


def check_num_samples(num_samples):
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"the number of samples K must be a positive integer, got {num_samples}")
    return int(num_samples)


def points_per_chunk(num_samples, max_batch_elements):
    """How many data points one chunk of ``num_samples`` particles each holds: the step of the
    grid of chunks, which starts at the first data point whatever the number of points (so
    that the points of a chunk are the same in a part of the data as in the whole)."""
    max_batch_elements = int(max_batch_elements)
    if max_batch_elements < 1:
        raise ValueError(f"max_batch_elements must be at least 1, got {max_batch_elements}")
    return max(1, max_batch_elements // int(num_samples))


def chunks(num_data, num_samples, max_batch_elements):
    """Yield (data slice, particle slice) pairs that tile the K x N grid in chunks of at most
    ``max_batch_elements`` pairs: whole particle columns for as many data points as fit, or, when
    K alone exceeds the budget, one data point at a time in blocks of particles."""
    data_step, particle_step = _steps(num_data, num_samples, max_batch_elements)
    for start in range(0, num_data, data_step):
        for k_start in range(0, num_samples, particle_step):
            yield (slice(start, min(start + data_step, num_data)),
                   slice(k_start, min(k_start + particle_step, num_samples)))


def tile_shapes(num_data, num_samples, max_batch_elements):
    """{(points, particles): how many tiles of :func:`chunks` have that shape}, counted without
    listing the tiles (at most four shapes: full or last block of points, full or last block of
    particles)."""
    if num_data == 0:
        return collections.Counter()
    data_step, particle_step = _steps(num_data, num_samples, max_batch_elements)
    counts = collections.Counter()
    for points, data_blocks in _blocks(num_data, data_step):
        for particles, particle_blocks in _blocks(num_samples, particle_step):
            counts[points, particles] += data_blocks * particle_blocks
    return counts


def _steps(num_data, num_samples, max_batch_elements):
    """(points, particles) of a full tile: whole particle columns for as many points as fit,
    or, when K alone exceeds the budget, one point at a time in blocks of particles."""
    max_batch_elements = int(max_batch_elements)
    data_step = min(num_data, points_per_chunk(num_samples, max_batch_elements))
    particle_step = num_samples if max_batch_elements >= num_samples else max_batch_elements
    return data_step, particle_step


def _blocks(total, step):
    """[(size, how many blocks of that size)] of ``total`` items cut into blocks of ``step``."""
    full, rest = divmod(total, step)
    return [(size, count) for size, count in ((step, full), (rest, 1)) if size and count]


def plate_nesting(model, guide, x):
    """The number of batch dimensions the plates of the model and the guide use (found by
    running them on one data point): the particle plate goes to their left."""
    nesting = max_plate_nesting(model, x)
    return nesting if guide is None else max(nesting, max_plate_nesting(guide, x))


def max_plate_nesting(fn, x):
    """The number of batch dimensions the plates of ``fn`` use, found by running it on one point."""
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(fn).get_trace(x[:1])
    dims = [-frame.dim for site in trace.nodes.values() if site["type"] == "sample"
            for frame in site["cond_indep_stack"] if frame.vectorized]
    return max(dims, default=0)


def _site_log_prob(site, particle_dim, num_particles, num_data):
    """The log density of one site reduced to shape (K, N): summed over every batch dimension
    other than the particle plate and the data plate."""
    log_prob = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
    data_dims = [f.dim for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
    if not data_dims:
        raise ValueError(
            f"site {site['name']!r} is not inside the {DATA_PLATE!r} plate; per-data-point "
            f"weights need every sample site inside pyro.plate({DATA_PLATE!r}, ...)")
    while log_prob.dim() < -particle_dim:
        log_prob = log_prob.unsqueeze(0)
    keep = (log_prob.dim() + particle_dim, log_prob.dim() + data_dims[0])
    others = [d for d in range(log_prob.dim()) if d not in keep]
    if others:
        log_prob = log_prob.sum(others, keepdim=True)
    log_prob = log_prob.reshape(log_prob.shape[keep[0]], log_prob.shape[keep[1]])
    return log_prob.expand(num_particles, num_data)


class _Scorer:
    """Runs a model or guide inside a particle plate placed to the left of all of its plates and
    reduces the log density of each sample site to shape (K, N)."""

    def __init__(self, model, guide, x, nesting=None):
        self.model, self.guide = model, guide
        if nesting is None:
            nesting = plate_nesting(model, guide, x)
        self.particle_dim = -nesting - 1

    def run(self, fn, x, num_particles, replay=None, condition=None):
        """Trace ``fn(x)`` for K particles; return the trace, {site: (K, N) log density} and the
        names of the sites that were observed in the program itself (conditioned ones excluded)."""
        if condition is not None:
            fn = poutine.condition(fn, data=condition)
        if replay is not None:
            fn = poutine.replay(fn, trace=replay)
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=self.particle_dim):
            trace = prune_subsample_sites(poutine.trace(fn).get_trace(x))
        log_probs, observed = {}, set()
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            log_probs[name] = _site_log_prob(site, self.particle_dim, num_particles, x.shape[0])
            if site["is_observed"] and not (condition and name in condition):
                observed.add(name)
        return trace, log_probs, observed


def _total(log_probs, names, like):
    total = torch.zeros_like(like)
    for name in names:
        total = total + log_probs[name]
    return total


def _check_data(x):
    if not torch.is_tensor(x) or x.dim() < 2:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected data as a tensor of shape (num_data, x_dim), got {shape}")
    # Reading the check's result waits for the device; callers that validated their data once
    # run with Pyro's validation off and skip it.
    if is_validation_enabled() and x.is_floating_point() and not x.isfinite().all():
        raise ValueError("data contains NaN or infinite values; remove or impute them first")


def log_weight_chunks(model, guide, x, num_samples, *, max_batch_elements=None,
                      proposal="guide", mixture_weight=0.5, progress=False, nesting=None,
                      jit=None):
    """Yield ``(data_slice, particle_slice, log_weights)`` chunk by chunk: the log importance
    weights of the particles ``particle_slice`` for the data points ``data_slice``, a tensor of
    shape (particles, points), with at most ``max_batch_elements`` pairs per chunk. Together the
    chunks tile the K x N grid once, so K can be far larger than memory holds when the caller
    reduces each chunk as it comes (see ``evaluation.diagnostics.WeightSummary``).

    The arguments are those of :func:`log_importance_weights`; ``progress`` shows a progress
    bar when there is more than one chunk; ``nesting`` is :func:`plate_nesting`, when the
    caller knows it already. ``jit``: True computes the chunks through graphs traced by the JIT
    (an error where the model or guide cannot be traced), False never does, and None (the
    default) does when gradients and Pyro's validation are off (as in the estimators) and there
    are more than two chunks, falling back to the plain computation with a
    :class:`JitFallbackWarning` where it cannot (:func:`chunk_jit` sets the default). Both give
    the same numbers.
    """
    num_samples = check_num_samples(num_samples)
    _check_data(x)
    if proposal not in ("guide", "prior", "mixture"):
        raise ValueError(f"unknown proposal {proposal!r}; valid: guide, prior, mixture")
    if proposal == "mixture" and not 0.0 < mixture_weight < 1.0:
        raise ValueError(f"the mixture weight a must lie in (0, 1), got {mixture_weight}")
    if max_batch_elements is None:
        max_batch_elements = default_max_batch_elements(x[0].numel(), x.device)
    scorer = _Scorer(model, guide, x, nesting)
    # The tiles are counted, not listed: K = 10^9 makes millions of them.
    shapes = tile_shapes(x.shape[0], num_samples, max_batch_elements)
    num_tiles = sum(shapes.values())
    if jit is None and _JIT_DEFAULTS:
        jit = _JIT_DEFAULTS[-1]
    insist = jit is True
    if jit is None:
        # Traced where the weights need no gradients and Pyro's checks (which read values) are
        # off, as in the estimators; a shape that comes once or twice is not worth a trace.
        jit = (not torch.is_grad_enabled() and not is_validation_enabled()
               and x.device.type != "meta" and num_tiles > 2)
    traced = _TracedChunks(scorer, proposal, mixture_weight, insist) if jit else None
    bar = tqdm(chunks(x.shape[0], num_samples, max_batch_elements), total=num_tiles,
               desc="log weights", unit="chunk", leave=False, dynamic_ncols=True,
               disable=not progress or num_tiles < 2)
    for data_slice, particle_slice in bar:
        k = particle_slice.stop - particle_slice.start
        seed_chunk(data_slice.start, particle_slice.start)
        x_chunk = x[data_slice]
        if traced is not None and shapes[_tile_shape((data_slice, particle_slice))] > 1:
            log_weights = traced(x_chunk, k)
        else:
            log_weights = _chunk_log_weights(scorer, x_chunk, k, proposal, mixture_weight)
        yield data_slice, particle_slice, log_weights


def _tile_shape(tile):
    data_slice, particle_slice = tile
    return data_slice.stop - data_slice.start, particle_slice.stop - particle_slice.start


class JitFallbackWarning(UserWarning):
    """The JIT could not trace a model and guide; their log weights were computed without it."""


class _TracedChunks:
    """The log weights of a chunk, :func:`_chunk_log_weights`, through a graph traced by the JIT
    (one per chunk shape), which runs the model and the guide without Pyro's Python machinery
    (effect handlers, traces, site bookkeeping): the same operations on the same random stream,
    so the same numbers. As in :func:`pyro.ops.jit.trace`, the parameters are the graph's inputs,
    found by a run on one point. The first chunk of a shape gets the values of its tracing run.
    A model or a guide that cannot be traced is run plainly from then on, with a
    :class:`JitFallbackWarning` (an error with ``insist``)."""

    def __init__(self, scorer, proposal, mixture_weight, insist=False):
        self.scorer, self.proposal, self.mixture_weight = scorer, proposal, mixture_weight
        self.insist = insist
        self.graphs = {}
        self.param_names, self.inputs = None, ()
        self.failed = False

    def plain(self, x, num_particles):
        return _chunk_log_weights(self.scorer, x, num_particles, self.proposal,
                                  self.mixture_weight)

    def __call__(self, x, num_particles):
        if self.failed:
            return self.plain(x, num_particles)
        key = (tuple(x.shape), num_particles, x.dtype, x.device)
        # A trace that fails has drawn random numbers: the plain run draws them again.
        generator = _generator(x.device)
        state = generator.get_state() if key not in self.graphs else None
        try:
            # The profiling executor would run the first calls of a graph slowly to optimize
            # it, which gains nothing for these operations on the CPU.
            with torch.jit.optimized_execution(False):
                if key not in self.graphs:
                    return self.trace(key, x, num_particles)
                return self.graphs[key](x, *self.inputs)
        except Exception as error:
            if key in self.graphs:
                raise
            if self.insist:
                raise ValueError(f"the JIT could not trace this model and guide "
                                 f"({error_summary(error)}); score them without it") from error
            warnings.warn(f"the JIT could not trace this model and guide "
                          f"({error_summary(error)}); scoring them without it", JitFallbackWarning)
            self.failed = True
            generator.set_state(state)
            return self.plain(x, num_particles)

    def trace(self, key, x, num_particles):
        if self.param_names is None:
            # Which parameters the model and the guide read, by a run on one point that leaves
            # the random stream as it was.
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), poutine.block(), \
                    poutine.trace(param_only=True) as capture:
                self.plain(x[:1], 1)
            self.param_names = sorted(capture.trace.nodes)
            # The same tensors for every chunk: an estimate does not replace its parameters.
            self.inputs = tuple(pyro.param(name).unconstrained() for name in self.param_names)
        first = []

        def chunk(x, *unconstrained):
            # The tensors of the parameters are the graph's inputs: Pyro hands them out.
            params = {name: pyro.param(name) for name in self.param_names}
            log_weights = poutine.replay(self.plain, params=params)(x, num_particles)
            first.append(log_weights)
            return log_weights

        with strict_tracing():
            graph = torch.jit.trace(chunk, (x,) + self.inputs, check_trace=False)
        self.graphs[key] = graph
        return first[0]


def _generator(device):
    """Torch's default generator of ``device``, which the sample sites draw from."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return torch.default_generator


def error_summary(error):
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


# The jit of log_weight_chunks calls that give none, while chunk_jit is active.
_JIT_DEFAULTS = []


@contextlib.contextmanager
def chunk_jit(jit):
    """Within this block, :func:`log_weight_chunks` called without ``jit`` (as the estimators
    call it) takes this one: True, False or None (the default's rule)."""
    _JIT_DEFAULTS.append(jit)
    try:
        yield
    finally:
        _JIT_DEFAULTS.pop()


# (seed, offset) while chunk_seeds is active: see chunk_seeds and seed_chunk.
_CHUNK_SEEDING = []


@contextlib.contextmanager
def chunk_seeds(seed, offset=0, device=None):
    """Within this block, each chunk of an estimate draws its random numbers from a generator
    seeded by ``seed`` and the place of the chunk in the whole data: the index of its first data
    point (``offset`` plus its index in the part at hand) and of its first particle. A data
    point's random numbers then depend on the seed, K and the chunk budget, not on which process
    or call scores it: the per-point estimates of data scored in parts (by several processes)
    equal those of the whole, bit for bit on the CPU. Torch's generators are restored on exit.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        _CHUNK_SEEDING.append((int(seed), int(offset), device))
        try:
            yield
        finally:
            _CHUNK_SEEDING.pop()


def seed_chunk(data_start, particle_start=0):
    """Seed torch for the chunk whose first data point is ``data_start`` (in the part at hand)
    and first particle ``particle_start``, if :func:`chunk_seeds` is active."""
    if not _CHUNK_SEEDING:
        return
    seed, offset, device = _CHUNK_SEEDING[-1]
    chunk_seed = derived_seed(seed, offset + int(data_start), int(particle_start))
    # The generators the chunk draws from, as torch.manual_seed would seed them; that one also
    # queues the seeding of every other accelerator type with a stack trace each time (~2 ms).
    torch.default_generator.manual_seed(chunk_seed)
    if device.type == "cuda":
        _generator(device).manual_seed(chunk_seed)


class UntraceableError(RuntimeError):
    """A model or guide read a traced tensor into Python: its trace would be wrong."""


_LIBRARIES = tuple(os.path.dirname(module.__file__) + os.sep for module in (torch, pyro))


@contextlib.contextmanager
def strict_tracing():
    """Watch a JIT trace for the tracer's warnings that it may be wrong (a tensor read into
    Python, which the graph would freeze as a constant, such as the local guide's lookup of its
    rows by the data's values). Raised in the code of a model or a guide, they end the block
    with :class:`UntraceableError`, so that the caller runs that model plainly instead of
    silently computing with values of the first call. Those raised inside torch and Pyro are
    about their shape checks, which hold for every input of the traced shape."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        # torch marks its tracer deprecated; the traced graph is what runs.
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*", category=FutureWarning)
        yield
    unsafe = None
    for caught_warning in caught:
        if not issubclass(caught_warning.category, torch.jit.TracerWarning):
            warnings.warn_explicit(caught_warning.message, caught_warning.category,
                                   caught_warning.filename, caught_warning.lineno)
        elif unsafe is None and not caught_warning.filename.startswith(_LIBRARIES):
            unsafe = caught_warning
    if unsafe is not None:
        first = str(unsafe.message).split(".")[0]
        raise UntraceableError(f"{os.path.basename(unsafe.filename)}:{unsafe.lineno}: {first}")


def log_importance_weights(model, guide, x, num_samples, *, max_batch_elements=None,
                           proposal="guide", mixture_weight=0.5, nesting=None):
    """The (K, N) log importance weights of K particles for each of N data points.

    :param model: the Pyro model, called as ``model(x)``.
    :param guide: the Pyro guide q(z | x), called as ``guide(x)``.
    :param x: data of shape (N, x_dim).
    :param int num_samples: K, the number of particles per data point.
    :param int max_batch_elements: at most this many (particle, data point) pairs per chunk.
    :param str proposal: where z comes from:

        - ``"guide"``: z ~ q(z | x), log w = log p(x, z) - log q(z | x);
        - ``"prior"``: z ~ p(z), log w = log p(x | z) (the naive estimator; the guide is unused);
        - ``"mixture"``: z ~ a q(z | x) + (1 - a) p(z) with a = ``mixture_weight``,
          log w = log p(x, z) - log(a q(z | x) + (1 - a) p(z)), which is at most
          log p(x | z) - log(1 - a): defensive importance sampling (Hesterberg 1995).
    """
    num_samples = check_num_samples(num_samples)
    _check_data(x)
    log_weights = torch.empty(num_samples, x.shape[0], device=x.device)
    for data_slice, particle_slice, chunk in log_weight_chunks(
            model, guide, x, num_samples, max_batch_elements=max_batch_elements,
            proposal=proposal, mixture_weight=mixture_weight, nesting=nesting):
        log_weights[particle_slice, data_slice] = chunk
    return log_weights


def _chunk_log_weights(scorer, x, num_particles, proposal, mixture_weight):
    like = torch.zeros(num_particles, x.shape[0], device=x.device)
    if proposal == "prior":
        # z ~ p(z) inside the model itself: log w = log p(x, z) - log p(z) = log p(x | z).
        _, model_lp, observed = scorer.run(scorer.model, x, num_particles)
        return _total(model_lp, observed, like)
    guide_trace, guide_lp, _ = scorer.run(scorer.guide, x, num_particles)
    if proposal == "guide":
        _, model_lp, observed = scorer.run(scorer.model, x, num_particles, replay=guide_trace)
        # Latent sites the guide leaves to the model are proposed from the prior and cancel.
        proposed = set(guide_lp)
        return (_total(model_lp, observed | (proposed & set(model_lp)), like)
                - _total(guide_lp, proposed, like))
    # Defensive mixture: choose the component of each (particle, data point), then score the
    # chosen z under the model and under both components.
    prior_trace, prior_lp, observed = scorer.run(scorer.model, x, num_particles)
    from_guide = torch.rand(num_particles, x.shape[0], device=x.device) < mixture_weight
    latents = {}
    for name in guide_lp:
        z_guide = guide_trace.nodes[name]["value"]
        z_prior = prior_trace.nodes[name]["value"].expand_as(z_guide)
        mask = from_guide.reshape(from_guide.shape + (1,) * (z_guide.dim() - 2))
        latents[name] = torch.where(mask, z_guide, z_prior)
    _, model_lp, observed = scorer.run(scorer.model, x, num_particles, condition=latents)
    with pyro.validation_enabled(False):
        _, guide_lp, _ = scorer.run(scorer.guide, x, num_particles, condition=latents)
    log_prior = _total(model_lp, latents, like)
    log_q = _total(guide_lp, latents, like)
    # q(z) of a prior draw: a flow guide (IAF) inverts its transform, which overflows to NaN
    # for a z so far outside q that its base coordinates pass the float range; q is 0 there.
    log_q = torch.where(from_guide | torch.isfinite(log_q), log_q,
                        torch.full_like(log_q, -math.inf))
    log_proposal = torch.logaddexp(math.log(mixture_weight) + log_q,
                                   math.log1p(-mixture_weight) + log_prior)
    return log_prior + _total(model_lp, observed, like) - log_proposal


def log_joint(model, x, latents, *, guide=None):
    """log p(z) and log p(x | z), each (K, N), at given latents; and log q(z | x) with a guide.

    :param dict latents: site name -> tensor of shape (K, N, ...) (the event shape of the site).
    :returns: (log_prior, log_likelihood), or (log_prior, log_likelihood, log_q) with a guide.
    """
    _check_data(x)
    scorer = _Scorer(model, guide, x)
    num_particles = next(iter(latents.values())).shape[0]
    like = torch.zeros(num_particles, x.shape[0], device=x.device)
    _, model_lp, observed = scorer.run(model, x, num_particles, condition=latents)
    result = (_total(model_lp, set(model_lp) - observed, like), _total(model_lp, observed, like))
    if guide is None:
        return result
    _, guide_lp, _ = scorer.run(guide, x, num_particles, condition=latents)
    return result + (_total(guide_lp, latents, like),)

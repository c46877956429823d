"""The unnormalized log posterior of the latents z as a differentiable function, for AIS and
quadrature: z -> (log p(z), log p(x | z)) for every data point at once; the start density
q(z | x) of AIS started from the guide; and data simulated from the model, (x, z) ~ p(z) p(x | z).

Any Pyro model of the project's convention (see :mod:`inference.log_weights`: the model takes
the data x of shape (N, x_dim) as its first argument, and every latent and observed site sits
inside ``pyro.plate("data", N)``) is accepted, whatever its latent sites are called and however
many it has. The latents of one data point are flattened into one vector z of D numbers, the
sites one after the other in the order the model samples them (:attr:`LatentLogDensity.sites`,
:meth:`~LatentLogDensity.split`, :meth:`~LatentLogDensity.join`); for a hierarchical prior
log p(z) is the sum of every latent site's log density, log p(z1) + log p(z2 | z1). AIS moves z
by Hamiltonian dynamics and quadrature puts a grid on it, so every latent must be continuous and
range over the whole real line; models with discrete or constrained latents are refused (use
importance sampling for them).

For a :class:`models.VAE` the story's own parts are called directly (prior, decoder, likelihood),
which is what the Pyro model computes, without tracing overhead on each of the thousands of
evaluations an annealing run makes. Any other model is run by Pyro, conditioned on the latents;
the two paths agree (tested).
"""

import inspect
import math

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import nn
from torch.distributions import constraints

from inference.log_weights import DATA_PLATE, _Scorer, _total
from models.vae import VAE

#: what to use for a model AIS and quadrature cannot take
FALLBACK = "use importance sampling (or the prior / mixture estimators) instead"


class _SiteLayout:
    """Where the latent values of one site for the data points sit in the site's value tensor.

    A site of the data plate has, for K particles and N points, values of shape
    (K, 1, ..., 1, N, *shape): the particle plate to the left of all of the model's plates, the
    data plate's dimension, and ``shape`` for one data point (the site's event shape, and the
    dimensions of any plate nested inside the data plate). ``pad`` is the number of singleton
    dimensions between the particle and data dimensions.
    """

    def __init__(self, name, site, nesting):
        value, fn = site["value"], site["fn"]
        frames = [frame for frame in site["cond_indep_stack"] if frame.name == DATA_PLATE]
        if not frames or frames[0].dim is None:
            raise ValueError(
                f"latent site {name!r} is not inside a vectorized pyro.plate({DATA_PLATE!r}, N); "
                f"AIS and quadrature integrate each data point's own latents, so every latent "
                f"site must be in that plate; {FALLBACK}")
        position = value.dim() - fn.event_dim + frames[0].dim
        if position < 0 or any(size != 1 for size in value.shape[:position + 1]):
            raise ValueError(
                f"latent site {name!r} has a batch dimension to the left of the "
                f"{DATA_PLATE!r} plate (value shape {tuple(value.shape)} for one data point); "
                f"AIS and quadrature need the data plate leftmost; {FALLBACK}")
        self.name = name
        self.shape = value.shape[position + 1:]
        self.size = math.prod(self.shape)
        self.pad = nesting + frames[0].dim

    def to_site(self, values):
        """(K, N, *shape) -> the value tensor the site takes under a plate of K particles."""
        return values.reshape(values.shape[0], *(1,) * self.pad, *values.shape[1:])

    def from_site(self, value, num_data):
        """The site's value for K (or 1) particles -> (K, N, *shape)."""
        return value.reshape(-1, num_data, *self.shape)


def _trace_one_point(fn, x):
    """A trace of ``fn(x[:1])`` to read the sites' names, shapes and plates from. It records no
    parameters and leaves torch's random stream where it was, so that finding the structure
    changes no draws that come after it (simulated data, AIS chains)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), poutine.block(), torch.no_grad():
        return prune_subsample_sites(poutine.trace(fn).get_trace(x[:1]))


def _plate_nesting(trace):
    """How many batch dimensions the plates of a trace use (the particle plate goes left)."""
    return max((-frame.dim for site in trace.nodes.values() if site["type"] == "sample"
                for frame in site["cond_indep_stack"] if frame.vectorized), default=0)


def _is_deterministic(site):
    return bool(site["infer"].get("_deterministic"))


def _check_real_valued(name, site):
    """Refuse a latent site that is not continuous on the whole real line (HMC moves and
    quadrature grids range over all of R^D)."""
    support = site["fn"].support
    base = support
    # Independent(...) and mixture supports wrap the support of one coordinate.
    while hasattr(base, "base_constraint"):
        base = base.base_constraint
    if support.is_discrete or base.is_discrete:
        raise ValueError(
            f"AIS and quadrature need continuous latents; the latent site {name!r} is discrete "
            f"({type(site['fn']).__name__}, support {support}); use importance sampling")
    if not isinstance(base, type(constraints.real)):
        raise ValueError(
            f"AIS and quadrature need latents that range over the whole real line; the latent "
            f"site {name!r} has support {support}: sample an unconstrained latent instead "
            f"(for a positive one, its logarithm), or use importance sampling")


def _latent_layouts(trace, nesting, check_support):
    """The layouts of the latent (unobserved) sample sites of a trace, in the order sampled."""
    layouts = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or _is_deterministic(site):
            continue
        if check_support:
            _check_real_valued(name, site)
        layouts.append(_SiteLayout(name, site, nesting))
    return layouts


def _num_chains(num_chains):
    """An int from ``C`` or a torch sample shape ``(C,)``."""
    if isinstance(num_chains, (tuple, list)):
        (num_chains,) = num_chains
    return int(num_chains)


class LatentLogDensity:
    """log p(z) and log p(x_n | z) of a model for the data x (N, x_dim), at z of shape (C, N, D).

    :param model: a Pyro model of the project's convention, called as ``model(x)``.
    :param x: the data, (N, x_dim).
    :param bool use_model_parts: for a :class:`models.VAE`, call its prior, decoder and
        likelihood directly rather than tracing the Pyro model (the same numbers, faster).

    ``sites`` lists the latent sites as (name, shape for one data point) in the order the model
    samples them, which is the order their values are flattened into z; ``z_dim`` is D, the
    total size. A model without latents, or with a discrete or constrained latent, is refused.
    """

    def __init__(self, model, x, use_model_parts=True):
        self.model, self.x = model, x
        self.direct = use_model_parts and isinstance(model, VAE)
        if self.direct:
            self.z_dim = model.z_dim
            self.sites = [("z", torch.Size([model.z_dim]))]
            return
        trace = _trace_one_point(model, x)
        nesting = _plate_nesting(trace)
        self._layouts = _latent_layouts(trace, nesting, check_support=True)
        if not self._layouts:
            raise ValueError("AIS and quadrature integrate over the latents of a model, and this "
                             "model has no latent site: its log p(x) is its log-likelihood")
        self.sites = [(layout.name, layout.shape) for layout in self._layouts]
        self.z_dim = sum(layout.size for layout in self._layouts)
        self._scorer = _Scorer(model, None, x, nesting=nesting)

    def split(self, z):
        """Flat z (..., N, D) -> {site name: its latents, (..., N, *shape)}."""
        if z.shape[-1] != self.z_dim:
            raise ValueError(f"expected latents with a last dimension of D = {self.z_dim} "
                             f"(sites {self.sites}), got shape {tuple(z.shape)}")
        latents, start = {}, 0
        for name, shape in self.sites:
            size = math.prod(shape)
            latents[name] = z[..., start:start + size].reshape(*z.shape[:-1], *shape)
            start += size
        return latents

    def join(self, latents):
        """{site name: (..., N, *shape)} -> flat z (..., N, D), the inverse of :meth:`split`."""
        missing = [name for name, _ in self.sites if name not in latents]
        if missing:
            raise ValueError(f"no values for the latent sites {missing}; the model's latent "
                             f"sites are {[name for name, _ in self.sites]}")
        parts = []
        for name, shape in self.sites:
            value = latents[name]
            lead = value.shape[:value.dim() - len(shape)]
            parts.append(value.reshape(*lead, math.prod(shape)))
        return torch.cat(parts, -1)

    @torch.no_grad()
    def sample_prior(self, num_chains):
        """z ~ p(z) for each of C chains and N data points, shape (C, N, D): all latent sites
        drawn ancestrally by the model itself."""
        num_data = self.x.shape[0]
        if self.direct:
            return self.model.prior().sample((num_chains, num_data))
        trace, _, _ = self._scorer.run(self.model, self.x, num_chains)
        return self.join({
            layout.name: layout.from_site(trace.nodes[layout.name]["value"], num_data)
            .expand(num_chains, num_data, *layout.shape) for layout in self._layouts})

    def __call__(self, z):
        """(log p(z), log p(x | z)) at z of shape (..., N, D), each of shape z.shape[:-1] and
        differentiable in z: log p(z) sums the log densities of all latent sites, log p(x | z)
        those of the observed sites."""
        if self.direct:
            log_prior = self.model.prior().log_prob(z)
            log_likelihood = self.model.likelihood(self.model.decoder(z)).log_prob(self.x)
            return log_prior, log_likelihood
        lead, num_data = z.shape[:-2], z.shape[-2]
        flat = z.reshape(-1, num_data, z.shape[-1])
        values = self.split(flat)
        latents = {layout.name: layout.to_site(values[layout.name]) for layout in self._layouts}
        _, log_probs, observed = self._scorer.run(self.model, self.x, flat.shape[0],
                                                  condition=latents)
        like = flat.new_zeros(flat.shape[:2])
        log_prior = _total(log_probs, latents, like)
        log_likelihood = _total(log_probs, observed, like)
        return log_prior.reshape(*lead, num_data), log_likelihood.reshape(*lead, num_data)


class GuideLogDensity:
    """The guide q(z | x) over the flat latents z of a :class:`LatentLogDensity`: the start
    density of AIS started from the guide.

    A guide with a ``distribution(x)`` method (the project's guides in :mod:`inference.guides`)
    for a model with one latent site is used through that distribution. Any other Pyro guide
    is run by Pyro: traced to sample, conditioned on the latents to score. Its latent sites must
    be those of the model, with the same shapes.

    Like a torch distribution of batch shape (N,) and event shape (D,), it has ``sample`` and
    ``log_prob`` (the latter the same as calling it).
    """

    def __init__(self, guide, x, latent_density):
        self.guide, self.x, self.latent_density = guide, x, latent_density
        self.z_dim = latent_density.z_dim
        self.distribution = None
        if hasattr(guide, "distribution") and len(latent_density.sites) == 1:
            with torch.no_grad():
                self.distribution = guide.distribution(x)
            expected = (torch.Size([x.shape[0]]), torch.Size([self.z_dim]))
            found = (self.distribution.batch_shape, self.distribution.event_shape)
            if found != expected:
                raise ValueError(f"the guide's distribution(x) has batch and event shapes "
                                 f"{tuple(map(tuple, found))}, expected "
                                 f"{tuple(map(tuple, expected))} for the model's latents")
            return
        trace = _trace_one_point(guide, x)
        nesting = _plate_nesting(trace)
        self._layouts = {layout.name: layout
                         for layout in _latent_layouts(trace, nesting, check_support=False)}
        guide_sites = {name: tuple(layout.shape) for name, layout in self._layouts.items()}
        model_sites = {name: tuple(shape) for name, shape in latent_density.sites}
        if guide_sites != model_sites:
            raise ValueError(f"the guide's latent sites {guide_sites} differ from the model's "
                             f"{model_sites} (name: shape per data point); AIS from the guide "
                             "needs a guide over exactly the model's latents; use --ais-start "
                             "prior")
        self._scorer = _Scorer(guide, None, x, nesting=nesting)

    @torch.no_grad()
    def sample(self, num_chains):
        """z ~ q(z | x) for each of C chains and N data points, shape (C, N, D). ``num_chains``
        may also be a sample shape (C,), as for a torch distribution."""
        num_chains = _num_chains(num_chains)
        if self.distribution is not None:
            return self.distribution.sample((num_chains,))
        num_data = self.x.shape[0]
        trace, _, _ = self._scorer.run(self.guide, self.x, num_chains)
        return self.latent_density.join({
            name: layout.from_site(trace.nodes[name]["value"], num_data)
            .expand(num_chains, num_data, *layout.shape)
            for name, layout in self._layouts.items()}).detach()

    def __call__(self, z):
        """log q(z | x) at z of shape (..., N, D), of shape z.shape[:-1], differentiable in z."""
        if self.distribution is not None:
            return self.distribution.log_prob(z)
        lead, num_data = z.shape[:-2], z.shape[-2]
        flat = z.reshape(-1, num_data, z.shape[-1])
        latents = {name: self._layouts[name].to_site(value)
                   for name, value in self.latent_density.split(flat).items()}
        _, log_probs, _ = self._scorer.run(self.guide, self.x, flat.shape[0], condition=latents)
        log_q = _total(log_probs, latents, flat.new_zeros(flat.shape[:2]))
        return log_q.reshape(*lead, num_data)

    log_prob = __call__


def _generates_data(model):
    """Whether the model tells its story forwards when called as ``model(None, batch_size=n)``
    (the project's models do)."""
    function = model.forward if isinstance(model, nn.Module) else model
    try:
        return "batch_size" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _data_rows(like, num_data):
    """``num_data`` copies of a data point shaped like the data: ``like`` is data (M, x_dim) or
    one data point (x_dim,)."""
    like = torch.as_tensor(like)
    row = like if like.dim() == 1 else like[0]
    return row.unsqueeze(0).expand(num_data, *row.shape).clone()


@torch.no_grad()
def simulate(model, num_data, like=None):
    """(x, z) ~ p(z) p(x | z) for ``num_data`` points drawn from the model: x (N, x_dim) the
    value of its observed site, z (N, D) the latents that made it, flattened as
    :class:`LatentLogDensity` flattens them. z is an exact posterior sample for x (BDMC).

    A model that generates data when called as ``model(None, batch_size=N)`` (the project's
    models) is called so. Any other model of the convention needs its data as first argument:
    it runs on a placeholder of N rows shaped like ``like`` (data of shape (M, x_dim), e.g. the
    first data point ``x[:1]``, or one point (x_dim,)) with its observed site sampled instead
    of observed (``poutine.uncondition``). The model must have one observed site.
    """
    if isinstance(num_data, bool) or int(num_data) != num_data or num_data < 1:
        raise ValueError(f"simulate needs a positive whole number of points, got {num_data}")
    num_data = int(num_data)
    if _generates_data(model):
        with poutine.block():
            trace = prune_subsample_sites(
                poutine.trace(model).get_trace(None, batch_size=num_data))
        # Which site is x shows when the model is run on data: the observed ones.
        data = like if like is not None else trace.nodes["_RETURN"]["value"]
        if not torch.is_tensor(data) or data.dim() < 1:
            raise ValueError("simulate cannot tell which site of this model is the data: it "
                             "returns no data tensor; pass like=<data of the model's shape>, "
                             "e.g. the first data point x[:1]")
        structure = _trace_one_point(model, _data_rows(data, 1))
        observed = [name for name, site in structure.nodes.items()
                    if site["type"] == "sample" and site["is_observed"]
                    and not _is_deterministic(site)]
    else:
        if like is None:
            raise ValueError("this model takes its data x as first argument and cannot generate "
                             "data by itself (no batch_size parameter); pass like=<data of the "
                             "model's shape>, e.g. the first data point x[:1], so that simulate "
                             "can run it on a placeholder with its observed site sampled")
        with poutine.block():
            trace = prune_subsample_sites(poutine.trace(poutine.uncondition(model)).get_trace(
                _data_rows(like, num_data)))
        observed = [name for name, site in trace.nodes.items()
                    if site["type"] == "sample" and site["infer"].get("was_observed")
                    and not _is_deterministic(site)]
    if len(observed) != 1:
        raise ValueError(f"simulate needs a model with one observed site, the data x; this "
                         f"model has {len(observed)}: {observed}")
    x = trace.nodes[observed[0]]["value"].reshape(num_data, -1)
    density = LatentLogDensity(model, x)
    z = density.join({name: trace.nodes[name]["value"].reshape(num_data, *shape)
                      for name, shape in density.sites})
    return x, z

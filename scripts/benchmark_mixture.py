"""Time log p(z) of a mixture of diagonal Gaussians: ``models.distributions.DiagonalNormalMixture``
(matrix products) against ``torch.distributions.MixtureSameFamily`` (broadcasting) on the same
z, side by side in one run, and report the ratio and the largest difference from a float64
reference.

The default sizes are those of one evaluation chunk of a VampPrior with 500 pseudo-inputs and
z_dim = 50 on MNIST (5,350 (particle, data point) pairs); the mog prior is the same computation
with K = 10. Absolute times mean something only on the device they were measured on::

    python scripts/benchmark_mixture.py --device cpu
    python scripts/benchmark_mixture.py --device cuda --num-points 20000
"""

import time

import pyro.distributions as dist
import torch

from evaluation import command_line as cli
from evaluation.command_line import parsers
from models.utilities.entry_points import entry_point
from models.distributions import DiagonalNormalMixture


def timed(function, repeats, device):
    """Median seconds of ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _main(args):
    if min(args.num_components, args.z_dim, args.num_points, args.repeats) < 1:
        raise ValueError("--num-components, --z-dim, --num-points and --repeats must be positive")
    device = cli.start(args)
    logits = torch.randn(args.num_components, device=device)
    locs = torch.randn(args.num_components, args.z_dim, device=device)
    scales = 0.05 + torch.rand(args.num_components, args.z_dim, device=device)
    z = 1.5 * torch.randn(args.num_points, args.z_dim, device=device)

    ours = DiagonalNormalMixture(logits, locs, scales)
    broadcast = dist.MixtureSameFamily(dist.Categorical(logits=logits),
                                       dist.Normal(locs, scales).to_event(1))
    reference = dist.MixtureSameFamily(dist.Categorical(logits=logits.double()),
                                       dist.Normal(locs.double(), scales.double()).to_event(1))
    with torch.no_grad():
        exact = reference.log_prob(z.double())
        rows = []
        for name, mixture in (("matrix products", ours), ("broadcasting", broadcast)):
            seconds = timed(lambda: mixture.log_prob(z), args.repeats, device)
            error = (mixture.log_prob(z).double() - exact).abs().max().item()
            rows.append((name, seconds, error))
    print(f"log p(z) of a mixture of {args.num_components} diagonal Gaussians, z_dim "
          f"{args.z_dim}, {args.num_points} points, {args.repeats} repeats on {device}")
    for name, seconds, error in rows:
        print(f"  {name:<16} {1000 * seconds:10.2f} ms   max |error| vs float64 {error:.2e}")
    print(f"  broadcasting / matrix products: {rows[1][1] / rows[0][1]:.1f}x")


main = entry_point(_main, parsers.benchmark_mixture)


if __name__ == "__main__":
    main()

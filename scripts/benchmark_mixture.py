"""Time log p(z) of a mixture of diagonal Gaussians: ``models.priors.DiagonalNormalMixture``
(matrix products) against ``torch.distributions.MixtureSameFamily`` (broadcasting) on the same
z, side by side in one run, and report the ratio and the largest difference from a float64
reference.

The default sizes are those of one evaluation chunk of a VampPrior with 500 pseudo-inputs and
z_dim = 50 on MNIST (5,350 (particle, data point) pairs); the mog prior is the same computation
with K = 10. Absolute times mean something only on the device they were measured on::

    python scripts/benchmark_mixture.py --device cpu
    python scripts/benchmark_mixture.py --device cuda --num-points 20000
"""

import argparse
import time

import pyro
import pyro.distributions as dist
import torch

from inference.cli import HelpFormatter, run
from inference.training import resolve_device
from models.priors import DiagonalNormalMixture


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


def main(args):
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    if min(args.num_components, args.z_dim, args.num_points, args.repeats) < 1:
        raise ValueError("--num-components, --z-dim, --num-points and --repeats must be positive")
    device = resolve_device(args.device)
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


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--num-components", type=int, default=500)
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--num-points", type=int, default=5350)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    run(main, make_parser())

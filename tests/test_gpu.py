"""On a machine with CUDA: the same numbers on the GPU as on the CPU, every part and estimator
running there, checkpoints moving between devices, and a training step that never waits for
the device. Skipped without CUDA (``scripts/gpu_check.sh`` runs them)."""

import pyro
import pytest
import torch

from conftest import run_main, small_config
from evaluation.estimators import ESTIMATORS, estimate, options_for
from inference.build import build
from inference.checkpoint import load_checkpoint, restore
from inference.log_weights import chunk_seeds, log_joint, log_weight_chunks
from inference.training import GRAPH_WARMUP_STEPS, TrainingStep

pytestmark = pytest.mark.gpu
PRIORS = ("standard", "mog", "vamp", "flow")
GUIDES = ("diagonal", "fullcov", "iaf")


def parts(prior, guide_name, likelihood="bernoulli"):
    config = small_config(prior=prior, guide=guide_name, likelihood=likelihood,
                          prior_options={"num_components": 3} if prior in ("mog", "vamp")
                          else {})
    return config, *build(config)


@pytest.mark.parametrize("guide_name", GUIDES)
@pytest.mark.parametrize("prior", PRIORS)
def test_cpu_and_cuda_give_the_same_log_densities_at_the_same_z(prior, guide_name):
    _, model, guide = parts(prior, guide_name)
    x = torch.rand(6, 50).bernoulli()
    z = torch.randn(4, 6, 2)
    with torch.no_grad():
        on_cpu = log_joint(model, x, {"z": z}, guide=guide)
        on_gpu = log_joint(model.cuda(), x.cuda(), {"z": z.cuda()}, guide=guide.cuda())
    for a, b in zip(on_cpu, on_gpu):
        assert torch.allclose(a, b.cpu(), rtol=1e-4, atol=1e-3)


#: draws per data point of the estimators that sample (AIS: chains)
ESTIMATOR_SAMPLES = {"ais": 16, "elbo": 200, "importance": 200, "mixture": 200, "prior": 200}


def estimates_on(device, name, seed=0):
    """The per-point estimates and standard errors of estimator ``name`` for one untrained
    model and five points, computed on ``device``. The model, the data and the seed of the
    estimate are drawn on the CPU from ``seed``: the same on every device."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    if name == "exact":
        config = small_config(architecture="linear", likelihood="gaussian", hidden_dims=[])
    else:
        config = small_config()
    model, guide = build(config)
    x = torch.rand(5, 50)
    x = x if name == "exact" else x.bernoulli()
    model, guide, x = model.to(device).eval(), guide.to(device).eval(), x.to(device)
    options = options_for(name, {"ais_steps": 5, "ais_leapfrog": 2,
                                 "quadrature_tolerance": 1e-2})
    torch.manual_seed(seed)
    result = estimate(name, model, guide, x, ESTIMATOR_SAMPLES.get(name, 8), **options)
    return result.estimate.double().cpu(), result.stderr.double().cpu()


def assert_estimates_agree(name, first, second):
    """``first`` and ``second`` are (estimates, standard errors) of one estimator on two
    devices (or two random streams). The deterministic estimators agree to float rounding and
    the refinement error of the grid; the others, whose draws come from each device's own
    random stream (CUDA's differs from the CPU's for the same seed), agree within 4 standard
    errors of their difference plus 0.02 nats."""
    (a, a_se), (b, b_se) = first, second
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    if name == "exact":                   # float64 linear algebra on both devices
        allowed = 1e-6 * a.abs() + 1e-6
    elif name == "quadrature":            # float32 sums; the same grid up to a refinement step
        allowed = 1e-4 * a.abs() + a_se + b_se
    else:
        allowed = 4 * (a_se ** 2 + b_se ** 2).sqrt() + 0.02
    assert ((a - b).abs() <= allowed).all(), (name, a - b, allowed)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_gives_the_cpus_numbers_on_cuda(name):
    assert_estimates_agree(name, estimates_on("cpu", name), estimates_on("cuda", name))


@pytest.mark.parametrize("prior", ["standard", "vamp"])
def test_traced_chunks_on_cuda_give_the_plain_numbers_without_waiting(prior):
    _, model, guide = parts(prior, "iaf" if prior == "vamp" else "diagonal")
    model, guide = model.cuda().eval(), guide.cuda().eval()
    x = torch.rand(9, 50, device="cuda").bernoulli()
    weights = {}
    for jit in (False, True):
        pyro.set_rng_seed(3)
        with torch.no_grad(), pyro.validation_enabled(False), chunk_seeds(5, device="cuda"):
            tiles = log_weight_chunks(model, guide, x, 16, max_batch_elements=48, jit=jit)
            chunks = [next(tiles)[2]]                  # traced here
            torch.cuda.set_sync_debug_mode("error")    # the graph's chunks never wait
            try:
                chunks += [chunk for _, _, chunk in tiles]
            finally:
                torch.cuda.set_sync_debug_mode("default")
        weights[jit] = torch.cat(chunks, 1)
    assert torch.allclose(weights[True], weights[False], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("guide_name", GUIDES)
@pytest.mark.parametrize("prior", PRIORS)
def test_every_prior_and_guide_trains_on_cuda_without_waiting_for_the_device(
        prior, guide_name):
    config, model, guide = parts(prior, guide_name)
    model, guide = model.cuda(), guide.cuda()
    step = TrainingStep(model, guide, config.training, log=pytest.fail)
    x = torch.rand(16, 50, device="cuda").bernoulli()
    for _ in range(GRAPH_WARMUP_STEPS):         # the JIT's trace may read values
        step(x, 160)
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step(x, 160) for _ in range(3)]   # eager, then the graph's capture
        step.use_graphs = False
        losses += [step(x, 160) for _ in range(2)]  # and eager once more
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(loss).item() for loss in losses)
    assert list(step.graphs.values()) != [] and None not in step.graphs.values()


def test_the_cuda_graph_step_trains_as_the_step_without_it():
    params = {}
    for cuda_graph in (None, False):
        pyro.clear_param_store()
        config = small_config(prior="vamp", guide="iaf", prior_options={"num_components": 3},
                              cuda_graph=cuda_graph)
        pyro.set_rng_seed(0)                    # the same initial weights for both
        model, guide = build(config)
        model, guide = model.cuda(), guide.cuda()
        step = TrainingStep(model, guide, config.training, log=pytest.fail)
        torch.manual_seed(7)
        full, short = torch.rand(16, 50, device="cuda").bernoulli(), \
            torch.rand(5, 50, device="cuda").bernoulli()
        # Full minibatches (the graph is captured at the fourth), one short one (as an epoch
        # ends; taken without a graph), then full ones on the graph again, at a new step size.
        losses = [step(x, 160) for x in [full] * 5 + [short] + [full] * 2]
        step.set_learning_rate(3e-3)
        losses += [step(full, 160) for _ in range(2)]
        assert (len(step.graphs) == 1) == (cuda_graph is None)
        params[cuda_graph] = ([p.detach().clone() for p in step.optimizer.param_groups[0]
                               ["params"]], torch.stack(losses))
    for ours, theirs in zip(params[None][0], params[False][0]):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert torch.allclose(params[None][1], params[False][1], rtol=1e-5, atol=1e-4)


def test_the_cuda_graph_step_trains_on_a_device_that_is_not_the_current_one():
    """The data and parameters on the last GPU while cuda:0 is current (--device cuda:N in one
    process): the graph is captured and replayed there, and trains as the step without it. On
    a machine with one GPU, the device is named explicitly and is also the current one."""
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    previous = torch.cuda.current_device()
    torch.cuda.set_device(0)
    try:
        params = {}
        for cuda_graph in (None, False):
            pyro.clear_param_store()
            config = small_config(cuda_graph=cuda_graph)
            pyro.set_rng_seed(0)
            model, guide = build(config)
            model, guide = model.to(device), guide.to(device)
            step = TrainingStep(model, guide, config.training, log=pytest.fail)
            torch.manual_seed(7)
            x = torch.rand(16, 50, device=device).bernoulli()
            losses = torch.stack([step(x, 160) for _ in range(GRAPH_WARMUP_STEPS + 3)])
            assert torch.cuda.current_device() == 0
            assert (len(step.graphs) == 1 and None not in step.graphs.values()) == \
                (cuda_graph is None)
            params[cuda_graph] = [p.detach().cpu() for p in step.params], losses.cpu()
        for ours, theirs in zip(params[None][0], params[False][0]):
            assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
        assert torch.allclose(params[None][1], params[False][1], rtol=1e-5, atol=1e-4)
    finally:
        torch.cuda.set_device(previous)


def test_a_run_trained_on_cuda_loads_and_evaluates_on_the_cpu(tmp_path):
    out = tmp_path / "run"
    run_main("train", "--dataset", "mnist-subset", "--num-epochs", "1", "--z-dim", "4",
             "--hidden-dims", "32", "--batch-size", "200", "--no-progress", "--device", "cuda",
             "--out", out)
    checkpoint = load_checkpoint(str(out), map_location="cpu")
    model, guide, _ = restore(checkpoint, "cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    report = run_main("evaluate", out, "--device", "cpu", "--num-data", "5",
                      "--num-samples", "20")
    assert report["device"] == "cpu"
    pyro.clear_param_store()

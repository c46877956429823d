"""The fast paths give the numbers of the plain ones: the JIT-compiled step and the plain step
against Pyro's own Trace_ELBO, no host-device synchronization inside a step or an evaluation
chunk, the data still checked (once), a clear fallback, the time budget, device placement
checked on the CPU, and the benchmark script itself. No timings are asserted."""

import json
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from conftest import ROOT, load_script, run_main, small_config
from evaluation.diagnostics import WeightSummary
from evaluation.estimators import estimate
from inference.build import build
from models.data import load_dataset
from inference import log_weights as log_weights_module
from inference.log_weights import chunk_seeds, log_importance_weights, log_weight_chunks
from inference.training import TrainingStep, fit, parameters
from models.utilities.device_syncs import SyncCounter
from models.priors import Prior

PRIORS = ("standard", "mog", "vamp", "flow")
GUIDES = ("diagonal", "fullcov", "iaf")
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian-learned", "continuous-bernoulli")


def components(prior):
    return {"num_components": 3} if prior in ("mog", "vamp") else {}


def data(likelihood, num_data=16):
    x = torch.rand(num_data, 50)
    return x.bernoulli() if likelihood == "bernoulli" else x


def gradients(model, guide):
    return [p.grad.clone() for p in parameters(model, guide)[1]]


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "plain"])
@pytest.mark.parametrize("prior,guide_name", [("standard", "diagonal"), ("vamp", "iaf"),
                                              ("flow", "fullcov"), ("mog", "diagonal")])
def test_a_training_step_computes_the_loss_and_gradients_of_pyros_trace_elbo(
        jit, prior, guide_name):
    config = small_config(prior=prior, prior_options=components(prior), guide=guide_name,
                          jit=jit)
    model, guide = build(config)
    x = data("bernoulli")
    step = TrainingStep(model, guide, config.training, log=pytest.fail)
    # Pyro's own estimator, at the same parameters and the same random draws.
    pyro.set_rng_seed(7)
    expected = Trace_ELBO().loss_and_grads(model, guide, x, num_data=160)
    expected_grads = gradients(model, guide)
    for p in parameters(model, guide)[1]:
        p.grad = None
    before = [p.detach().clone() for p in parameters(model, guide)[1]]
    pyro.set_rng_seed(7)
    step.optimizer.step = lambda: None             # keep the parameters: compare gradients
    loss = step(x, 160)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    for got, want in zip(gradients(model, guide), expected_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, parameters(model, guide)[1]))


def test_the_jit_step_draws_the_same_random_numbers_as_the_plain_one():
    losses = {}
    for jit in (True, False):
        pyro.clear_param_store()
        torch.manual_seed(0)
        config = small_config(jit=jit)
        model, guide = build(config)
        step = TrainingStep(model, guide, config.training, log=pytest.fail)
        x = data("bernoulli")
        torch.manual_seed(3)
        losses[jit] = [step(x, 160).item() for _ in range(4)]   # the trace happens in step 1
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_a_model_the_jit_cannot_trace_falls_back_with_a_message(monkeypatch):
    config = small_config()
    model, guide = build(config)
    said = []
    step = TrainingStep(model, guide, config.training, log=said.append)

    def untraceable(*args, **kwargs):
        raise RuntimeError("cannot trace this")

    step.jit_loss = untraceable
    loss = step(data("bernoulli"), 160)
    assert torch.isfinite(loss)
    assert said == ["the JIT could not trace this model and guide (RuntimeError: cannot trace "
                    "this); training without it"]
    insisted = small_config(jit=True)
    step = TrainingStep(*build(insisted), insisted.training)
    step.jit_loss = untraceable
    with pytest.raises(ValueError, match="--jit could not trace this model and guide"):
        step(data("bernoulli"), 160)


def test_cuda_graphs_are_for_cuda_and_the_jit_and_say_so_when_insisted_on_elsewhere():
    config = small_config()
    model, guide = build(config)
    step = TrainingStep(model, guide, config.training, log=pytest.fail)
    x = data("bernoulli")
    for _ in range(6):                          # past the warm-up steps, on the CPU
        step(x, 160)
    assert step.graphs == {}
    for settings, what in ((dict(cuda_graph=True), "cpu, JIT"),
                           (dict(cuda_graph=True, jit=False), "cpu, no JIT")):
        insisted = small_config(**settings)
        with pytest.raises(ValueError, match=rf"--cuda-graph needs a CUDA device .*here: {what}, "):
            TrainingStep(*build(insisted), insisted.training)


def test_no_host_device_synchronization_inside_a_step_or_an_evaluation_chunk():
    for jit in (True, False):
        config = small_config(jit=jit, prior="vamp", prior_options=components("vamp"))
        model, guide = build(config)
        step = TrainingStep(model, guide, config.training)
        x = data("bernoulli")
        step(x, 160)                                # the trace, outside the count
        counter = SyncCounter()
        with counter:
            for _ in range(3):
                step(x, 160)
        assert counter.count == 0, jit
    for jit in (False, True):
        summary = WeightSummary(x.shape[0], 300)
        counter = SyncCounter()
        with torch.no_grad(), pyro.validation_enabled(False), counter:
            for chunk_data, _, log_weights in log_weight_chunks(
                    model, guide, x, 300, max_batch_elements=1000, jit=jit):
                summary.update(chunk_data, log_weights)
        assert counter.count == 0, jit
    # AIS reads nothing back inside its steps: as many reads for 2 steps as for 12 (the start
    # and the read-out of the estimate's diagnostics).
    counts = []
    for steps in (2, 12):
        counter = SyncCounter()
        with counter:
            estimate("ais", model, guide, x[:5], 4, ais_steps=steps, ais_leapfrog=2,
                     ais_start="guide")
        counts.append(counter.count)
    assert counts[0] == counts[1] <= 3, counts
    # The counter does see a read: it can fail.
    counter = SyncCounter()
    with counter:
        torch.ones(2).sum().item()
    assert counter.count == 1


def test_the_sync_counter_counts_value_reads_and_data_dependent_shapes_only():
    counter = SyncCounter()
    x = torch.tensor([0.0, 1.0, 2.0])
    with counter:
        bool(x.sum() > 0)                          # a read of a boolean
        x.nonzero()                                # a shape that depends on the values
        x.masked_select(x > 0)                     # the same, through a mask
        torch.ones(2, dtype=torch.long).sum().item()   # an integer read: host-side shapes
        (x * 2).exp()                              # no read
    assert counter.count == 3
    # The benchmark counts with the library's class: no copy of it is left in the script.
    benchmark = load_script("benchmark")
    assert benchmark.SyncCounter is SyncCounter
    with open(benchmark.__file__) as handle:
        assert "class SyncCounter" not in handle.read()


def chunked_weights(model, guide, x, num_samples, jit, proposal="guide", seed=11):
    """All K x N log weights from log_weight_chunks, each chunk seeded as estimate() seeds it."""
    log_weights = torch.empty(num_samples, x.shape[0])
    with torch.no_grad(), pyro.validation_enabled(False), chunk_seeds(seed):
        for data_slice, particles, chunk in log_weight_chunks(
                model, guide, x, num_samples, max_batch_elements=2 * num_samples, jit=jit,
                proposal=proposal):
            log_weights[particles, data_slice] = chunk
    return log_weights


@pytest.mark.parametrize("prior,guide_name,likelihood", [
    ("standard", "diagonal", "bernoulli"), ("vamp", "iaf", "bernoulli"),
    ("flow", "fullcov", "gaussian-learned"), ("mog", "diagonal", "continuous-bernoulli")])
@pytest.mark.parametrize("proposal", ["guide", "prior", "mixture"])
def test_traced_chunks_give_the_log_weights_of_the_plain_path(
        prior, guide_name, likelihood, proposal):
    model, guide = build(small_config(prior=prior, prior_options=components(prior),
                                      guide=guide_name, likelihood=likelihood))
    x = data(likelihood, num_data=7)        # chunks of 2 points: 3 traced, 1 of another shape
    plain = chunked_weights(model, guide, x, 40, False, proposal)
    traced = chunked_weights(model, guide, x, 40, True, proposal)
    assert torch.isfinite(plain).all()
    assert torch.equal(traced, plain)                 # the same operations, bit for bit
    # Another seed gives other weights: the traced graph draws its own random numbers.
    assert not torch.allclose(chunked_weights(model, guide, x, 40, True, proposal, seed=12),
                              plain)


def test_traced_chunks_read_the_parameters_as_they_are_now():
    model, guide = build(small_config())
    x = data("bernoulli", num_data=6)
    before = chunked_weights(model, guide, x, 30, True)
    with torch.no_grad():
        for parameter in model.decoder.parameters():
            parameter.mul_(0.5)
    after = chunked_weights(model, guide, x, 30, True)
    assert not torch.allclose(after, before)
    assert torch.allclose(after, chunked_weights(model, guide, x, 30, False), rtol=1e-6,
                          atol=1e-6)


def test_the_estimators_trace_only_without_gradients(monkeypatch):
    """By default the chunks are traced when gradients and Pyro's checks are off, as in the
    estimators; objectives that differentiate through the weights (the IWAE bound) run the
    plain path."""
    model, guide = build(small_config())
    x = data("bernoulli", num_data=6)
    traced = []
    original = log_weights_module._TracedChunks.__call__

    def spy(self, *args):
        traced.append(args[1])
        return original(self, *args)

    monkeypatch.setattr(log_weights_module._TracedChunks, "__call__", spy)
    with torch.no_grad(), pyro.validation_enabled(False):
        list(log_weight_chunks(model, guide, x, 20, max_batch_elements=40))
    assert traced == [20, 20, 20]
    traced.clear()
    with pyro.validation_enabled(False):
        log_weights = log_importance_weights(model, guide, x, 20, max_batch_elements=40)
    assert traced == [] and log_weights.requires_grad
    # Nor with Pyro's checks on, which read values; and two chunks are not worth a trace.
    with torch.no_grad():
        list(log_weight_chunks(model, guide, x, 20, max_batch_elements=40))
    with torch.no_grad(), pyro.validation_enabled(False):
        list(log_weight_chunks(model, guide, x, 20, max_batch_elements=60))
    assert traced == []
    estimate("importance", model, guide, x, 20, max_batch_elements=40)
    assert traced == [20, 20, 20]
    with log_weights_module.chunk_jit(False):          # how the benchmark times the plain path
        estimate("importance", model, guide, x, 20, max_batch_elements=40)
    assert traced == [20, 20, 20] and not log_weights_module._JIT_DEFAULTS


def test_a_guide_the_jit_cannot_trace_is_scored_plainly_with_a_warning():
    from inference.guides import LocalGuide
    from inference.log_weights import JitFallbackWarning

    model, guide = build(small_config())
    x = data("bernoulli", num_data=6)
    local = LocalGuide(guide, x)
    plain = chunked_weights(model, local, x, 20, False)
    with pytest.warns(JitFallbackWarning, match=r"the JIT could not trace this model and guide "
                      r"\(UntraceableError: guides.py:\d+: Converting a tensor"):
        fallback = chunked_weights(model, local, x, 20, None)
    assert torch.equal(fallback, plain)
    with pytest.raises(ValueError, match="could not trace this model and guide"):
        chunked_weights(model, local, x, 20, True)


def test_data_are_still_checked_with_the_same_messages(tmp_path):
    config = small_config()
    dataset = load_dataset(config)
    dataset.train.images[3, 4] = float("nan")
    model, guide = build(config)
    with pytest.raises(ValueError, match=r"NaN or infinite values \(1 of"):
        fit(model, guide, dataset, config, str(tmp_path), progress=False, log=lambda *a: None)
    model, _ = build(config)
    with pytest.raises(ValueError, match="needs binary data"):
        estimate("importance", model, guide, torch.rand(3, 50), 10)
    with pytest.raises(ValueError, match=r"expected data of shape \(batch_size, 50\)"):
        estimate("importance", model, guide, torch.rand(3, 49).bernoulli(), 10)


def test_a_time_budget_stops_at_an_epoch_boundary_and_resume_finishes(tmp_path):
    config = small_config(num_epochs=3)
    dataset = load_dataset(config)
    pyro.set_rng_seed(0)
    model, guide = build(config)
    said = []
    summary = fit(model, guide, dataset, config, str(tmp_path), progress=False,
                  log=said.append, time_budget=1e-6)
    assert summary["epochs"] == 1
    assert any("stopping after epoch 1 of 3" in line and "--resume" in line for line in said)
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 1
    summary = run_main("train", "--out", tmp_path, "--resume", "--no-progress")
    assert summary["epochs"] == 3


def test_time_budget_must_be_positive(tmp_path, capsys):
    from conftest import SMALL, refused

    line = refused(capsys, "train", *SMALL, "--time-budget", "0", "--out", tmp_path / "r")
    assert "--time-budget must be a positive number of minutes, got 0.0" in line


class ConstantOnTheCPU(Prior):
    """A prior that breaks the device rule: it makes its tensors on the CPU in forward."""

    def forward(self):
        return dist.Normal(torch.zeros(self.z_dim), torch.ones(self.z_dim)).to_event(1)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("guide_name", GUIDES)
@pytest.mark.parametrize("prior", PRIORS)
def test_every_part_keeps_its_tensors_on_the_models_device(prior, guide_name, likelihood):
    """Moved to the "meta" device (shapes without data), every combination still computes its
    log weights: no part makes a tensor on a fixed device, which on a GPU would fail."""
    model, guide = build(small_config(prior=prior, prior_options=components(prior),
                                      guide=guide_name, likelihood=likelihood))
    model, guide = model.to("meta"), guide.to("meta")
    x = torch.empty(4, 50, device="meta")
    with torch.no_grad(), pyro.validation_enabled(False):
        log_weights = log_importance_weights(model, guide, x, 3, nesting=1)
    assert log_weights.device.type == "meta" and log_weights.shape == (3, 4)


def test_the_device_check_catches_a_tensor_made_on_the_cpu():
    model, guide = build(small_config())
    model.prior = ConstantOnTheCPU(2)
    model, guide = model.to("meta"), guide.to("meta")
    with torch.no_grad(), pyro.validation_enabled(False), pytest.raises(Exception):
        log_importance_weights(model, guide, torch.empty(4, 50, device="meta"), 3, nesting=1)


#: the smallest benchmark: a few steps of a tiny network, an estimate of 3 points
TINY_BENCHMARK = ("--quick", "--batch-sizes", "16", "--num-samples", "30", "--eval-data", "3",
                  "--blocks", "2", "--steps", "3", "--eval-blocks", "1", "--hidden-dims", "16",
                  "--z-dim", "2", "--ais-data", "3", "--ais-chains", "4", "--ais-steps", "2",
                  "--ais-leapfrog", "2", "--ais-blocks", "1", "--device", "cpu")
#: where the benchmark's results are kept in the repository: it must not write there untold
BENCHMARK_DOCS = (os.path.join(ROOT, "docs", "benchmarks.md"),
                  os.path.join(ROOT, "docs", "results", "benchmarks"))


def files_and_times(paths):
    """{path: (bytes, mtime in ns)} of every file at or under ``paths``."""
    found = {}
    for path in paths:
        files = [path] if os.path.isfile(path) else [
            os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names]
        for name in files:
            with open(name, "rb") as handle:
                found[name] = (handle.read(), os.stat(name).st_mtime_ns)
    return found


def test_benchmark_writes_nothing_untold_and_markdown_only_where_asked(tmp_path, monkeypatch,
                                                                       capsys):
    """Without --out and --markdown the benchmark prints its tables and writes no file: not
    into the repository's docs, nor into the folder it runs in. --markdown appends to the file
    it names, keeping what the file held."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)                 # a file written to a relative default lands here
    before = files_and_times(BENCHMARK_DOCS)
    assert os.path.join(ROOT, "docs", "benchmarks.md") in before
    report = run_main("benchmark", *TINY_BENCHMARK, "--variants", "jit")
    printed = capsys.readouterr().out
    assert "| batch | loss | project ms/step |" not in printed     # no Markdown, and no file
    assert "project ms/step" in printed and "appended" not in printed
    assert files_and_times(BENCHMARK_DOCS) == before
    assert list(here.iterdir()) == []
    assert [row["variant"] for row in report["training"]] == ["jit"]

    out, markdown = tmp_path / "bench.json", tmp_path / "x.md"
    markdown.write_text("# earlier results\n")
    report = run_main("benchmark", *TINY_BENCHMARK, "--variants", "jit,plain", "--out", out,
                      "--markdown", markdown)
    written = json.loads(out.read_text())
    assert [row["variant"] for row in written["training"]] == ["jit", "plain"]
    for row in report["training"]:
        assert row["syncs_per_step"] == 0 and row["ratio"] > 0
    assert [row["variant"] for row in report["evaluation"]] == ["jit", "plain"]
    for evaluation in report["evaluation"]:
        assert evaluation["syncs_per_chunk"] == 0 and evaluation["num_samples"] == 30
    assert report["environment"]["threads"] == torch.get_num_threads()
    # AIS from the guide against its floor; its steps read nothing back from the device (the
    # estimate's end reads its result, fewer than one sync a step)
    ais, = report["ais"]
    assert (ais["chains"], ais["steps"], ais["leapfrog"], ais["num_data"]) == (4, 2, 2, 3)
    assert ais["ratio"] > 0 and ais["syncs_per_step"] < 2
    text = markdown.read_text()
    assert text.startswith("# earlier results\n\n## ")          # appended, nothing lost
    assert "| batch | loss | project ms/step |" in text and "| K | chunks | points |" in text
    assert "| points | chains | steps | leapfrog | project s | floor s |" in text
    assert f"appended the tables to {markdown}" in capsys.readouterr().out
    assert files_and_times(BENCHMARK_DOCS) == before
    assert list(here.iterdir()) == []


def test_benchmark_markdown_appends_to_a_file_it_makes_and_keeps_what_it_held(tmp_path):
    benchmark = load_script("benchmark")
    path = tmp_path / "new" / "history.md"
    benchmark.append_markdown(str(path), "## one\n")
    assert path.read_text() == "## one\n"                # made, with its folder
    benchmark.append_markdown(str(path), "## two\n")
    assert path.read_text() == "## one\n\n## two\n"
    path.write_text("no newline at the end")
    benchmark.append_markdown(str(path), "## three\n")
    assert path.read_text() == "no newline at the end\n\n## three\n"
    assert sorted(os.listdir(path.parent)) == ["history.md"]     # no temporary file left


@pytest.mark.parametrize("prior", PRIORS)
def test_a_guide_that_reads_its_data_into_python_is_never_compiled(prior):
    """The local guide looks its rows up by the data's values: a traced loss would keep the
    rows of the first minibatch for every later one. The tracer's warning about it stops the
    JIT, and the step computes the plain loss; standard parts, whose only Python reads are of
    shapes, do compile."""
    from inference.guides import LocalGuide
    from inference.log_weights import UntraceableError, strict_tracing
    from inference.objectives import make_objective

    model, guide = build(small_config(prior=prior, prior_options=components(prior)))
    x = data("bernoulli", num_data=6)
    local = LocalGuide(guide, x)
    loss = make_objective(small_config().training)[0].loss_function(jit=True)
    with pytest.raises(UntraceableError, match=r"guides.py:\d+: Converting a tensor to a "
                       "NumPy array"):
        with pyro.validation_enabled(False), strict_tracing():
            loss(model, local, x, num_data=60, batch_size=6)
    pyro.clear_param_store()
    with pyro.validation_enabled(False), strict_tracing():
        value = make_objective(small_config().training)[0].loss_function(jit=True)(
            model, guide, x, num_data=60, batch_size=6)
    assert torch.isfinite(value)
    # A training step with the local guide says it trains without the JIT.
    config = small_config()
    said = []
    step = TrainingStep(model, local, config.training, log=said.append)
    step(x, 60)
    assert said and "could not trace" in said[0] and "NumPy" in said[0]

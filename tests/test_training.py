"""SVI training: it learns, it checkpoints, it resumes exactly, and it fails clearly."""

import csv
import json
import math
import os

import pyro
import pytest
import torch

from conftest import small_config
from inference.build import build
from inference.checkpoint import (BEST, LAST, CheckpointError, load_checkpoint, restore,
                                  save_checkpoint)
from models.data import load_dataset
from inference.training import GRAPH_WARMUP_STEPS, TrainingStep, fit, mean_elbo, write_metrics
from models.base.config import ConfigError
from models.utilities.device import resolve_device

RUN_FILES = {"config.json", "metrics.csv", "checkpoint.pt", "best.pt", "summary.json"}


def train(config, out_dir, checkpoint=None, device="cpu"):
    if checkpoint is None:
        pyro.set_rng_seed(config.seed)
    dataset = load_dataset(config, device)
    model, guide = build(config)
    model, guide = model.to(device), guide.to(device)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        guide.load_state_dict(checkpoint["guide"])
    summary = fit(model, guide, dataset, config, str(out_dir), checkpoint=checkpoint,
                  progress=False, log=lambda line: None)
    return model, guide, dataset, summary


def test_training_on_synthetic_data_improves_the_elbo(tmp_path):
    config = small_config(num_epochs=6)
    pyro.set_rng_seed(0)
    dataset = load_dataset(config)
    model, guide = build(config)
    before = mean_elbo(model, guide, dataset.split("test"))
    model, guide, dataset, summary = train(config, tmp_path)
    after = mean_elbo(model, guide, dataset.split("test"))
    # An untrained decoder sits near 50 log 2 = 34.7 nats; training must win at least 8 nats.
    assert after > before + 8.0, (before, after)
    assert summary["test_elbo"] == pytest.approx(after, abs=0.5)
    assert RUN_FILES <= set(os.listdir(tmp_path))
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert set(rows[0]) == {"epoch", "train_elbo", "validation_elbo", "kl_weight", "seconds",
                            "run"}
    assert {row["run"] for row in rows} == {summary["run"]}
    assert float(rows[-1]["validation_elbo"]) > float(rows[0]["validation_elbo"])
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model"]["z_dim"] == 2


def test_metrics_of_a_history_from_before_kl_warmup_record_a_weight_of_one(tmp_path):
    legacy = {"epoch": 1, "train_elbo": -120.5, "validation_elbo": -118.25, "seconds": 3.0}
    current = {"epoch": 2, "train_elbo": -110.0, "validation_elbo": -109.0, "kl_weight": 0.5,
               "seconds": 2.0}
    write_metrics(str(tmp_path), [legacy, current])
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["kl_weight"]) for r in rows] == [1.0, 0.5]
    assert float(rows[0]["validation_elbo"]) == -118.25


def test_checkpoint_round_trip_rebuilds_model_and_guide_from_config(tmp_path):
    model, guide, dataset, summary = train(small_config(num_epochs=2), tmp_path)
    checkpoint = load_checkpoint(str(tmp_path))
    assert checkpoint["path"].endswith(BEST)
    assert checkpoint["epoch"] == summary["best_epoch"]
    restored_model, restored_guide, config = restore(checkpoint)
    for original, restored in ((model, restored_model), (guide, restored_guide)):
        for (name, a), (_, b) in zip(original.state_dict().items(),
                                     restored.state_dict().items()):
            assert torch.equal(a, b), name
    x = dataset.split("test").data()[:50]
    pyro.set_rng_seed(1)
    expected = guide.distribution(x).log_prob(torch.zeros(50, 2))
    assert torch.equal(restored_guide.distribution(x).log_prob(torch.zeros(50, 2)), expected)
    last = load_checkpoint(str(tmp_path / LAST))
    assert last["epoch"] == 2 and len(last["metrics"]) == 2
    assert set(last) >= {"config", "model", "guide", "optimizer", "epoch", "rng", "best"}


def test_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path):
    config = small_config(num_epochs=3)
    straight, _, _, straight_summary = train(config, tmp_path / "straight")

    train(config.updated({"training.num_epochs": 1}), tmp_path / "split")
    checkpoint = load_checkpoint(str(tmp_path / "split" / LAST))
    assert checkpoint["epoch"] == 1
    pyro.clear_param_store()
    # Resuming must restore the generator from the checkpoint, whatever its state before.
    torch.manual_seed(12345)
    resumed, _, _, resumed_summary = train(config, tmp_path / "split", checkpoint=checkpoint)

    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed_summary["test_elbo"] == straight_summary["test_elbo"]
    with open(tmp_path / "straight" / "metrics.csv") as f, \
            open(tmp_path / "split" / "metrics.csv") as g:
        strip = [[row[:3] for row in csv.reader(h)] for h in (f, g)]
    assert strip[0] == strip[1]


def test_same_seed_gives_the_same_run_on_cpu(tmp_path):
    _, _, _, first = train(small_config(num_epochs=1), tmp_path / "a")
    _, _, _, second = train(small_config(num_epochs=1), tmp_path / "b")
    _, _, _, third = train(small_config(num_epochs=1, seed=1), tmp_path / "c")
    assert first["test_elbo"] == second["test_elbo"]
    assert first["test_elbo"] != third["test_elbo"]


def test_subnormal_running_averages_are_set_to_zero_and_nothing_else():
    config = small_config()
    model, guide = build(config)
    dataset = load_dataset(config, torch.device("cpu"))
    step = TrainingStep(model, guide, config.training, log=lambda *_: None)
    step(dataset.train.data(torch.arange(100)), len(dataset.train))
    # Two subnormals, then normal numbers (2e-38 is just above the smallest, 1.18e-38) and 0.
    planted = torch.tensor([1e-39, -1e-40, 2e-38, -2e-38, 0.0, 0.5])
    states = list(step.optimizer.state.values())
    for state in states:
        head = state["exp_avg"].view(-1)[:6]
        head.copy_(planted[:len(head)])
    before = [{name: value.clone() for name, value in state.items()} for state in states]
    step.flush_subnormals()
    expected = torch.tensor([0.0, 0.0, 2e-38, -2e-38, 0.0, 0.5])
    for old, state in zip(before, states):
        average = state["exp_avg"].view(-1)
        assert torch.equal(average[:6], expected[:len(average[:6])])
        assert torch.equal(average[6:], old["exp_avg"].view(-1)[6:])
        assert torch.equal(state["exp_avg_sq"], old["exp_avg_sq"])
        assert torch.equal(state["step"], old["step"])


def test_training_flushes_the_optimizer_every_flush_every_steps(tmp_path, monkeypatch):
    config = small_config(num_epochs=2)
    calls = []
    monkeypatch.setattr("inference.training.callbacks.FLUSH_EVERY", 3)
    monkeypatch.setattr(TrainingStep, "flush_subnormals", lambda self: calls.append(1))
    train(config, tmp_path)
    num_batches = math.ceil(len(load_dataset(config, torch.device("cpu")).train) / 100)
    assert num_batches >= 3 and len(calls) == 2 * (num_batches // 3)


def test_jit_training_gives_the_elbos_of_eager_training(tmp_path):
    """The same seed and data with and without the JIT: the same per-epoch training and
    validation ELBOs and test ELBO. Measured on the CPU (torch 2.14): equal to the last digit;
    the tolerance leaves room for float32 operations that the JIT fuses or reorders."""
    elbos = {}
    for jit in (True, False):
        pyro.clear_param_store()
        out_dir = tmp_path / ("jit" if jit else "eager")
        _, _, _, summary = train(small_config(num_epochs=2, jit=jit, batch_size=100), out_dir)
        with open(out_dir / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        elbos[jit] = [float(row[key]) for row in rows
                      for key in ("train_elbo", "validation_elbo")] + [summary["test_elbo"]]
    assert len(elbos[True]) == 5
    assert elbos[True] == pytest.approx(elbos[False], rel=1e-5, abs=0)
    # The two epochs trained: the numbers compared are not those of an untrained model.
    assert elbos[False][2] > elbos[False][0] + 1.0


class _OnCuda1(torch.Tensor):
    """A CPU tensor that says it lives on cuda:1 (for the fake CUDA below)."""

    is_cuda = True
    device = torch.device("cuda", 1)


def test_the_cuda_graph_is_captured_and_replayed_on_the_device_of_the_data(monkeypatch):
    """--device cuda:1 in one process leaves cuda:0 the current device: the warm-up steps, the
    capture and the replays of the step's CUDA graph must all name cuda:1. Faked on the CPU:
    torch.cuda's calls record the device each is made on (the current one where none is named);
    the step's loss and Adam run for real."""
    calls, current = [], [0]

    class Device:
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            self.previous, current[0] = current[0], self.index

        def __exit__(self, *error):
            current[0] = self.previous

    class Stream:
        def __init__(self, device=None):
            self.index = current[0] if device is None else torch.device(device).index
            calls.append(("stream", self.index))

        def wait_stream(self, other):
            calls.append(("wait", other.index))

    class StreamContext(Device):   # torch.cuda.stream also makes the stream's device current
        def __init__(self, stream):
            self.index = stream.index

    class Graph:
        def replay(self):
            calls.append(("replay", current[0]))

    class Capture:
        #: torch.cuda.graph's own stream, made at the first capture of the process (on cuda:0)
        default_stream = Stream(0)

        def __init__(self, graph, stream=None):
            self.stream = stream or self.default_stream

        def __enter__(self):
            calls.append(("capture", self.stream.index))
            calls.append(("capture, current device", current[0]))

        def __exit__(self, *error):
            pass

    calls.clear()
    monkeypatch.setattr(torch.cuda, "device", Device)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", StreamContext)
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    config = small_config(jit=True)
    model, guide = build(config)
    step = TrainingStep(model, guide, config.training, log=pytest.fail)
    assert step.use_graphs

    def eager(x, num_data, kl_weight, fraction):
        calls.append(("eager step", current[0]))
        return torch.zeros(())

    def jit_loss(model, guide, x, num_data, batch_size):
        return sum((p ** 2).sum() for p in step.params)

    step._eager, step.jit_loss = eager, jit_loss
    x = torch.rand(10, 50).bernoulli().as_subclass(_OnCuda1)
    before = [p.detach().clone() for p in step.params]
    for _ in range(GRAPH_WARMUP_STEPS + 2):
        step(x, 100)
        assert current[0] == 0   # the step leaves the current device as it found it
    assert [what for what, _ in calls].count("eager step") == GRAPH_WARMUP_STEPS
    assert [what for what, _ in calls].count("replay") == 2   # at the capture, and after
    assert [what for what, _ in calls].count("capture") == 1
    assert all(index == 1 for _, index in calls), calls
    # The replays stepped Adam on the gradients the capture made.
    assert not any(torch.equal(a, b) for a, b in zip(before, step.params))


def test_corrupt_checkpoint_gets_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint .*corrupt, truncated"):
        load_checkpoint(str(path))
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="is not a checkpoint of this project"):
        load_checkpoint(str(path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*expected best.pt or checkpoint"):
        load_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*give a run folder"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_truncated_checkpoint_gets_a_clear_error(tmp_path):
    train(small_config(num_epochs=1), tmp_path)
    data = (tmp_path / LAST).read_bytes()
    (tmp_path / LAST).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="it is corrupt, truncated or not one of"):
        load_checkpoint(str(tmp_path / LAST))


def test_mismatched_checkpoint_gets_a_clear_error(tmp_path):
    config = small_config(x_dim=50)
    model, guide = build(config)
    save_checkpoint(str(tmp_path / BEST), config=config.updated({"model.z_dim": 3}), model=model,
                    guide=guide, optimizer=None, epoch=1, metrics=[], best={})
    with pytest.raises(CheckpointError, match=r"does not fit the model its config describes"):
        restore(load_checkpoint(str(tmp_path)))


def test_asking_for_cuda_without_it_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda was asked for but CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")


def test_bad_training_settings_are_rejected():
    with pytest.raises(ConfigError, match=r"batch_size \(--batch-size\) must be at least 1"):
        small_config(batch_size=0)
    with pytest.raises(ConfigError, match=r"learning_rate \(--learning-rate\) must be positive"):
        small_config(learning_rate=-1.0)
    with pytest.raises(ConfigError, match=r"kl_warmup_epochs .* must be a finite number"):
        small_config(kl_warmup_epochs=float("nan"))


@pytest.mark.gpu
def test_training_on_gpu_puts_everything_on_the_device(tmp_path):
    model, guide, dataset, summary = train(small_config(num_epochs=1), tmp_path, device="cuda")
    assert dataset.train.images.is_cuda
    assert all(p.is_cuda for p in model.parameters())
    assert all(p.is_cuda for p in guide.parameters())
    checkpoint = load_checkpoint(str(tmp_path), map_location="cpu")
    restored_model, restored_guide, _ = restore(checkpoint, "cpu")
    for original, restored in ((model, restored_model), (guide, restored_guide)):
        for (name, a), (_, b) in zip(original.state_dict().items(),
                                     restored.state_dict().items()):
            assert b.device.type == "cpu", name
            assert torch.equal(a.cpu(), b), name

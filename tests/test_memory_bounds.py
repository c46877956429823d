"""Memory stays bounded for any K, and sizes that cannot fit are refused with one line before
anything is allocated."""

import json
import os
import time

import pytest
import torch

from conftest import TINY, refused, small_config
from evaluation.diagnostics import WeightSummary, psis_tail_size
from evaluation.estimators import estimate
from inference import log_weights as log_weights_module
from inference.build import build
from inference.checkpoint import BEST
from models.utilities.device import MemoryTooSmall, available_memory


def resident_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Enough(Exception):
    """Raised after a few chunks: K = 10^9 would take hours to finish."""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc")
def test_an_estimate_with_k_of_a_billion_keeps_its_memory_under_its_bound(monkeypatch):
    """K = 10^9 on 100 points: 10^7 chunks of 10^4 weights. Their list alone once took
    gigabytes; now memory is the diagnostics' state, 8 bytes x 100 points x (M + 1) largest
    weights with M = 3 sqrt(K) (76 MB), plus one chunk (here 10^4 weights), whatever K is."""
    torch.manual_seed(0)
    model, guide = build(small_config(z_dim=2, x_dim=12, hidden_dims=[8]))
    x = torch.rand(100, 12).bernoulli()
    num_samples, budget = 10 ** 9, 10 ** 4
    bound = 8 * 100 * (psis_tail_size(num_samples) + 1) + 64 * 2 ** 20   # + 64 MB of slack
    plain = log_weights_module._chunk_log_weights
    calls = []

    def few_chunks(*args):
        calls.append(1)
        if len(calls) > 5:
            raise Enough()
        return plain(*args)

    monkeypatch.setattr(log_weights_module, "_chunk_log_weights", few_chunks)
    before, began = resident_bytes(), time.perf_counter()
    # Plain chunks, so that each one passes through few_chunks (a traced graph would not).
    with pytest.raises(Enough), log_weights_module.chunk_jit(False):
        estimate("importance", model, guide, x, num_samples, max_batch_elements=budget)
    grown = resident_bytes() - before
    assert grown < bound, (grown, bound)
    assert time.perf_counter() - began < 30   # the first chunks come at once
    # The state that the bound counts is all an estimate keeps, whatever K is.
    summary = WeightSummary(100, num_samples, log_moments=False)
    assert summary.top.numel() * 8 == 8 * 100 * (psis_tail_size(num_samples) + 1)


def test_tiles_are_counted_as_they_are_listed():
    for num_data, num_samples, budget in ((7, 10, 25), (100, 3000, 700), (3, 5, 1),
                                          (10, 1, 4), (1, 1, 1)):
        listed = list(log_weights_module.chunks(num_data, num_samples, budget))
        counted = log_weights_module.tile_shapes(num_data, num_samples, budget)
        shapes = [(d.stop - d.start, p.stop - p.start) for d, p in listed]
        assert sum(counted.values()) == len(listed)
        assert all(counted[shape] == shapes.count(shape) for shape in set(shapes))
    assert sum(log_weights_module.tile_shapes(100, 10 ** 9, 10 ** 4).values()) == 10 ** 7


def test_bdmc_of_a_billion_points_is_refused_in_one_line_before_any_estimate(
        tiny_run, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(log_weights_module, "_chunk_log_weights",
                        lambda *args: calls.append(args))
    line = refused(capsys, "evaluate", tiny_run, "--num-data", "2", "--bdmc", "1000000000")
    assert "BDMC on 1000000000 simulated points would hold" in line and "--bdmc" in line
    assert calls == []


# ---------------------------------------------------------------------------------------------
# 6. Sizes that cannot fit

HUGE = 10 ** 12


@pytest.mark.parametrize("flags, message", [
    (["--z-dim", str(HUGE)], "z_dim=1000000000000"),
    (["--hidden-dims", str(HUGE)], "hidden_dims=[1000000000000]"),
    (["--synthetic-x-dim", str(10 ** 9)], "synthetic data of 2300 points"),
    (["--hidden-dims", f"64,{HUGE}"], "hidden_dims=[64, 1000000000000]"),
])
def test_sizes_that_cannot_fit_are_refused_in_one_line(flags, message, tmp_path, capsys):
    args = list(TINY)
    for flag, value in zip(flags[::2], flags[1::2]):
        args[args.index(flag) + 1] = value
    line = refused(capsys, "train", *args, "--num-epochs", "1", "--out", tmp_path / "run")
    assert message in line and "more than the" in line and "free on cpu" in line


def test_sizes_that_cannot_fit_in_a_stored_run_are_refused_in_one_line(tiny_run, tmp_path,
                                                                       capsys):
    # In a checkpoint that is evaluated ...
    checkpoint = torch.load(tiny_run / BEST, weights_only=True)
    checkpoint["config"]["model"]["architecture"]["options"]["hidden_dims"] = [HUGE]
    torch.save(checkpoint, tmp_path / "huge.pt")
    line = refused(capsys, "evaluate", tmp_path / "huge.pt", "--num-data", "2")
    assert "hidden_dims=[1000000000000]" in line
    # ... and in the config.json of a run restarted with --resume.
    folder = tmp_path / "restart"
    folder.mkdir()
    config = json.loads((tiny_run / "config.json").read_text())
    config["model"]["z_dim"] = HUGE
    (folder / "config.json").write_text(json.dumps(config))
    line = refused(capsys, "train", "--out", folder, "--resume", "--no-progress")
    assert "z_dim=1000000000000" in line


def test_a_model_that_fits_is_built_as_before():
    torch.manual_seed(0)
    model, guide = build(small_config())
    torch.manual_seed(0)
    with pytest.raises(MemoryTooSmall):
        build(small_config(z_dim=HUGE))
    # The size check builds on the meta device: it draws no random numbers.
    torch.manual_seed(0)
    again, _ = build(small_config())
    for (name, value), other in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(value, other), name
    assert available_memory() is None or available_memory() > 0

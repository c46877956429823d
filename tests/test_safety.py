"""Reliability and security: a run folder from elsewhere runs no code, a crash at any write or
a second writer loses or mixes nothing, any K runs in bounded memory, a diverging run stops, and
every bad value gets one clear line. One test (or more) per case of issue 11."""

import csv
import json
import os
import shutil
import signal
import struct
import sys

import numpy as np
import pytest
import torch

from conftest import SMALL, TINY, refused, run_main, small_config
from evaluation.diagnostics import TAIL_BYTES, WeightSummary, summarize_weights
from evaluation.estimators import estimate
from inference import log_weights as log_weights_module
from inference.build import build
from inference.checkpoint import BEST, LAST, CheckpointError, load_checkpoint
from models.data import DataError, read_mnist
from inference.run_folder import RunFolder
from models.utilities import files
from models.utilities.entry_points import run


def planted(run_dir, target, **config_changes):
    """A copy of ``run_dir`` at ``target`` whose best.pt (and config) say ``config_changes``
    in the model section: what a run folder from elsewhere could hold."""
    shutil.copytree(run_dir, target)
    checkpoint = torch.load(target / BEST, weights_only=True)
    checkpoint["config"]["model"].update(config_changes)
    torch.save(checkpoint, target / BEST)
    return target


# ---------------------------------------------------------------------------------------------
# 1. Loading a run never imports or calls what the user did not allow

def test_a_checkpoint_naming_popen_runs_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    sentinel = tmp_path / "FILE"
    folder = planted(tiny_run, tmp_path / "evil",
                     guide={"name": "subprocess:Popen", "options": {}},
                     x_dim=["touch", str(sentinel)])
    for trust in ([], ["--trust-run"]):
        line = refused(capsys, "evaluate", folder, "--num-data", "2", *trust)
        assert "x_dim must be a whole number or null, got ['touch'" in line
    options = {"args": ["touch", str(sentinel)]}
    folder = planted(tiny_run, tmp_path / "evil2",
                     guide={"name": "subprocess:Popen", "options": options})
    line = refused(capsys, "evaluate", folder, "--num-data", "2")
    assert "names code to import: the guide 'subprocess:Popen'" in line
    # Even trusted, a class that is not a Guide is never called.
    line = refused(capsys, "evaluate", folder, "--num-data", "2", "--trust-run")
    assert "must be a class derived from inference.guides.Guide" in line
    assert not sentinel.exists()


def test_a_run_folder_never_imports_its_own_module(tiny_run, tmp_path, capsys, monkeypatch):
    sentinel = tmp_path / "RAN"
    folder = planted(tiny_run, tmp_path / "shipped",
                     prior={"name": "helpers_shipped:Prior", "options": {}})
    (folder / "helpers_shipped.py").write_text(
        f"open({str(sentinel)!r}, 'w').close()\nfrom models.priors import Prior\n")
    monkeypatch.chdir(folder)          # evaluated from inside the folder: it is on the path
    line = refused(capsys, "evaluate", folder, "--num-data", "2")
    assert "names code to import: the prior 'helpers_shipped:Prior'" in line
    line = refused(capsys, "evaluate", folder, "--num-data", "2", "--trust-run")
    assert "would import module 'helpers_shipped' from the run folder" in line
    assert not sentinel.exists()
    assert "helpers_shipped" not in sys.modules


# ---------------------------------------------------------------------------------------------
# 2. A crash between any two writes, then --resume, ends where an uninterrupted run ends

class Crash(BaseException):
    """A kill at a write: not an error any code may catch."""


ATOMIC_PATH = files.atomic_path


def crash_at(write_number, monkeypatch):
    """Make the ``write_number``-th atomic write die half way: its temporary file is left
    behind (as after kill -9) and nothing is renamed. 0: count the writes, never die."""
    original = ATOMIC_PATH
    count = [0]

    def dying(path):
        count[0] += 1
        if count[0] == write_number:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            open(os.path.join(directory, f".{os.path.basename(path)}.crash.tmp"), "w").close()
            raise Crash()
        return original(path)

    monkeypatch.setattr(files, "atomic_path", dying)
    return count


def run_state(out):
    """What a finished run folder holds, without timings."""
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("seconds_per_epoch")
    run = summary.pop("run")      # each run its own identity, the same in all of its files
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    metrics = [{k: v for k, v in row.items() if k not in ("seconds", "run")} for row in rows]
    states = {name: load_checkpoint(str(out / name), trust=True) for name in (LAST, BEST)}
    assert {row["run"] for row in rows} == {run}
    assert json.loads((out / "config.json").read_text())["run"] == run
    assert all(state["run"] == run for state in states.values())
    return summary, metrics, {name: (c["epoch"], c["model"], c["guide"])
                              for name, c in states.items()}


def same_state(a, b):
    assert a[0] == b[0] and a[1] == b[1]
    for name in (LAST, BEST):
        assert a[2][name][0] == b[2][name][0], name
        for part in (1, 2):
            for key, value in a[2][name][part].items():
                assert torch.equal(value, b[2][name][part][key]), (name, key)


def test_a_crash_at_every_write_then_resume_ends_equal_to_an_uninterrupted_run(
        tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    counter = crash_at(0, monkeypatch)           # counts, never crashes
    run_main("train", *TINY, "--num-epochs", "3", "--out", reference)
    writes = counter[0]
    expected = run_state(reference)
    assert writes >= 13  # config, 3 x (checkpoint, best, metrics, curves), summary
    for write in range(1, writes + 1):
        out = tmp_path / f"crash{write}"
        crash_at(write, monkeypatch)
        with pytest.raises(Crash):
            run_main("train", *TINY, "--num-epochs", "3", "--out", out)
        crash_at(0, monkeypatch)
        # The same command with --resume: it continues whatever the crash left.
        run_main("train", *TINY, "--num-epochs", "3", "--out", out, "--resume")
        same_state(run_state(out), expected)
        assert not list(out.glob(".*.tmp")), write


def test_best_pt_lagging_behind_the_checkpoint_is_repaired(tiny_run, tmp_path):
    """The crash of issue 11 item 2: checkpoint.pt of a better epoch written, best.pt not."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    old = load_checkpoint(str(out / LAST), trust=True)
    assert old["best"]["epoch"] == 2
    first = tmp_path / "first"
    run_main("train", *TINY, "--num-epochs", "1", "--out", first)
    # best.pt of epoch 1, as if not yet replaced: the same seed gives the same epoch 1, and the
    # file of this run would carry this run's identity.
    lagging = torch.load(first / BEST, weights_only=True)
    lagging["run"] = old["run"]
    torch.save(lagging, out / BEST)
    summary = run_main("train", "--out", out, "--resume", "--num-epochs", "2", "--no-progress")
    assert load_checkpoint(str(out / BEST), trust=True)["epoch"] == 2
    assert summary == {**json.loads((tiny_run / "summary.json").read_text()),
                       "seconds_per_epoch": summary["seconds_per_epoch"]}


def test_a_folder_mixing_two_runs_is_refused(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    other = tmp_path / "other"
    run_main("train", *TINY, "--num-epochs", "2", "--out", other, "--hidden-dims", "4")
    shutil.copy(other / BEST, out / BEST)
    line = refused(capsys, "train", "--out", out, "--resume", "--num-epochs", "3")
    assert "belongs to another run" in line


# ---------------------------------------------------------------------------------------------
# 3. and 4. One writer at a time; nothing that exists is overwritten unasked

def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path, capsys):
    out = tmp_path / "run"
    with RunFolder(str(out)):
        line = refused(capsys, "train", *TINY, "--num-epochs", "1", "--out", out)
    assert f"is in use by process {os.getpid()}" in line
    assert not (out / "config.json").exists()
    run_main("train", *TINY, "--num-epochs", "1", "--out", out)  # free again


def test_files_of_an_earlier_run_are_not_overwritten_without_being_asked(
        tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    (out / LAST).unlink()
    before = {name: (out / name).read_bytes() for name in (BEST, "metrics.csv", "summary.json")}
    line = refused(capsys, "train", "--out", out, "--resume", "--num-epochs", "3")
    assert "holds files of a run (config.json, metrics.csv, best.pt" in line
    assert "no checkpoint.pt to resume from; pass --overwrite" in line
    line = refused(capsys, "train", *TINY, "--out", out)
    assert "already holds a run" in line
    assert before == {name: (out / name).read_bytes() for name in before}
    run_main("train", *TINY, "--num-epochs", "1", "--out", out, "--overwrite")
    assert load_checkpoint(str(out / LAST))["epoch"] == 1


def test_outputs_of_the_evaluation_scripts_are_not_overwritten_without_being_asked(
        tiny_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    run_main("evaluate", tiny_run, "--num-data", "2", "--num-samples", "5", "--out", out)
    line = refused(capsys, "evaluate", tiny_run, "--num-data", "2", "--out", out)
    assert "eval.json" in line and "exists already; pass --overwrite" in line
    run_main("evaluate", tiny_run, "--num-data", "2", "--num-samples", "5", "--out", out,
             "--overwrite")
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "comparison.md").write_text("mine")
    line = refused(capsys, "compare", tiny_run, "--num-data", "2", "--out", tmp_path / "cmp")
    assert "comparison.md exists already" in line
    assert (tmp_path / "cmp" / "comparison.md").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# 5. Any K in bounded memory, with progress; what cannot fit is refused before work starts

def test_estimates_stream_their_weights_and_equal_the_whole_array_summary(monkeypatch):
    torch.manual_seed(0)
    model, guide = build(small_config(z_dim=2, x_dim=12, hidden_dims=[8]))
    x = torch.rand(3, 12).bernoulli()

    def refuse(*args, **kwargs):
        raise AssertionError("the estimators must not materialize all K x N weights")

    monkeypatch.setattr(log_weights_module, "log_importance_weights", refuse)
    torch.manual_seed(5)
    streamed = estimate("importance", model, guide, x, 3000, max_batch_elements=700)
    monkeypatch.undo()
    # 700 pairs per chunk: each point's 3000 weights arrive in blocks of 700 particles.
    tiles = list(log_weights_module.chunks(3, 3000, 700))
    assert len(tiles) == 3 * 5 and all(p.stop - p.start <= 700 for _, p in tiles)
    summary = WeightSummary(3, 3000)

    def chunks_as_estimate_draws_them():
        # estimate() draws one seed from torch's generator and seeds each chunk from it.
        torch.manual_seed(5)
        seed = int(torch.randint(0, 2 ** 62, ()).item())
        with log_weights_module.chunk_seeds(seed):
            yield from log_weights_module.log_weight_chunks(model, guide, x, 3000,
                                                            max_batch_elements=700)

    for data, _, chunk in chunks_as_estimate_draws_them():
        summary.update(data, chunk)
    result = summary.result()
    for key, value in (("estimate", streamed.estimate), ("khat", streamed.khat),
                       ("ess", streamed.ess)):
        assert torch.allclose(result[key], value, rtol=1e-12, equal_nan=True), key
    # The same K weights held whole give the same numbers (chunking changes nothing).
    full = torch.empty(3000, 3, dtype=torch.float32)
    for data, particles, chunk in chunks_as_estimate_draws_them():
        full[particles, data] = chunk
    reference = summarize_weights(full)
    for key in ("estimate", "stderr", "ess", "khat", "max_weight"):
        assert torch.allclose(reference[key], result[key], rtol=1e-9, atol=1e-12), key


def test_a_k_whose_diagnostics_cannot_fit_is_refused_before_any_work(
        tiny_run, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(log_weights_module, "_chunk_log_weights",
                        lambda *args: calls.append(args))
    huge = int((TAIL_BYTES / 8 / 100 / 3) ** 2) * 4
    line = refused(capsys, "evaluate", tiny_run, "--num-samples", str(huge), "--num-data",
                   "100", "--estimator", "importance")
    assert "GiB for the Pareto tails" in line and "--num-data" in line
    assert calls == []
    line = refused(capsys, "evaluate", tiny_run, "--estimator", "ais", "--ais-chains",
                   "10000000", "--num-data", "2")
    assert "AIS chains per data point exceed" in line


# ---------------------------------------------------------------------------------------------
# 6. A diverging run stops, naming the epoch

def test_a_diverging_run_stops_with_a_message(tmp_path, capsys):
    line = refused(capsys, "train", *SMALL, "--learning-rate", "1e6", "--num-epochs", "3",
                   "--out", tmp_path / "run")
    assert "training diverged in epoch 1" in line
    assert "lower --learning-rate (now 1e+06)" in line


def test_an_elbo_that_falls_below_the_factor_times_the_first_one_stops_training():
    """The second branch of the watch: finite ELBOs per point that run away. The threshold is
    factor x the first ELBO seen, or factor x (-1) where the first is above -1 nats."""
    from inference.training import DivergenceWatch, TrainingDiverged

    watch = DivergenceWatch(learning_rate=3e-3, factor=100.0)
    watch.check(-30.0, 1, 10)
    watch.check(-2999.0, 1, 20)                   # above 100 x -30: training goes on
    with pytest.raises(TrainingDiverged) as stopped:
        watch.check(-3001.0, 2, 30)
    assert str(stopped.value) == (
        "training diverged in epoch 2 (by step 30): the training ELBO fell to -3e+03 nats per "
        "data point, from -30 at the start; lower --learning-rate (now 0.003) and train again "
        "(files of finished epochs are intact)")
    near_zero = DivergenceWatch(learning_rate=1e-3)
    near_zero.check(-0.5, 1, 10)
    near_zero.check(-99.0, 1, 20)                 # above 100 x -1, though below 100 x -0.5
    with pytest.raises(TrainingDiverged, match="fell to -101 nats per data point, from -0.5"):
        near_zero.check(-101.0, 1, 30)


# ---------------------------------------------------------------------------------------------
# 7. MNIST files that do not fit together

def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                    *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_folder(root, train=30, train_labels=30, test=12, test_labels=12):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (train, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, train_labels))
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (test, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, test_labels))
    return root


def test_a_label_file_of_the_wrong_length_is_refused(tmp_path):
    with pytest.raises(DataError, match="train-labels-idx1-ubyte holds 29 labels but "
                       "train-images-idx3-ubyte holds 30 images"):
        read_mnist(str(mnist_folder(tmp_path / "a", train_labels=29)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte holds 13 labels"):
        read_mnist(str(mnist_folder(tmp_path / "b", test_labels=13)))


def test_swapped_training_and_test_files_are_named_as_such(tmp_path, capsys):
    folder = mnist_folder(tmp_path, train=12, train_labels=12, test=30, test_labels=30)
    line = refused(capsys, "train", "--data-dir", folder, "--no-progress", "--out",
                   tmp_path / "run")
    assert "the training and test files look swapped" in line
    assert "--num-validation" not in line


# ---------------------------------------------------------------------------------------------
# 8. and 9. One line, never a traceback, for every bad value

def test_a_tagged_checkpoint_with_missing_keys_is_refused(tiny_run, tmp_path, capsys):
    checkpoint = torch.load(tiny_run / BEST, weights_only=True)
    del checkpoint["rng"]
    torch.save(checkpoint, tmp_path / "damaged.pt")
    line = refused(capsys, "evaluate", tmp_path / "damaged.pt", "--num-data", "2")
    assert "lacks a valid 'rng' entry" in line


class Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_corrupt_checkpoint_message_gives_no_unsafe_advice(tmp_path):
    torch.save({"format": "pyro-vae-checkpoint", "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(str(tmp_path / "evil.pt"))
    assert "weights_only" not in str(error.value)
    assert "never unpickles" in str(error.value)


@pytest.mark.parametrize("flags, message", [
    (["--bdmc", "-1"], "--bdmc must be 0 or more, got -1"),
    (["--estimator", "ais", "--ais-step-size", "-1"],
     "the HMC step size (--ais-step-size) must be positive, got -1.0"),
    (["--estimator", "mixture", "--mixture-weight", "1.5"],
     "the mixture weight a must lie in (0, 1), got 1.5"),
    (["--num-samples", "0"], "--num-samples must be at least 1, got 0"),
])
def test_bad_evaluation_values_get_one_line(tiny_run, flags, message, capsys):
    assert message in refused(capsys, "evaluate", tiny_run, "--num-data", "2", *flags)
    assert "--num-data must be at least 1, got 0" in refused(capsys, "evaluate", tiny_run,
                                                             "--num-data", "0")


@pytest.mark.parametrize("flags, message", [
    (["--hidden-dims", "-5"], "hidden layer sizes (--hidden-dims) must be positive whole "
                              "numbers, got [-5]"),
    (["--hidden-dims", "0"], "must be positive whole numbers, got [0]"),
    (["--prior", "mog", "--prior-components", "0"], "the mog prior needs at least one "
                                                    "component, got 0"),
    (["--prior", "vamp", "--prior-components", "0"], "needs at least one pseudo-input"),
    (["--guide", "iaf", "--guide-flows", "0"], "the iaf guide's num_flows must be a positive"),
    (["--learning-rate", "nan"], "learning_rate (--learning-rate) must be a finite number"),
    (["--num-validation", "-1"], "num_validation (--num-validation) must be at least 0"),
    (["--adam-eps", "0"], "adam_eps (--adam-eps) must be a positive number, got 0"),
    (["--learning-rate-schedule", "cosine"], "invalid choice: 'cosine'"),
    (["--seed", "-1"], "seed (--seed) must lie in 0..4294967295, got -1"),
])
def test_bad_training_values_get_one_line(flags, message, tmp_path, capsys):
    assert message in refused(capsys, "train", *SMALL, *flags, "--out", tmp_path / "r")


def test_resume_refuses_fewer_epochs_than_it_has_finished(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    line = refused(capsys, "train", "--out", out, "--resume", "--num-epochs", "1")
    assert "has finished 2 epochs; --num-epochs 1 would not continue it" in line
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert summary["epochs"] == config["training"]["num_epochs"] == 2


def test_make_mnist_subset_refuses_nonsense_counts(tmp_path, capsys):
    folder = mnist_folder(tmp_path)
    line = refused(capsys, "make_mnist_subset", "--data-dir", folder, "--num-train", "-5",
                   "--out", tmp_path / "s.npz")
    assert "--num-train must be at least 1, got -5" in line
    line = refused(capsys, "make_mnist_subset", "--data-dir", folder, "--num-train", "31",
                   "--out", tmp_path / "s.npz")
    assert "--num-train 31 exceeds the 30 images" in line


def test_sigterm_ends_with_one_message_and_status_143(capsys):
    parser = __import__("argparse").ArgumentParser(prog="job.py")

    def job(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the job")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        run(job, parser, [])
    assert exit_info.value.code == 143
    assert "job.py: terminated (SIGTERM); files already written are complete" in \
        capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before   # the handler is only ours meanwhile


def test_nan_never_reaches_a_json_file(tmp_path):
    files.atomic_write_json(str(tmp_path / "a.json"), {"x": float("nan"), "y": [float("inf")]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": [None]}


# ---------------------------------------------------------------------------------------------
# 10. arviz is pinned where its API is the one the code uses

def test_arviz_is_pinned_below_1_on_every_python():
    from conftest import ROOT

    with open(os.path.join(ROOT, "setup.cfg")) as handle:
        lines = [line.strip() for line in handle if line.strip().startswith("arviz")]
    assert lines and all("<1" in line for line in lines), lines
    assert not any("python_version" in line for line in lines), lines

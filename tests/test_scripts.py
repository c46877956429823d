"""The scripts end to end, in this process through ``main(argv)``: they write what they say,
resume, refuse bad input with one line and exit status 2. A few smoke tests run them as
subprocesses, the way users do."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SMALL, refused, run_main


def run_script(name, *args, cwd=None):
    """A script as a separate process, as a user runs it."""
    environment = {**os.environ}
    environment.pop("VAE_TRACEBACK", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name),
                           *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=environment, timeout=600)


def test_train_runs_on_shipped_subset_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    summary = run_main("train", *SMALL, "--out", out)
    printed = capsys.readouterr().out
    assert "test ELBO" in printed and str(out) in printed
    assert {"config.json", "metrics.csv", "checkpoint.pt", "best.pt", "elbo.png",
            "summary.json"} <= set(os.listdir(out))
    assert summary["epochs"] == 1

    line = refused(capsys, "train", *SMALL, "--out", out)
    assert "already holds a run (config.json, metrics.csv" in line and "pass --resume" in line

    summary = run_main("train", "--out", out, "--resume", "--num-epochs", "2", "--no-progress")
    assert "resuming" in capsys.readouterr().out
    assert summary["epochs"] == 2
    with open(out / "summary.json") as f:
        assert json.load(f)["epochs"] == 2

    line = refused(capsys, "train", "--out", out, "--resume", "--z-dim", "8")
    assert "--z-dim 8 differs from the resumed run's 4" in line
    # An explicit flag is compared with the run's value even when it equals the default.
    line = refused(capsys, "train", "--out", out, "--resume", "--hidden-dims", "512,256")
    assert "--hidden-dims 512,256 differs from the resumed run's 32" in line
    line = refused(capsys, "train", "--out", out, "--resume", "--sigma", "0.3")
    assert "--sigma does not apply to the bernoulli likelihood" in line
    # A flag equal to the stored value is accepted.
    run_main("train", "--out", out, "--resume", "--z-dim", "4", "--num-epochs", "2",
             "--no-progress")


def test_train_records_every_part_option_in_its_config(tmp_path):
    out = tmp_path / "run"
    run_main("train", *SMALL, "--likelihood", "gaussian", "--sigma", "0.2", "--prior", "mog",
             "--prior-option", "num_components=3", "--guide", "iaf", "--guide-flows", "1",
             "--flow-hidden", "16", "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["binarize"] == "none"
    model = config["model"]
    assert model["likelihood"] == {"name": "gaussian", "options": {"sigma": 0.2}}
    assert model["prior"] == {"name": "mog",
                              "options": {"num_components": 3, "init_spread": 1.0}}
    assert model["guide"] == {"name": "iaf", "options": {"num_flows": 1, "context_dim": None,
                                                         "flow_hidden": 16}}
    assert model["architecture"] == {"name": "mlp", "options": {"hidden_dims": [32],
                                                                "activation": "relu"}}


@pytest.mark.parametrize("flags, message", [
    (["--prior", "gamma"], "unknown prior 'gamma'; valid priors: flow, mog, standard, vamp or "
                           "module:Class"),
    (["--prior", "mog", "--prior-option", "num_componets=3"],
     "the mog prior has no option 'num_componets' (did you mean 'num_components'?)"),
    (["--prior", "mog", "--prior-option", "num_components=many"],
     "the option num_components of the mog prior takes a whole number, got 'many'"),
    (["--prior-components", "5"], "--prior-components does not apply to the standard prior"),
    (["--flow-hidden", "5"], "--flow-hidden does not apply to the standard prior or the "
                             "diagonal guide"),
    (["--binarize", "none"], "the bernoulli likelihood needs --binarize dynamic or static"),
    (["--z-dim", "0"], "z_dim (--z-dim) must be at least 1, got 0"),
    (["--kl-warmup-epochs", "nan"], "kl_warmup_epochs (--kl-warmup-epochs) must be a finite"),
    (["--objective", "iwae", "--jit"], "drop --jit"),
])
def test_train_refuses_bad_settings_with_one_line(flags, message, tmp_path, capsys):
    line = refused(capsys, "train", *SMALL, *flags, "--out", tmp_path / "r")
    assert message in line, line
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_train_with_missing_data_folder_exits_with_one_clear_line(tmp_path, capsys):
    line = refused(capsys, "train", "--data-dir", tmp_path / "absent", "--no-progress")
    assert "MNIST not found" in line and "t10k-labels-idx1-ubyte" in line


def test_train_with_corrupt_checkpoint_exits_with_one_clear_line(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    assert "not a readable checkpoint" in refused(capsys, "train", "--out", tmp_path, "--resume")


def test_train_gaussian_likelihood_on_grey_levels(tmp_path):
    run_main("train", *SMALL, "--likelihood", "gaussian", "--sigma", "0.2", "--out", tmp_path)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["data"]["binarize"] == "none"


def test_train_on_synthetic_data(tmp_path):
    summary = run_main("train", "--dataset", "synthetic", "--num-epochs", "1", "--z-dim", "2",
                       "--hidden-dims", "16", "--synthetic-num-train", "500", "--no-progress",
                       "--out", tmp_path / "r")
    assert summary["num_train"] == 500


def write_idx(path, array):
    """Write ``array`` (uint8) in the idx format of the original MNIST files."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                    *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_make_mnist_subset_from_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, 30))
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 12))
    out = tmp_path / "subset.npz"
    run_main("make_mnist_subset", "--data-dir", tmp_path, "--num-train", "20", "--num-test", "5",
             "--out", out)
    with np.load(out) as archive:
        assert archive["train_images"].shape == (20, 28, 28)
        assert archive["test_labels"].shape == (5,)
        assert "md5" in str(archive["provenance"])


def test_mixture_benchmark_reports_both_implementations_and_their_ratio(capsys):
    run_main("benchmark_mixture", "--num-components", "7", "--z-dim", "3", "--num-points", "50",
             "--repeats", "2", "--device", "cpu")
    printed = capsys.readouterr().out
    assert "matrix products" in printed and "broadcasting" in printed
    errors = [float(line.split()[-1]) for line in printed.splitlines() if "error" in line]
    assert len(errors) == 2 and max(errors) < 1e-4
    assert "broadcasting / matrix products:" in printed
    assert "must be positive" in refused(capsys, "benchmark_mixture", "--repeats", "0")


# ---------------------------------------------------------------------------------------------
# Subprocess smoke tests: the scripts as users run them

def test_smoke_train_and_evaluate_as_processes(tmp_path):
    out = tmp_path / "run"
    result = run_script("train.py", *SMALL, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "test ELBO" in result.stdout
    result = run_script("evaluate.py", out, "--num-samples", "20", "--num-data", "5",
                        "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "importance" in result.stdout
    result = run_script("evaluate.py", out, "--estimator", "harmonic")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "evaluate.py: error: unknown estimator 'harmonic'; valid estimators: ais, elbo, exact, "
        "importance, mixture, prior, quadrature or module:function for your own"]


def test_smoke_help_as_a_process():
    result = run_script("compare.py", "--help")
    assert result.returncode == 0, result.stderr
    assert "--num-samples" in result.stdout and "--ais-steps" in result.stdout


@pytest.mark.parametrize("script", ["train", "evaluate", "compare", "explore", "tutorial",
                                    "make_mnist_subset", "benchmark_mixture"])
def test_every_script_explains_its_flags(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(script, "--help")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "--device" in printed or "--data-dir" in printed

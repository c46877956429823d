"""Every script runs end to end through a subprocess, and bad input ends it with one clear line."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--dataset", "mnist-subset", "--num-epochs", "1", "--z-dim", "4",
         "--hidden-dims", "32", "--batch-size", "200", "--no-progress", "--device", "cpu"]


def run_script(name, *args, cwd=None, env=None):
    environment = {**os.environ, **(env or {})}
    environment.pop("VAE_TRACEBACK", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args],
                          capture_output=True, text=True, cwd=cwd or ROOT, env=environment,
                          timeout=600)


def assert_one_line_error(result, pattern):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in lines[0], lines[0]


def test_train_runs_on_shipped_subset_and_resumes(tmp_path):
    out = tmp_path / "run"
    result = run_script("train.py", *SMALL, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "test ELBO" in result.stdout and str(out) in result.stdout
    assert {"config.json", "metrics.csv", "checkpoint.pt", "best.pt", "elbo.png",
            "summary.json"} <= set(os.listdir(out))

    refused = run_script("train.py", *SMALL, "--out", str(out))
    assert_one_line_error(refused, "already holds a run; pass --resume")

    resumed = run_script("train.py", "--out", str(out), "--resume", "--num-epochs", "2",
                         "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    with open(out / "summary.json") as f:
        assert json.load(f)["epochs"] == 2

    conflict = run_script("train.py", "--out", str(out), "--resume", "--z-dim", "8")
    assert_one_line_error(conflict, "--z-dim 8 differs from the resumed run's 4")


def test_train_with_missing_data_folder_exits_with_one_clear_line(tmp_path):
    result = run_script("train.py", "--data-dir", str(tmp_path / "absent"), "--no-progress")
    assert_one_line_error(result, "MNIST not found")
    assert "t10k-labels-idx1-ubyte" in result.stderr


def test_train_rejects_grey_levels_for_bernoulli(tmp_path):
    result = run_script("train.py", *SMALL, "--binarize", "none", "--out", str(tmp_path / "r"))
    assert_one_line_error(result, "the bernoulli likelihood needs --binarize dynamic or static")


def test_train_rejects_unknown_prior(tmp_path):
    result = run_script("train.py", *SMALL, "--prior", "gamma", "--out", str(tmp_path / "r"))
    assert_one_line_error(
        result, "unknown prior 'gamma'; valid priors: flow, mog, standard, vamp or module:Class")


def test_train_with_corrupt_checkpoint_exits_with_one_clear_line(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    result = run_script("train.py", "--out", str(tmp_path), "--resume")
    assert_one_line_error(result, "not a readable checkpoint")


def test_train_gaussian_likelihood_on_grey_levels(tmp_path):
    result = run_script("train.py", *SMALL, "--likelihood", "gaussian", "--sigma", "0.2",
                        "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "r" / "config.json") as f:
        assert json.load(f)["binarize"] == "none"


def test_train_on_synthetic_data(tmp_path):
    result = run_script("train.py", "--dataset", "synthetic", "--num-epochs", "1", "--z-dim", "2",
                        "--hidden-dims", "16", "--synthetic-num-train", "500", "--no-progress",
                        "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr


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
    result = run_script("make_mnist_subset.py", "--data-dir", str(tmp_path), "--num-train", "20",
                        "--num-test", "5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with np.load(out) as archive:
        assert archive["train_images"].shape == (20, 28, 28)
        assert archive["test_labels"].shape == (5,)
        assert "md5" in str(archive["provenance"])


@pytest.mark.parametrize("script", ["train.py", "make_mnist_subset.py"])
def test_scripts_explain_their_flags(script):
    result = run_script(script, "--help")
    assert result.returncode == 0
    assert "--data-dir" in result.stdout


def test_mixture_benchmark_reports_both_implementations_and_their_ratio():
    result = run_script("benchmark_mixture.py", "--num-components", "7", "--z-dim", "3",
                        "--num-points", "50", "--repeats", "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "matrix products" in result.stdout and "broadcasting" in result.stdout
    errors = [float(line.split()[-1]) for line in result.stdout.splitlines() if "error" in line]
    assert len(errors) == 2 and max(errors) < 1e-4
    assert "broadcasting / matrix products:" in result.stdout
    assert_one_line_error(run_script("benchmark_mixture.py", "--repeats", "0"), "must be positive")

"""evaluate.py and compare.py end to end through a subprocess, on runs trained on the subset."""

import csv
import json
import os

import pytest
import torch

from test_scripts import SMALL, assert_one_line_error, run_script


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs with a 2-D latent on the shipped subset (different seeds)."""
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for seed in (0, 1):
        out = root / f"seed{seed}"
        args = [a if a != "4" else "2" for a in SMALL]  # --z-dim 2, so quadrature applies
        result = run_script("train.py", *args, "--seed", str(seed), "--out", str(out))
        assert result.returncode == 0, result.stderr
        paths.append(out)
    return paths


def test_evaluate_writes_json_and_per_point_csv(runs, tmp_path):
    out = tmp_path / "eval.json"
    args = ["--estimator", "elbo,importance,prior", "--estimator", "mixture,ais,quadrature",
            "--num-samples", "50", "--num-data", "6", "--ais-steps", "20", "--ais-chains", "4",
            "--ais-leapfrog", "2", "--bdmc", "3", "--out", str(out), "--device", "cpu"]
    result = run_script("evaluate.py", str(runs[0]), *args)
    assert result.returncode == 0, result.stderr
    assert "quadrature" in result.stdout and "BDMC" in result.stdout
    with open(out) as f:
        report = json.load(f)
    names = [s["estimator"] for s in report["estimators"]]
    assert names == ["elbo", "importance", "prior", "mixture", "ais", "quadrature"]
    for summary in report["estimators"]:
        for key in ("estimator", "num_samples", "num_data", "log_px_mean", "log_px_stderr",
                    "ess_mean", "khat_frac_above_0_7", "seconds"):
            assert key in summary
        assert summary["num_data"] == 6
    by_name = {s["estimator"]: s for s in report["estimators"]}
    assert by_name["elbo"]["log_px_mean"] < by_name["quadrature"]["log_px_mean"]
    assert abs(by_name["importance"]["log_px_mean"] - by_name["quadrature"]["log_px_mean"]) < 3
    assert report["bdmc"]["num_data"] == 3
    with open(tmp_path / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 6
    assert set(rows[0]) >= {"index", "label", "estimate", "stderr", "ess", "khat"}

    again = run_script("evaluate.py", str(runs[0]), *args[:-4], "--out", str(tmp_path / "b.json"),
                       "--device", "cpu")
    with open(tmp_path / "b.json") as f:
        repeat = json.load(f)
    assert [s["log_px_mean"] for s in repeat["estimators"]] == \
        [s["log_px_mean"] for s in report["estimators"]], again.stderr


def test_compare_writes_tables_plots_and_paired_differences(runs, tmp_path):
    out = tmp_path / "cmp"
    result = run_script("compare.py", str(runs[0]), str(runs[1]), "--estimator",
                        "importance,prior,ais,quadrature", "--num-samples", "1,10,100",
                        "--num-data", "5", "--ais-steps", "10", "--ais-chains", "2",
                        "--ais-leapfrog", "2", "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert {"comparison.md", "comparison.csv", "convergence.png", "paired.csv",
            "paired.png", "report.html"} <= set(os.listdir(out))
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (3 + 3 + 1 + 1)
    with open(out / "paired.csv") as f:
        paired = list(csv.DictReader(f))
    assert {row["estimator"] for row in paired} == {"importance", "prior", "ais", "quadrature"}
    for row in paired:
        assert float(row["paired_stderr"]) >= 0
    assert "Paired per-data-point differences" in (out / "comparison.md").read_text()


def test_evaluate_rejects_unknown_estimator(runs):
    result = run_script("evaluate.py", str(runs[0]), "--estimator", "harmonic")
    assert_one_line_error(result, "unknown estimator 'harmonic'; valid estimators: ais, elbo")


def test_evaluate_rejects_bad_k_and_quadrature_in_high_dimensions(runs, tmp_path):
    result = run_script("evaluate.py", str(runs[0]), "--num-samples", "0", "--num-data", "2")
    assert_one_line_error(result, "number of samples K must be a positive integer")
    big = tmp_path / "z4"
    assert run_script("train.py", *SMALL, "--out", str(big)).returncode == 0
    result = run_script("evaluate.py", str(big), "--estimator", "quadrature", "--num-data", "2")
    assert_one_line_error(result, "quadrature integrates over at most 2 latent dimensions")


def test_evaluate_rejects_a_checkpoint_of_another_model(runs, tmp_path):
    checkpoint = torch.load(runs[0] / "best.pt", weights_only=True)
    checkpoint["config"]["hidden_dims"] = [64]
    torch.save(checkpoint, tmp_path / "other.pt")
    result = run_script("evaluate.py", str(tmp_path / "other.pt"), "--num-data", "2")
    assert_one_line_error(result, "does not fit the model its config describes")


@pytest.mark.parametrize("script", ["evaluate.py", "compare.py"])
def test_evaluation_scripts_explain_their_flags(script):
    result = run_script(script, "--help")
    assert result.returncode == 0
    assert "--num-samples" in result.stdout and "--ais-steps" in result.stdout

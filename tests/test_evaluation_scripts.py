"""evaluate.py and compare.py end to end, in this process, on runs trained on the subset."""

import csv
import json
import os

import pytest
import torch

from conftest import SMALL, refused, run_main, small_args


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs with a 2-D latent on the shipped subset (different seeds)."""
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for seed in (0, 1):
        out = root / f"seed{seed}"
        run_main("train", *small_args(z_dim=2), "--seed", seed, "--out", out)
        paths.append(out)
    return paths


def test_evaluate_writes_json_and_per_point_csv(runs, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["--estimator", "elbo,importance,prior", "--estimator", "mixture,ais,quadrature",
            "--num-samples", "50", "--num-data", "6", "--ais-steps", "20", "--ais-chains", "4",
            "--ais-leapfrog", "2", "--bdmc", "3", "--out", out, "--device", "cpu"]
    report = run_main("evaluate", runs[0], *args)
    printed = capsys.readouterr().out
    assert "quadrature" in printed and "BDMC" in printed
    written = json.loads(out.read_text())
    assert [s["estimator"] for s in written["estimators"]] == \
        [s["estimator"] for s in report["estimators"]]
    assert written["estimators"][0]["khat_mean"] is None  # NaN is written as null
    names = [s["estimator"] for s in report["estimators"]]
    assert names == ["elbo", "importance", "prior", "mixture", "ais", "quadrature"]
    for summary in report["estimators"]:
        for key in ("estimator", "num_samples", "num_data", "log_px_mean", "log_px_stderr",
                    "ess_mean", "khat_frac_above_0_7", "seconds"):
            assert key in summary
        assert summary["num_data"] == 6
    by_name = {s["estimator"]: s for s in report["estimators"]}
    assert by_name["ais"]["num_samples"] == 4
    assert by_name["elbo"]["log_px_mean"] < by_name["quadrature"]["log_px_mean"]
    assert abs(by_name["importance"]["log_px_mean"] - by_name["quadrature"]["log_px_mean"]) < 3
    assert report["bdmc"]["num_data"] == 3 and report["bdmc"]["ais_steps"] == 20
    with open(tmp_path / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 6 + 6   # and the recommended value of each point
    assert set(rows[0]) >= {"index", "label", "estimate", "stderr", "ess", "khat", "trusted",
                            "reasons", "source"}
    # The verdicts: the ELBO is a bound that nothing checks; AIS's 4 chains are too few for
    # k-hat, so it is not checked either; the recommended value names its estimator.
    by_estimator = {}
    for row in rows:
        by_estimator.setdefault(row["estimator"], []).append(row)
    assert all(row["trusted"] == "0" and "not checked" in row["reasons"]
               for row in by_estimator["elbo"] + by_estimator["ais"])
    assert all(row["trusted"] in ("0", "1") for row in rows)
    recommended = by_estimator["recommended"]
    assert [row["index"] for row in recommended] == [str(i) for i in range(6)]
    assert {row["source"] for row in recommended} <= set(names) - {"elbo", "ais"}
    assert report["verdicts"]["num_points"] == 6
    assert report["recommended"]["estimator"] == "recommended"
    assert "trusted" in printed and "recommended" in printed

    repeat = run_main("evaluate", runs[0], *args[:-4], "--out", tmp_path / "b.json",
                      "--device", "cpu")
    assert [s["log_px_mean"] for s in repeat["estimators"]] == \
        [s["log_px_mean"] for s in report["estimators"]]


def test_bdmc_checks_the_guide_started_setting_and_raises_its_steps_to_a_tolerance(
        runs, tmp_path, capsys):
    args = ["--estimator", "importance,ais", "--num-samples", "30", "--num-data", "3",
            "--ais-start", "guide", "--ais-chains", "4", "--ais-steps", "2", "--ais-leapfrog",
            "2", "--bdmc", "3", "--device", "cpu"]
    # A tolerance no setting meets: the steps double four times, and the AIS estimate, made
    # with the last of them, fails its check.
    report = run_main("evaluate", runs[0], *args, "--bdmc-tolerance", "1e-9", "--out",
                      tmp_path / "calibrated.json")
    printed = capsys.readouterr().out
    bdmc = report["bdmc"]
    assert [row["ais_steps"] for row in bdmc["calibration"]] == [2, 4, 8, 16, 32]
    assert bdmc["ais_start"] == "guide" and bdmc["ais_steps"] == 32
    assert bdmc["tolerance_met"] is False and "stays above" in printed
    assert "BDMC on 3 points simulated from the model, AIS from the guide (32 steps" in printed
    ais, = [s for s in report["estimators"] if s["estimator"] == "ais"]
    assert ais["ais_steps"] == 32
    with open(tmp_path / "calibrated.csv") as handle:
        ais_rows = [row for row in csv.DictReader(handle) if row["estimator"] == "ais"]
    assert len(ais_rows) == 3 and all("ais-gap" in row["reasons"] for row in ais_rows)
    # A tolerance the first setting meets: no doubling; the same numbers as --bdmc alone.
    met = run_main("evaluate", runs[0], *args, "--bdmc-tolerance", "1e9")
    plain = run_main("evaluate", runs[0], *args)
    assert [row["ais_steps"] for row in met["bdmc"]["calibration"]] == [2]
    assert met["bdmc"]["tolerance_met"] is True
    assert met["bdmc"]["gap"] == plain["bdmc"]["gap"]
    assert [s["log_px_mean"] for s in met["estimators"]] == \
        [s["log_px_mean"] for s in plain["estimators"]]
    capsys.readouterr()
    assert "give --bdmc N as well" in refused(capsys, "evaluate", runs[0], "--bdmc-tolerance",
                                              "0.1", "--device", "cpu")
    assert "must be a positive number of nats" in refused(
        capsys, "evaluate", runs[0], "--bdmc", "2", "--bdmc-tolerance", "0", "--device", "cpu")


def test_compare_writes_tables_plots_and_paired_differences(runs, tmp_path):
    out = tmp_path / "cmp"
    run_main("compare", runs[0], runs[1], "--estimator", "importance,prior,ais,quadrature",
             "--num-samples", "1,10,100", "--num-data", "5", "--ais-steps", "10",
             "--ais-chains", "2", "--ais-leapfrog", "2", "--out", out, "--device", "cpu")
    assert {"comparison.md", "comparison.csv", "convergence.png", "paired.csv",
            "paired.png", "report.html"} <= set(os.listdir(out))
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (3 + 3 + 1 + 1)
    assert all(0 <= float(row["trusted_frac"]) <= 1 for row in rows)
    with open(out / "paired.csv") as f:
        paired = list(csv.DictReader(f))
    assert {row["estimator"] for row in paired} == {"importance", "prior", "ais", "quadrature"}
    for row in paired:
        assert float(row["paired_stderr"]) >= 0
        assert row["holds"] in ("yes", "no")
    # quadrature, the reference, is trusted everywhere; ais with 2 chains nowhere (no k-hat).
    by_name = {row["estimator"]: row for row in paired}
    assert by_name["quadrature"]["num_trusted"] == "5"
    assert by_name["ais"]["holds_reason"] == "no trusted points"
    markdown = (out / "comparison.md").read_text()
    assert "Paired per-data-point differences" in markdown
    assert "| run | estimator | K | N | log p(x) |" in markdown
    assert "| recommended | 100 | 5 |" in markdown and "| trusted N |" in markdown


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_compare_judges_each_run_and_says_whether_its_paired_differences_hold(runs, tmp_path):
    """compare.py's defaults (elbo, importance and the mixture that checks it): each estimator's
    share of trusted points at each K, a recommended row per run and K, the per-point verdicts,
    and paired differences over the trusted points and of the recommended values, as
    recomputed here from points.csv."""
    out = tmp_path / "cmp"
    table, paired_rows = run_main("compare", runs[0], runs[1], "--num-samples", "5,40",
                                  "--num-data", "12", "--out", out, "--device", "cpu",
                                  "--no-progress")
    rows = read_rows(out / "comparison.csv")
    assert [(row["run"], row["estimator"], row["num_samples"]) for row in rows] == [
        (run, name, k) for run in ("seed0", "seed1") for name in ("elbo", "importance", "mixture")
        for k in ("5", "40")]
    assert list(rows[0])[-2:] == ["num_trusted", "trusted_frac"]
    for row in rows:
        assert float(row["trusted_frac"]) == int(row["num_trusted"]) / 12
        if row["estimator"] == "elbo":   # a bound that nothing checks
            assert row["num_trusted"] == "0"
    recommended = read_rows(out / "recommended.csv")
    assert [(row["run"], row["estimator"], row["num_samples"]) for row in recommended] == [
        (run, "recommended", k) for run in ("seed0", "seed1") for k in ("5", "40")]
    assert [row["estimator"] for row in table].count("recommended") == 4
    points = read_rows(out / "points.csv")
    assert len(points) == 2 * (3 * 12 + 12)
    assert {row["num_samples"] for row in points} == {"40"}
    assert {row["trusted"] for row in points} <= {"0", "1"}

    paired = read_rows(out / "paired.csv")
    assert list(paired[0])[:8] == ["run", "baseline", "estimator", "num_samples", "num_data",
                                   "mean_difference", "paired_stderr", "unpaired_stderr"]
    assert [row["estimator"] for row in paired] == ["elbo", "importance", "mixture"]
    assert paired == [{key: str(value) for key, value in row.items()} for row in paired_rows]

    def at(run, estimator):
        return {int(row["index"]): row for row in points
                if row["run"] == run and row["estimator"] == estimator}

    base_recommended, run_recommended = at("seed0", "recommended"), at("seed1", "recommended")
    recommended_difference = torch.tensor(
        [float(run_recommended[i]["estimate"]) - float(base_recommended[i]["estimate"])
         for i in range(12)], dtype=torch.float64)
    for row in paired:
        base, other = at("seed0", row["estimator"]), at("seed1", row["estimator"])
        both = [i for i in range(12) if base[i]["trusted"] == other[i]["trusted"] == "1"]
        assert int(row["num_trusted"]) == len(both)
        if both:
            assert float(row["trusted_difference"]) == pytest.approx(sum(
                float(other[i]["estimate"]) - float(base[i]["estimate"]) for i in both)
                / len(both))
        assert float(row["recommended_difference"]) == \
            pytest.approx(recommended_difference.mean().item())
        assert float(row["recommended_stderr"]) == \
            pytest.approx(recommended_difference.std().item() / 12 ** 0.5)
        assert (row["holds"] == "yes") == (row["holds_reason"] == "")
    assert paired[0]["holds_reason"] == "no trusted points"   # the ELBO
    assert "holds" in (out / "report.html").read_text()


def test_evaluation_scripts_refuse_bad_input_with_one_line(runs, tmp_path, capsys):
    line = refused(capsys, "evaluate", runs[0], "--estimator", "harmonic")
    assert "unknown estimator 'harmonic'; valid estimators: ais, elbo" in line
    line = refused(capsys, "evaluate", runs[0], "--estimator", "importnce")
    assert "(did you mean 'importance'?)" in line
    line = refused(capsys, "evaluate", runs[0], "--num-samples", "0", "--num-data", "2")
    assert "--num-samples must be at least 1, got 0" in line
    line = refused(capsys, "evaluate", runs[0], "--ais-steps", "10", "--num-data", "2")
    assert "--ais-steps applies to ais, which is not among the chosen estimators" in line
    line = refused(capsys, "compare", runs[0], "--estimator", "importance", "--mixture-weight",
                   "0.3", "--num-data", "2")
    assert "--mixture-weight applies to mixture" in line
    big = tmp_path / "z4"
    run_main("train", *SMALL, "--out", big)
    line = refused(capsys, "evaluate", big, "--estimator", "quadrature", "--num-data", "2")
    assert "quadrature integrates over at most 2 latent dimensions" in line


def test_evaluate_rejects_a_checkpoint_of_another_model(runs, tmp_path, capsys):
    checkpoint = torch.load(runs[0] / "best.pt", weights_only=True)
    checkpoint["config"]["model"]["architecture"]["options"]["hidden_dims"] = [64]
    torch.save(checkpoint, tmp_path / "other.pt")
    line = refused(capsys, "evaluate", tmp_path / "other.pt", "--num-data", "2")
    assert "does not fit the model its config describes" in line


def test_an_estimator_flag_that_names_no_estimator_is_refused(runs, tmp_path, capsys):
    for script, out in (("evaluate", tmp_path / "e.json"), ("compare", tmp_path / "cmp"),
                        ("explore", tmp_path / "fig")):
        line = refused(capsys, script, runs[0], "--estimator", ",", "--out", out)
        assert "--estimator names no estimator; valid: ais, elbo" in line, (script, line)
        assert not out.exists(), script


@pytest.mark.parametrize("flags, message", [
    (["--local-steps", "0"], "--local-steps must be at least 1, got 0"),
    (["--local-particles", "-2"], "--local-particles must be at least 1, got -2"),
    (["--local-learning-rate", "0"], "--local-learning-rate must be a positive finite number"),
    (["--local-learning-rate", "nan"], "--local-learning-rate must be a positive finite number"),
    (["--local-learning-rate", "inf"], "--local-learning-rate must be a positive finite number"),
])
def test_evaluate_refuses_a_local_fit_that_fits_nothing(runs, tmp_path, capsys, flags, message):
    out = tmp_path / "local.json"
    line = refused(capsys, "evaluate", runs[0], "--guide", "local", *flags, "--num-data", "2",
                   "--out", out)
    assert message in line
    assert not out.exists()


def test_explore_checks_every_flag_before_it_writes_a_file(runs, tmp_path, capsys):
    out = tmp_path / "fig"
    bad = tmp_path / "bad.json"
    bad.write_text('{"run": "elsewhere"}')
    for flags, message in (
            (["--convergence-k", "0,10"], "--convergence-k needs one or more positive whole"),
            (["--convergence-k", ","], "--convergence-k needs one or more positive whole"),
            (["--directions", "0"], "--directions needs two different latent dimensions in "
                                    "0..1, comma-separated (e.g. 0,1), got [0]"),
            (["--directions", "1,1"], "--directions needs two different latent dimensions"),
            (["--directions", "0,2"], "--directions needs two different latent dimensions"),
            (["--z", "nan,0"], "--z needs finite numbers"),
            (["--estimator", "harmonic"], "unknown estimator 'harmonic'"),
            (["--estimator", "exact"], "linear"),
            (["--evaluation", tmp_path / "absent.json"], "absent.json"),
            (["--evaluation", bad], "is not a JSON summary written by evaluate.py"),
            (["--evaluation", bad, "--estimator", "elbo"], "give one of them")):
        line = refused(capsys, "explore", runs[0], *flags, "--out", out, "--no-progress")
        assert message in line, (flags, line)
        assert not out.exists(), flags
    # The corrected command runs: nothing of the refused ones is in its way.
    run_main("explore", runs[0], "--convergence-k", "1,10", "--directions", "1,0", "--out", out,
             "--num-data", "50", "--num-prior-samples", "50", "--ais-steps", "2",
             "--eval-data", "5", "--num-samples", "5", "--no-progress")
    assert (out / "report.html").is_file() and (out / "convergence.png").is_file()

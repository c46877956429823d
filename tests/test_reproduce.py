"""The published protocol (Burda et al. 2016): its learning-rate schedule, Adam's epsilon, training
on the whole training file, and scripts/reproduce.py (preset, learning curve, final score)."""

import csv
import json
import math
import shutil

import pytest
import torch

from conftest import load_script, refused, run_main, small_config
from inference.build import build
from inference.checkpoint import load_checkpoint
from models.data import load_dataset
from inference.training import TrainingStep, fit, learning_rate_at


def paper_rates():
    """The paper's schedule written out: 3^i epochs at 1e-3 * 10^(-i/7), i = 0..7."""
    rates = []
    for i in range(8):
        rates += [1e-3 * 10 ** (-i / 7)] * 3 ** i
    return rates


def test_burda_schedule_over_3280_epochs_is_the_papers():
    training = small_config(num_epochs=3280, learning_rate_schedule="burda",
                            learning_rate=1e-3).training
    rates = [learning_rate_at(training, epoch) for epoch in range(1, 3281)]
    assert len(paper_rates()) == 3280
    assert rates == pytest.approx(paper_rates(), rel=1e-12)


def test_burda_schedule_laid_over_fewer_epochs_keeps_its_shape():
    training = small_config(num_epochs=400, learning_rate_schedule="burda",
                            learning_rate=1e-3).training
    rates = [learning_rate_at(training, epoch) for epoch in range(1, 401)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    # Epoch e takes the paper's rate at paper epoch floor((e - 1) * 3280 / 400) + 1.
    paper = paper_rates()
    assert rates == pytest.approx([paper[(e - 1) * 3280 // 400] for e in range(1, 401)])
    # The last stage holds 2187/3280 of the epochs.
    last_stage = sum(rate == pytest.approx(1e-4) for rate in rates)
    assert last_stage == pytest.approx(400 * 2187 / 3280, abs=1)


def test_constant_schedule_and_adam_eps_reach_the_optimizer():
    config = small_config(adam_eps=1e-4, learning_rate=0.02)
    model, guide = build(config)
    step = TrainingStep(model, guide, config.training, log=lambda *_: None)
    (group,) = step.optimizer.param_groups
    assert group["eps"] == 1e-4 and group["lr"] == 0.02
    assert learning_rate_at(config.training, 7) == 0.02


def test_the_schedule_sets_each_epochs_rate(tmp_path):
    config = small_config(num_epochs=3, learning_rate_schedule="burda", learning_rate=0.01)
    dataset = load_dataset(config, torch.device("cpu"))
    model, guide = build(config)
    seen = []
    original = TrainingStep.set_learning_rate

    def spy(self, rate):
        seen.append(rate)
        original(self, rate)

    TrainingStep.set_learning_rate = spy
    try:
        fit(model, guide, dataset, config, str(tmp_path), progress=False, log=lambda *_: None)
    finally:
        TrainingStep.set_learning_rate = original
    # 3 epochs over the 3,280 of the paper start at paper epochs 1, 1094.3 and 2187.7: in the
    # first stage, and twice in the last (which begins at paper epoch 1094).
    assert seen == pytest.approx([0.01, 0.001, 0.001])


def test_training_on_the_whole_training_file_keeps_the_last_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    summary = run_main("train", "--dataset", "mnist-subset", "--num-validation", "0",
                       "--num-epochs", "2", "--z-dim", "2", "--hidden-dims", "16",
                       "--batch-size", "500", "--no-progress", "--out", out)
    assert summary["num_train"] == 2000 and summary["best_epoch"] == 2
    assert json.loads((out / "summary.json").read_text())["best_validation_elbo"] is None
    assert load_checkpoint(out / "best.pt")["epoch"] == 2
    assert "validation ELBO      none" in capsys.readouterr().out
    assert "validation split is empty" in refused(capsys, "evaluate", out, "--split",
                                                  "validation", "--num-samples", "2")


TINY = ["--dataset", "mnist-subset", "--z-dim", "2", "--hidden-dims", "16", "--batch-size",
        "250", "--curve-samples", "8", "--curve-data", "40", "--eval-samples", "8",
        "--eval-data", "60", "--no-progress", "--device", "cpu"]


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_reproduce_fills_the_preset_scores_a_curve_and_the_final_test_set(tmp_path):
    out = tmp_path / "run"
    run_main("reproduce", "burda-iwae5-short", *TINY, "--num-epochs", "3", "--out", out)
    config = json.loads((out / "config.json").read_text())
    # The preset's settings, except those given on the command line.
    assert config["training"]["learning_rate_schedule"] == "burda"
    assert config["training"]["adam_eps"] == 1e-4
    assert config["training"]["objective"] == {"name": "iwae", "options": {"num_particles": 5}}
    assert config["model"]["architecture"]["options"]["activation"] == "tanh"
    assert config["data"]["num_validation"] == 0
    assert config["training"]["batch_size"] == 250 and config["training"]["num_epochs"] == 3
    curve = read_rows(out / "curve.csv")
    assert [int(row["epoch"]) for row in curve] == [1, 2, 3]
    assert all(int(row["num_data"]) == 40 and int(row["num_samples"]) == 8 for row in curve)
    final = json.loads((out / "test-importance.json").read_text())
    result, mixture = final["estimators"]
    assert result["estimator"] == "importance" and mixture["estimator"] == "mixture"
    assert final["verdicts"]["num_points"] == 60
    assert result["num_samples"] == 8 and result["num_data"] == 60
    rows = read_rows(out / "test-importance.csv")
    assert [row["estimator"] for row in rows] == \
        ["importance"] * 60 + ["mixture"] * 60 + ["recommended"] * 60


def test_the_learning_curve_changes_nothing_in_the_training(tmp_path):
    """A run with the curve's scores between its epochs ends where a run without them ends."""
    with_curve, without = tmp_path / "curve", tmp_path / "plain"
    run_main("reproduce", "burda-vae-short", *TINY, "--num-epochs", "2", "--out", with_curve)
    flags = TINY[:TINY.index("--curve-samples")] + ["--no-progress", "--device", "cpu"]
    run_main("train", *flags, "--num-validation", "0", "--activation", "tanh",
             "--learning-rate-schedule", "burda", "--adam-eps", "1e-4", "--num-epochs", "2",
             "--out", without)
    a, b = load_checkpoint(with_curve / "checkpoint.pt"), load_checkpoint(without / "checkpoint.pt")
    assert a["config"] == b["config"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for name, tensor in a["guide"].items():
        assert torch.equal(tensor, b["guide"][name]), name


def test_reproduce_split_by_a_time_budget_and_a_lost_curve_row_are_repaired(tmp_path,
                                                                            monkeypatch):
    out = tmp_path / "run"
    reproduce = load_script("reproduce")
    # The time budget stops after the first epoch (each epoch seems to take an hour).
    clock = iter(range(0, 10 ** 7, 3600))
    monkeypatch.setattr("inference.training.loop.time.perf_counter", lambda: next(clock))
    summary = run_main("reproduce", "burda-vae-short", *TINY, "--num-epochs", "3",
                       "--curve-epochs", "1,3", "--time-budget", "90", "--out", out)
    monkeypatch.undo()
    assert summary["epochs"] == 1 and not (out / "test-importance.json").exists()
    # A crash after the checkpoint of epoch 1, before its curve row: resume writes it.
    (out / "curve.csv").unlink()
    run_main("reproduce", "burda-vae-short", *TINY, "--num-epochs", "3", "--curve-epochs", "1,3",
             "--out", out, "--resume")
    assert [int(row["epoch"]) for row in read_rows(out / "curve.csv")] == [1, 3]
    assert (out / "test-importance.json").exists()
    assert reproduce.default_curve_epochs(400) == [1, 2, 5, 10, 20, 50, 100, 200, 400]


def test_the_batch100_variant_changes_only_the_batch_and_the_length_of_the_schedule():
    reproduce = load_script("reproduce")

    def preset(name):
        args = reproduce.make_parser().parse_args([name, "--out", "run"])
        reproduce.apply_preset(args)
        return vars(args)

    for objective in ("vae", "iwae5", "iwae50"):
        batch100, short = preset(f"burda-{objective}-batch100"), preset(f"burda-{objective}-short")
        assert {key for key in batch100 if batch100[key] != short[key]} == {
            "preset", "batch_size", "num_epochs"}
        assert (batch100["batch_size"], batch100["num_epochs"]) == (100, 2000)
        assert (short["batch_size"], short["num_epochs"]) == (20, 400)


def test_reproduce_refuses_what_it_cannot_do(tmp_path, capsys):
    assert "invalid choice: 'burda'" in refused(capsys, "reproduce", "burda", *TINY, "--out",
                                                tmp_path / "a")
    line = refused(capsys, "reproduce", "burda-vae", *TINY, "--curve-samples", "0", "--out",
                   tmp_path / "b")
    assert "--curve-samples must be" in line
    assert "give the run folder with --out" in refused(capsys, "reproduce", "burda-vae", *TINY)


def test_reproduce_speaks_as_itself_and_refuses_curve_epochs_never_scored(tmp_path, capsys):
    out = tmp_path / "run"
    line = refused(capsys, "reproduce", "burda-vae-short", *TINY, "--num-epochs", "3",
                   "--curve-epochs", "1,5,10", "--out", out)
    assert line.startswith("reproduce.py: error: --curve-epochs asks for epochs 5,10, beyond the "
                           "last (--num-epochs 3)"), line
    assert not out.exists()  # refused before the training starts
    line = refused(capsys, "reproduce", "burda-vae-short", *TINY, "--curve-epochs", ",",
                   "--out", out)
    assert line.startswith("reproduce.py: error: --curve-epochs names no epoch"), line
    line = refused(capsys, "reproduce", "burda-vae-short", *TINY, "--num-epochs", "x")
    assert line.startswith("reproduce.py: error: argument --num-epochs"), line
    assert not out.exists()


def test_the_report_puts_runs_beside_the_published_numbers(tmp_path, capsys):
    runs = {}
    for preset in ("burda-vae-short", "burda-iwae5-short"):
        runs[preset] = tmp_path / preset
        run_main("reproduce", preset, *TINY, "--num-epochs", "2", "--out", runs[preset])
    table, figure = tmp_path / "table.md", tmp_path / "curves.png"
    rows, paired = run_main("reproduce_report", *runs.values(), "--labels", "vae,iwae5",
                            "--out", table, "--figure", figure)
    text = table.read_text()
    assert "-86.76" in text and "-85.54" in text and "IWAE, k = 5" in text
    assert [row["epochs"] for row in rows] == ["2 of 2", "2 of 2"]
    # Beside each score: the share of images it can be trusted on and the recommended mean.
    assert "| trusted | recommended log p(x) |" in text
    for row, path in zip(rows, runs.values()):
        verdicts = json.loads((path / "test-importance.json").read_text())["verdicts"]
        assert row["trusted"] == verdicts["num_trusted"] / 60
        assert row["recommended"] == verdicts["recommended_mean"]
        assert f"{row['recommended']:.2f}" in text
    assert figure.stat().st_size > 10000
    # The paired difference is the mean of the per-image differences of the two CSVs.
    scores = [{int(row["index"]): float(row["estimate"])
               for row in read_rows(path / "test-importance.csv")
               if row["estimator"] == "importance"} for path in runs.values()]
    differences = torch.tensor([scores[1][i] - scores[0][i] for i in scores[0]],
                               dtype=torch.float64)
    (pair,) = paired
    assert pair["difference"] == pytest.approx(differences.mean().item(), rel=1e-12)
    assert pair["paired_stderr"] == pytest.approx(
        (differences.std() / len(differences) ** 0.5).item(), rel=1e-9)
    assert pair["num_data"] == 60
    # A run stopped before its final score shows its curve, a blank score and no pair.
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    for name in ("config.json", "metrics.csv", "curve.csv"):
        shutil.copy(runs["burda-iwae5-short"] / name, stopped / name)
    rows, paired = run_main("reproduce_report", runs["burda-vae-short"], stopped)
    assert math.isnan(rows[1]["log_px"]) and len(rows[1]["curve"]["epochs"]) == 2
    assert paired == []
    line = refused(capsys, "reproduce_report", stopped, runs["burda-vae-short"])
    assert "has no final score" in line and "put a finished run first" in line
    line = refused(capsys, "reproduce_report", tmp_path, "--out", tmp_path / "other.md")
    assert "has no config.json; is it a finished reproduce.py run?" in line
    assert "exists" in refused(capsys, "reproduce_report", *runs.values(), "--out", table)

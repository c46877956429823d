"""Reporting: the numbers behind the story's figures (evaluation.story) against independent
computations, every figure at its stated pixel size, one table renderer for every format, a
valid self-contained HTML report, and explore.py and tutorial.py end to end."""

import json
import math
import os
import re
import struct
from html.parser import HTMLParser

import pytest
import torch

from conftest import refused, run_main, small_args, small_config
from evaluation import story
from evaluation.estimators import Estimate, convergence_curves, estimate
from evaluation.log_density import LatentLogDensity
from evaluation.reporting import comparison, figures
from evaluation.reporting.html import figure_html, page, settings_html
from evaluation.reporting.tables import (ESTIMATE_COLUMNS, PAIRED_COLUMNS, columns, render,
                                         settings_rows)
from inference.build import build
from models.data import synthetic_story


def png_size(path):
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def image_model(z_dim=2, prior="standard"):
    model, guide = build(small_config(x_dim=784, image_shape=[28, 28], z_dim=z_dim,
                                      hidden_dims=[16], prior=prior))
    return model.eval(), guide.eval()


def images(count=20):
    return torch.rand(count, 784).bernoulli()


# ---------------------------------------------------------------------------------------------
# The numbers behind the figures

def test_latent_grid_runs_over_quantiles_of_the_runs_own_prior():
    model, _ = image_model(3)
    grid = story.latent_grid(model, grid_size=6)
    assert grid["images"].shape == (6, 6, 28, 28)
    expected = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.03, 0.97, 6))
    assert torch.allclose(grid["columns"], expected, atol=1e-5)
    assert torch.allclose(grid["rows"], expected.flip(0), atol=1e-5)
    assert "N(0, 1)" in grid["description"]
    # A mixture prior: the grid follows the mixture's own marginals, found by sampling it.
    model, _ = image_model(2, prior="mog")
    with torch.no_grad():
        model.prior.locs.copy_(torch.tensor([[5.0, -3.0]] * 10))
    grid = story.latent_grid(model, grid_size=5, low=0.5, high=0.5)
    assert abs(grid["columns"][0].item() - 5.0) < 0.1
    assert abs(grid["rows"][0].item() + 3.0) < 0.1
    assert "empirical quantiles of the run's prior" in grid["description"]
    with pytest.raises(ValueError, match="--directions must be two different latent"):
        story.latent_grid(model, directions=(0, 0))


def test_blueprint_decodes_z_and_draws_from_the_likelihood():
    model, _ = image_model(3)
    result = story.blueprint(model, [0.1, 0.5, 0.0], num_draws=5)
    assert result["draws"].shape == (5, 28, 28)
    assert set(result["draws"].unique().tolist()) <= {0.0, 1.0}  # Bernoulli draws
    expected = torch.sigmoid(model.decoder(torch.tensor([0.1, 0.5, 0.0])))
    assert torch.allclose(result["mean"].flatten(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="--z needs 3 comma-separated values"):
        story.blueprint(model, [0.1, 0.5])


def test_latent_map_projects_encoder_means_by_pca_above_two_dimensions():
    model, guide = image_model(5)
    x = images()
    view = story.latent_map(guide, x, torch.arange(20) % 10)
    assert view["coordinates"].shape == (20, 2) and "PCA" in view["method"]
    means = guide.distribution(x).mean.detach()
    centred = means - means.mean(0)
    # The projection keeps the two directions of largest variance: its variance is the sum of
    # the two largest eigenvalues of the covariance of the means.
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred)
    assert torch.allclose((view["coordinates"] ** 2).sum(), eigenvalues[-2:].sum(), rtol=1e-4)


def test_posterior_grid_matches_importance_and_prior_share_matches_the_prior_estimator():
    """On a 2-D story with a broad posterior, the grid posterior mean agrees with the posterior
    mean by self-normalized prior sampling, and the share of prior draws that carry the weight
    (ESS / K) agrees with the ESS of the ``prior`` estimator."""
    model = synthetic_story(z_dim=2, x_dim=8, seed=1)
    with torch.no_grad():
        x = model(batch_size=1)
    _, guide = build(small_config(x_dim=8))
    view = story.posterior_view(model, guide, x, num_prior_samples=20000, grid_points=200)
    assert abs(view["grid"].sum().item() - 1.0) < 1e-9
    assert abs(view["zoom_grid"].sum().item() - 1.0) < 1e-9
    estimated = estimate("prior", model, guide, x, 20000)
    share = estimated.ess[0].item() / 20000
    assert 0.02 < share < 0.9  # a regime where both ESS values are well determined
    assert abs(view["prior_weight_share"] - share) < 0.15 * share
    z = model.prior().sample((200000, 1))
    _, log_likelihood = LatentLogDensity(model, x)(z)
    weights = torch.softmax(log_likelihood[:, 0].double(), 0)
    mean = (weights.unsqueeze(-1) * z[:, 0].double()).sum(0)
    assert torch.allclose(view["posterior_mean"].double(), mean, atol=0.05)


def test_nearest_labels_names_the_region_a_latent_point_sits_in():
    means = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0]])
    labels = torch.tensor([3, 3, 7, 1, 1])
    facts = story.nearest_labels(means, labels, torch.tensor([0.05, 0.0]), count=3)
    assert facts == {"blueprint_region_label": 3, "blueprint_region_share": 2 / 3,
                     "blueprint_region_count": 3}
    assert story.nearest_labels(means, labels, torch.tensor([5.0, 5.0]),
                                count=2)["blueprint_region_label"] == 1


def test_image_figures_refuse_data_that_are_not_images():
    model, _ = build(small_config(x_dim=50))
    with pytest.raises(ValueError, match="cannot show data of dimension 50 as images"):
        story.latent_grid(model)


# ---------------------------------------------------------------------------------------------
# Figures: each a PNG of its stated size

@pytest.mark.parametrize("z_dim", [2, 4])
def test_every_figure_writes_a_png_of_its_stated_size(z_dim, tmp_path):
    model, guide = image_model(z_dim)
    x = images()
    shape = (28, 28)
    figures.latent_map(story.latent_map(guide, x, torch.arange(20) % 10),
                       tmp_path / "latent_map.png")
    figures.manifold(story.latent_grid(model, grid_size=6), tmp_path / "manifold.png")
    figures.blueprint(story.blueprint(model, [0.1] * z_dim, num_draws=5),
                      tmp_path / "blueprint.png")
    figures.posterior(story.posterior_view(model, guide, x[:1], num_prior_samples=200,
                                           grid_points=60, num_proposals=500,
                                           num_resampled=100), tmp_path / "posterior.png")
    curves = convergence_curves(model, guide, x[:1], (1, 10), ("prior", "importance", "ais"),
                                {"ais_steps": 5, "ais_leapfrog": 2})
    assert set(curves) == {"prior", "importance", "ais"}
    assert all(len(points) == 2 for points in curves.values())
    figures.convergence(curves, tmp_path / "convergence.png", ("reference", -500.0), 5)
    figures.reconstructions(x[:6], story.reconstructions(model, guide, x[:6]), shape,
                            tmp_path / "reconstructions.png")
    figures.samples(story.samples(model, count=6), shape, tmp_path / "samples.png")
    for name in figures.FIGURE_SIZES:
        assert os.path.getsize(tmp_path / f"{name}.png") > 1000, name
        assert png_size(tmp_path / f"{name}.png") == figures.pixel_size(name), name


# ---------------------------------------------------------------------------------------------
# Tables and HTML

SUMMARY = {"estimator": "importance", "num_samples": 1000, "num_data": 20,
           "log_px_mean": -96.12345, "log_px_stderr": 0.012345, "log_px_data_stderr": 0.9876,
           "ess_mean": 26.06, "khat_frac_above_0_7": 0.25, "seconds": 1.5}


def test_one_table_renders_the_same_numbers_in_every_format():
    rows = [SUMMARY, {**SUMMARY, "estimator": "quadrature", "num_samples": 0,
                      "ess_mean": math.nan, "khat_frac_above_0_7": math.nan}]
    text = render(rows)
    markdown = render(rows, style="markdown")
    html = render(rows, style="html")
    for shown in ("-96.123", "0.0123", "0.988", "26.1", "25%", "1.50"):
        assert shown in text and shown in markdown and shown in html, shown
    assert markdown.splitlines()[0] == ("| estimator | K | N | log p(x) | MC s.e. | data s.e. | "
                                        "ESS | k-hat > 0.7 | trusted | seconds |")
    assert markdown.splitlines()[2].startswith("| importance | 1000 | 20 | -96.123 |")
    assert "| quadrature | - | 20 |" in markdown  # no K, no ESS: shown as - and empty
    lines = text.splitlines()
    assert len({len(line) for line in lines[:2]}) == 1 and lines[1] == "-" * len(lines[0])
    subset = render([SUMMARY], columns("estimator", "log_px_mean"), "markdown")
    assert subset.splitlines()[0] == "| estimator | log p(x) |"
    old = {"run": "a", "baseline": "b", "estimator": "elbo", "num_samples": 5,
           "mean_difference": 1.23456, "paired_stderr": 0.1, "unpaired_stderr": 0.9}
    # A row without the verdicts' columns (as written before them) shows them blank.
    assert render([old], PAIRED_COLUMNS, "markdown").splitlines()[2] == \
        "| a | b | elbo | 5 | 1.235 | 0.100 | 0.900 |  |  |  |  |  |  |"
    verdict = {"num_trusted": 12, "trusted_difference": 1.5, "trusted_stderr": 0.25,
               "recommended_difference": 1.25, "recommended_stderr": 0.125}
    assert render([dict(old, **verdict, holds="no", holds_reason="sizes disagree")],
                  PAIRED_COLUMNS, "markdown").splitlines()[2] == \
        ("| a | b | elbo | 5 | 1.235 | 0.100 | 0.900 | 12 | 1.500 | 0.250 | 1.250 | 0.125 | "
         "no: sizes disagree |")
    assert render([dict(old, **verdict, holds="yes", holds_reason="")], PAIRED_COLUMNS,
                  "markdown").splitlines()[2].endswith("| 0.125 | yes |")
    with pytest.raises(ValueError, match="unknown table style 'latex'"):
        render(rows, ESTIMATE_COLUMNS, "latex")


def test_settings_rows_flatten_a_nested_configuration():
    rows = settings_rows({"model": {"z_dim": 2, "prior": {"name": "mog", "options": {}}},
                          "seed": 0})
    assert rows == [{"key": "model.z_dim", "value": 2}, {"key": "model.prior.name",
                                                         "value": "mog"},
                    {"key": "model.prior.options", "value": ""}, {"key": "seed", "value": 0}]


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.sources, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for key in ("src", "href"):
            if key in attributes:
                self.sources.append(attributes[key])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def check_self_contained_html(text):
    assert text.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert not checker.errors, checker.errors
    assert not checker.stack, f"unclosed tags {checker.stack}"
    assert checker.sources, "no embedded images"
    assert all(source.startswith("data:image/png;base64,") for source in checker.sources)
    assert "http://" not in text and "https://" not in text
    return checker


def test_report_page_is_valid_html_with_embedded_images(tmp_path):
    model, _ = image_model()
    figures.samples(story.samples(model, count=4), (28, 28), tmp_path / "samples.png")
    text = page("A <report> & more", [
        ("Table", render([{**SUMMARY, "estimator": "x<y"}], style="html")),
        ("Settings", settings_html({"a": {"b": 1.23456789}})),
        ("Figure", figure_html(str(tmp_path / "samples.png"), "caption with <angle>")),
        ("Missing", figure_html(str(tmp_path / "absent.png"), "not drawn"))])
    checker = check_self_contained_html(text)
    assert len(checker.sources) == 1
    assert "A &lt;report&gt; &amp; more" in text and "1.235" in text and "x&lt;y" in text


# ---------------------------------------------------------------------------------------------
# compare.py's paired differences and whether they survive the verdicts

#: per-point noise of mean 0 over every two neighbouring points (sd 0.3)
NOISE = torch.tensor([-0.3, 0.3] * 20, dtype=torch.float64)
FIRST_30 = torch.arange(40) < 30


def test_a_paired_difference_holds_when_trusted_points_and_recommended_values_agree():
    verdict = comparison.paired_verdict(1.0 + NOISE, 1.0 + NOISE.flip(0), FIRST_30)
    assert verdict["holds"] == "yes" and verdict["holds_reason"] == ""
    assert verdict["num_trusted"] == 30
    assert verdict["trusted_difference"] == pytest.approx(1.0)
    assert verdict["trusted_stderr"] == pytest.approx(NOISE[:30].std().item() / math.sqrt(30))
    assert verdict["recommended_difference"] == pytest.approx(1.0)
    assert verdict["recommended_stderr"] == pytest.approx(NOISE.std().item() / math.sqrt(40))


def test_a_paired_difference_whose_sign_flips_on_trusted_points_does_not_hold():
    # Better by 2 nats where the estimates cannot be trusted, worse by 0.5 where they can.
    difference = torch.where(torch.arange(40) < 20, -0.5, 2.0) + NOISE
    verdict = comparison.paired_verdict(difference, difference, torch.arange(40) < 20)
    assert difference.mean() > 0 and verdict["trusted_difference"] == pytest.approx(-0.5)
    assert verdict["holds"] == "no"
    assert verdict["holds_reason"] == "sign flips on trusted points"


def test_a_paired_difference_without_trusted_points_does_not_hold():
    verdict = comparison.paired_verdict(1.0 + NOISE, 1.0 + NOISE, torch.zeros(40, dtype=bool))
    assert (verdict["holds"], verdict["holds_reason"]) == ("no", "no trusted points")
    assert verdict["num_trusted"] == 0 and math.isnan(verdict["trusted_difference"])
    assert verdict["recommended_difference"] == pytest.approx(1.0)
    verdict = comparison.paired_verdict(1.0 + NOISE, 1.0 + NOISE, torch.arange(40) < 4)
    assert verdict["holds_reason"] == "too few trusted points (4)"


@pytest.mark.parametrize("difference, recommended, reason", [
    (0.01 + NOISE, 0.01 + NOISE, "not significant on trusted points and with recommended values"),
    (1.0 + NOISE, -2.0 + NOISE, "sign flips with recommended values"),
    (1.0 + NOISE, 3.0 + NOISE, "sizes disagree"),
    (1.0 + NOISE, torch.where(FIRST_30, 1.0, math.nan), "recommended values not finite"),
])
def test_a_paired_difference_says_why_it_does_not_hold(difference, recommended, reason):
    verdict = comparison.paired_verdict(difference, recommended, FIRST_30)
    assert (verdict["holds"], verdict["holds_reason"]) == ("no", reason)


def synthetic_estimate(name, values, num_samples, stderr=0.01):
    values = torch.as_tensor(values, dtype=torch.float64)
    ones = torch.ones_like(values)
    return Estimate(name, values, stderr * ones, ones, 0.1 * ones, ones, num_samples,
                    khat_applies=name != "quadrature")


def test_compare_results_judges_each_k_with_the_estimators_scored_once():
    """Importance on the grid K = 10, 100, quadrature scored once (K = 0): quadrature joins the
    verdicts of every K; importance is 1 nat low at K = 10 (it disagrees with quadrature) and
    right at K = 100. The second run is the first plus about 1 nat per point."""
    truth = torch.linspace(-100.0, -90.0, 12, dtype=torch.float64)
    shift = 1.0 + torch.linspace(-0.1, 0.1, 12, dtype=torch.float64)
    all_results = {}
    for label, offset in (("a", 0.0), ("b", shift)):
        exact = truth + offset
        all_results[label] = {
            ("importance", 10): synthetic_estimate("importance", exact - 1.0, 10),
            ("importance", 100): synthetic_estimate("importance", exact - 0.001, 100),
            ("quadrature", 0): synthetic_estimate("quadrature", exact, 0, stderr=0.0)}
    result = comparison.compare_results(all_results, {"a": list(range(12)),
                                                      "b": list(range(12))})
    assert list(result.verdicts["a"]) == [10, 100]
    trusted = {(row["run"], row["estimator"], row["num_samples"]): row["trusted_frac"]
               for row in result.rows}
    assert trusted == {(run, name, k): frac for run in "ab" for name, k, frac in (
        ("importance", 10, 0.0), ("importance", 100, 1.0), ("quadrature", 0, 1.0))}
    recommended = [(row["run"], row["num_samples"], row["trusted_frac"])
                   for row in result.recommended]
    assert recommended == [("a", 10, 1.0), ("a", 100, 1.0), ("b", 10, 1.0), ("b", 100, 1.0)]
    assert all(row["log_px_mean"] == pytest.approx(truth.mean().item() + (row["run"] == "b"))
               for row in result.recommended)
    assert [row["estimator"] for row in result.table_rows()] == \
        ["importance", "importance", "quadrature", "recommended", "recommended"] * 2
    # Per point at the largest K: each estimator and the recommended value, in each run.
    assert len(result.points) == 2 * (2 * 12 + 12)
    assert {row["reasons"] for row in result.points if row["num_samples"] == 100} == {""}
    paired = {row["estimator"]: row for row in result.paired_rows}
    assert list(paired) == ["importance", "quadrature"]
    for row in paired.values():
        assert row["num_trusted"] == 12 and (row["holds"], row["holds_reason"]) == ("yes", "")
        assert row["trusted_difference"] == pytest.approx(1.0)
        assert row["recommended_difference"] == pytest.approx(1.0)
    assert paired["importance"]["num_samples"] == 100
    assert list(result.paired_rows[0]) == list(comparison.PAIRED_FIELDS)


# ---------------------------------------------------------------------------------------------
# explore.py and tutorial.py

@pytest.fixture(scope="module")
def z2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "z2"
    run_main("train", *small_args(z_dim=2), "--out", out)
    return out


def test_explore_writes_every_figure_and_a_self_contained_report(z2_run, tmp_path, capsys):
    out = tmp_path / "figures"
    facts = run_main("explore", z2_run, "--out", out, "--num-data", "200",
                     "--convergence-k", "1,10,100", "--ais-steps", "5", "--eval-data", "20",
                     "--num-samples", "50", "--index", "3", "--z", "0.1,0.5", "--no-progress")
    assert f"to {out}" in capsys.readouterr().out
    for name in figures.FIGURE_SIZES:
        assert png_size(out / f"{name}.png") == figures.pixel_size(name), name
    text = (out / "report.html").read_text()
    checker = check_self_contained_html(text)
    assert len(checker.sources) == len(figures.FIGURE_SIZES) + 1  # and the training curves
    for words in ("Evaluation", "importance", "k-hat &gt; 0.7", "Configuration",
                  "model.prior.name"):
        assert words in text, words
    # The evaluation table: each estimator's share of trusted images (the mixture beside
    # importance checks it for missed modes), then the recommended row.
    assert "<th class=\"\">trusted</th>" in text and "recommended" in text
    table = json.loads((out / "explore.json").read_text())["estimators"]
    assert [row["estimator"] for row in table] == ["elbo", "importance", "mixture", "prior",
                                                   "recommended"]
    assert all(0 <= row["trusted_frac"] <= 1 for row in table)
    assert table[0]["num_trusted"] == 0   # the ELBO: a bound nothing checks
    written = json.loads((out / "explore.json").read_text())["facts"]
    assert written["index"] == facts["index"] == 3 and written["blueprint_z"] == "0.1,0.5"
    assert math.isfinite(facts["log_px_quadrature"])
    assert 0 < facts["prior_weight_share"] <= 1
    assert facts["manifold_grid"].startswith("quantiles of the prior N(0, 1)")


def test_explore_takes_the_recommended_row_of_an_evaluation_file_where_it_has_one(tmp_path):
    from evaluation.reporting.exploration import read_evaluation

    summary = {"estimator": "importance", "log_px_mean": -90.0, "trusted_frac": 0.5}
    recommended = {"estimator": "recommended", "log_px_mean": -89.5, "trusted_frac": 0.75}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"estimators": [summary], "recommended": recommended}))
    assert read_evaluation(path) == [summary, recommended]
    path.write_text(json.dumps({"estimators": [summary]}))   # written before the verdicts
    assert read_evaluation(path) == [summary]


def test_explore_refuses_bad_input_with_one_line(z2_run, tmp_path, capsys):
    line = refused(capsys, "explore", z2_run, "--index", "100000", "--out", tmp_path)
    assert "--index must lie in 0..499" in line
    line = refused(capsys, "explore", z2_run, "--z", "1,2,3", "--out", tmp_path,
                   "--convergence-k", "1")
    assert "--z needs 2 comma-separated values" in line
    assert "no checkpoint" in refused(capsys, "explore", tmp_path / "nothing")


def test_tutorial_builds_from_a_run_and_quotes_its_numbers(tmp_path):
    run_dir, docs = tmp_path / "run", tmp_path / "docs"
    run_main("tutorial", "--dataset", "mnist-subset", "--num-epochs", "1", "--run", run_dir,
             "--docs", docs, "--convergence-k", "1,10", "--eval-data", "20", "--num-samples",
             "20", "--device", "cpu", "--no-progress")
    text = (docs / "tutorial.md").read_text()
    linked = re.findall(r"\]\((figures/[a-z_]+\.png)\)", text)
    assert len(linked) == 7
    assert all((docs / path).is_file() for path in linked)
    assert sum((docs / path).stat().st_size for path in linked) < 400 * 1024
    explored = json.loads((run_dir / "explore.json").read_text())
    facts = explored["facts"]
    assert f"{facts['prior_ess']:.1f}" in text
    assert f"{facts['log_px_quadrature']:.3f}" in text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['test_elbo']:.2f}" in text
    assert "python scripts/tutorial.py --dataset mnist-subset --num-epochs 1" in text
    assert "| estimator | K | N | log p(x) | MC s.e. | ESS | k-hat > 0.7 |" in text
    check_self_contained_html((run_dir / "report.html").read_text())

"""Figures of the story: each writes a PNG of its stated pixel size, and the numbers behind it are
right; the HTML report is valid and self-contained; explore.py runs end to end."""

import json
import math
import os
import struct
from html.parser import HTMLParser

import pytest
import torch

from conftest import small_config
from evaluation import figures
from evaluation.estimators import estimate
from evaluation.html_report import figure_html, page, table_html
from inference.build import build
from inference.data import synthetic_story
from test_scripts import SMALL, assert_one_line_error, run_script


def png_size(path):
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def image_model(z_dim=2):
    model, guide = build(small_config(x_dim=784, image_shape=[28, 28], z_dim=z_dim,
                                      hidden_dims=[16]))
    return model.eval(), guide.eval()


def images(count=20):
    return torch.rand(count, 784).bernoulli()


@pytest.mark.parametrize("name", ["latent_map", "manifold", "blueprint", "reconstructions",
                                  "samples"])
@pytest.mark.parametrize("z_dim", [2, 5])
def test_each_figure_writes_a_png_of_its_stated_size(name, z_dim, tmp_path):
    model, guide = image_model(z_dim)
    x = images()
    path = tmp_path / f"{name}.png"
    if name == "latent_map":
        result = figures.latent_map(model, guide, x, torch.arange(20) % 10, path)
        assert result["coordinates"].shape == (20, 2)
        assert ("PCA" in result["method"]) == (z_dim > 2)
    elif name == "manifold":
        result = figures.manifold(model, path, grid_size=6)
        assert result["images"].shape == (6, 6, 28, 28)
        quantiles = torch.distributions.Normal(0.0, 1.0).cdf(result["values"])
        assert torch.allclose(quantiles, torch.linspace(0.03, 0.97, 6), atol=1e-5)
    elif name == "blueprint":
        result = figures.blueprint(model, [0.1, 0.5] + [0.0] * (z_dim - 2), path, num_draws=5)
        assert result["draws"].shape == (5, 28, 28)
        assert set(result["draws"].unique().tolist()) <= {0.0, 1.0}  # Bernoulli draws
        expected = torch.sigmoid(model.decoder(torch.tensor([0.1, 0.5] + [0.0] * (z_dim - 2))))
        assert torch.allclose(result["mean"].flatten(), expected, atol=1e-6)
    elif name == "reconstructions":
        result = figures.reconstructions(model, guide, x[:6], path)
        assert result["reconstructions"].shape == (6, 784)
    else:
        result = figures.samples(model, path, count=6)
        assert result["x"].shape == (6, 784)
    assert os.path.getsize(path) > 1000
    assert png_size(path) == figures.pixel_size(name)


@pytest.mark.parametrize("z_dim", [2, 4])
def test_posterior_figure_grid_is_normalized_and_convergence_is_drawn(z_dim, tmp_path):
    model, guide = image_model(z_dim)
    x = images(1)
    result = figures.posterior(model, guide, x, tmp_path / "posterior.png",
                               num_prior_samples=200, grid_points=60, num_proposals=500,
                               num_resampled=100)
    assert png_size(tmp_path / "posterior.png") == figures.pixel_size("posterior")
    assert 1.0 <= result["prior_ess"] <= 200
    if z_dim == 2:
        assert abs(result["grid"].sum().item() - 1.0) < 1e-9
        assert abs(result["zoom_grid"].sum().item() - 1.0) < 1e-9
    else:
        assert result["posterior_samples"].shape == (100, z_dim)
    curves = figures.convergence(model, guide, x, tmp_path / "convergence.png",
                                 num_samples=(1, 10), ais_steps=5, ais_leapfrog=2,
                                 reference=("reference", -500.0))
    assert set(curves) == {"prior", "importance", "ais"}
    assert all(len(points) == 2 for points in curves.values())
    assert png_size(tmp_path / "convergence.png") == figures.pixel_size("convergence")


def test_posterior_grid_matches_quadrature_and_prior_share_matches_the_prior_estimator(
        tmp_path):
    """On a 2-D story with a broad posterior, the figure's grid posterior mean agrees with the
    posterior mean by importance sampling, and the share of prior draws that carry the weight
    (ESS / K) agrees with the ESS of the ``prior`` estimator."""
    model = synthetic_story(z_dim=2, x_dim=8, seed=1)
    with torch.no_grad():
        x = model(batch_size=1)
    _, guide = build(small_config(x_dim=8))
    result = figures.posterior(model, guide, x, tmp_path / "posterior.png",
                               num_prior_samples=20000, grid_points=200)
    estimated = estimate("prior", model, guide, x, 20000)
    share = estimated.ess[0].item() / 20000
    assert 0.02 < share < 0.9  # a regime where both ESS values are well determined
    assert abs(result["prior_weight_share"] - share) < 0.15 * share
    z = model.prior().sample((200000, 1))
    from evaluation.log_density import LatentLogDensity

    _, log_likelihood = LatentLogDensity(model, x)(z)
    weights = torch.softmax(log_likelihood[:, 0].double(), 0)
    mean = (weights.unsqueeze(-1) * z[:, 0].double()).sum(0)
    assert torch.allclose(result["posterior_mean"].double(), mean, atol=0.05)


def test_blueprint_needs_one_value_per_latent_dimension(tmp_path):
    model, _ = image_model(3)
    with pytest.raises(ValueError, match="--z needs 3 comma-separated values"):
        figures.blueprint(model, [0.1, 0.5], tmp_path / "b.png")


def test_image_figures_refuse_data_that_are_not_images(tmp_path):
    model, _ = build(small_config(x_dim=50))
    with pytest.raises(ValueError, match="cannot show data of dimension 50 as images"):
        figures.samples(model, tmp_path / "s.png")


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
    figures.samples(model, tmp_path / "samples.png", count=4)
    text = page("A <report> & more", [
        ("Table", table_html([{"a": "x<y", "b": 1.23456789, "c": math.nan}],
                             [("a", "A"), ("b", "B"), ("c", "C")])),
        ("Figure", figure_html(str(tmp_path / "samples.png"), "caption with <angle>")),
        ("Missing", figure_html(str(tmp_path / "absent.png"), "not drawn"))])
    checker = check_self_contained_html(text)
    assert len(checker.sources) == 1
    assert "A &lt;report&gt; &amp; more" in text and "1.235" in text


@pytest.fixture(scope="module")
def z2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "z2"
    args = [arg for arg in SMALL]
    args[args.index("--z-dim") + 1] = "2"
    result = run_script("train.py", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_explore_writes_every_figure_and_a_self_contained_report(z2_run, tmp_path):
    out = tmp_path / "figures"
    result = run_script("explore.py", str(z2_run), "--out", str(out), "--num-data", "200",
                        "--convergence-k", "1,10,100", "--ais-steps", "5", "--eval-data", "20",
                        "--num-samples", "50", "--index", "3", "--z", "0.1,0.5",
                        "--no-progress")
    assert result.returncode == 0, result.stderr
    assert f"to {out}" in result.stdout
    for name in figures.FIGURE_SIZES:
        assert png_size(out / f"{name}.png") == figures.pixel_size(name), name
    text = (out / "report.html").read_text()
    checker = check_self_contained_html(text)
    assert len(checker.sources) == len(figures.FIGURE_SIZES) + 1  # and the training curves
    for words in ("Evaluation", "importance", "share k-hat", "Configuration"):
        assert words in text
    facts = json.loads((out / "explore.json").read_text())["facts"]
    assert facts["index"] == 3 and facts["blueprint_z"] == "0.1,0.5"
    assert math.isfinite(facts["log_px_quadrature"])
    assert 0 < facts["prior_weight_share"] <= 1


def test_explore_refuses_bad_input_with_one_line(z2_run, tmp_path):
    result = run_script("explore.py", str(z2_run), "--index", "100000", "--out",
                        str(tmp_path))
    assert_one_line_error(result, "--index must lie in 0..499")
    result = run_script("explore.py", str(z2_run), "--z", "1,2,3", "--out", str(tmp_path),
                        "--convergence-k", "1")
    assert_one_line_error(result, "--z needs 2 comma-separated values")
    result = run_script("explore.py", str(tmp_path / "nothing"))
    assert_one_line_error(result, "no checkpoint")


def test_tutorial_builds_from_a_run_and_quotes_its_numbers(tmp_path):
    import re

    run_dir, docs = tmp_path / "run", tmp_path / "docs"
    result = run_script("tutorial.py", "--dataset", "mnist-subset", "--num-epochs", "1",
                        "--run", str(run_dir), "--docs", str(docs), "--convergence-k", "1,10",
                        "--eval-data", "20", "--num-samples", "20", "--device", "cpu",
                        "--no-progress")
    assert result.returncode == 0, result.stderr
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
    check_self_contained_html((run_dir / "report.html").read_text())


def test_nearest_labels_names_the_region_a_latent_point_sits_in():
    means = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0]])
    labels = torch.tensor([3, 3, 7, 1, 1])
    facts = figures.nearest_labels(means, labels, torch.tensor([0.05, 0.0]), count=3)
    assert facts == {"blueprint_region_label": 3, "blueprint_region_share": 2 / 3,
                     "blueprint_region_count": 3}
    assert figures.nearest_labels(means, labels, torch.tensor([5.0, 5.0]),
                                  count=2)["blueprint_region_label"] == 1

"""Per-point verdicts (evaluation/verdicts.py): synthetic results with known verdicts, and the
missed-mode check against quadrature on a z_dim = 2 model whose guide provably misses one of two
posterior modes, and on a linear-Gaussian model whose guide is the exact posterior."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from conftest import linear_gaussian
from evaluation.estimators import ESTIMATORS, Estimate, estimate
from evaluation.verdicts import (MODE_GAP, NOT_CHECKED, Verdicts, disagrees, format_summary,
                                 kind_of, missed_mode, point_verdicts, summarize_verdicts)
from models.base.config import ConfigError
from inference.guides import ExactPosteriorGuide, Guide
from models.likelihoods import GaussianLikelihood
from models.linear_gaussian import log_marginal
from models.priors import StandardNormalPrior
from models.vae import VAE


def result(estimate_, stderr, khat=None):
    """A per-point result as the verdicts take it: float64 tensors of shape (N,)."""
    out = {"estimate": torch.tensor(estimate_, dtype=torch.float64),
           "stderr": torch.tensor(stderr, dtype=torch.float64)}
    if khat is not None:
        out["khat"] = torch.tensor(khat, dtype=torch.float64)
    return out


# ---------------------------------------------------------------------------------------------
# Synthetic per-point results with known verdicts
# ---------------------------------------------------------------------------------------------

def test_khat_missed_mode_and_recommendation():
    # point 0: agree; 1: mixture 0.5 nats above (missed mode by the gap rule); 2: 0.1 nats above
    # but 10 s.e. (the s.e. rule); 3: 0.15 above within 1.5 s.e. (no flag); 4: heavy tails.
    importance = result([-100.0, -100.0, -100.0, -100.0, -100.0],
                        [0.05, 0.05, 0.005, 0.07, 0.05], [0.2, 0.3, 0.1, 0.4, 0.95])
    mixture = result([-100.02, -99.5, -99.9, -99.85, -100.1],
                     [0.05, 0.05, 0.008, 0.07, 0.05], [0.3, 0.5, 0.2, 0.4, 0.5])
    verdicts = point_verdicts({"importance": importance, "mixture": mixture})
    assert isinstance(verdicts, Verdicts) and len(verdicts) == 5
    assert verdicts.primary == "importance"
    assert verdicts.trusted.tolist() == [True, False, False, True, False]
    assert verdicts.reasons == ["", "missed-mode", "missed-mode", "", "khat"]
    # The tightest passing estimate: importance at 0 and 4 (mixture lower, or importance fails
    # at 4 so the mixture), the mixture where it lies above.
    assert verdicts.recommended_estimator == ["importance", "mixture", "mixture", "mixture",
                                              "mixture"]
    assert torch.allclose(verdicts.recommended,
                          torch.tensor([-100.0, -99.5, -99.9, -99.85, -100.1], dtype=torch.float64))
    assert verdicts.recommended_trusted.all()
    assert verdicts.codes["mixture"] == [""] * 5


def test_mode_rules_directly():
    guide_estimate = torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    se = torch.tensor([0.01, 0.3, 0.01, 0.3], dtype=torch.float64)
    defensive = torch.tensor([0.19, 0.21, 0.06, math.nan], dtype=torch.float64)
    # 0.19 nats at 13 s.e.: the s.e. rule; 0.21 at 0.5 s.e.: the gap rule; 0.06 at 4 s.e.: both
    # rules' thresholds (> 0.05 nats, > 3 s.e.); NaN: never.
    assert missed_mode(guide_estimate, se, defensive, se).tolist() == [True, True, True, False]
    assert missed_mode(guide_estimate, se, defensive, se, mode_gap=None).tolist() == \
        [True, False, True, False]
    assert disagrees(guide_estimate, se, defensive, se, tolerance=0.1).tolist() == \
        [True, False, False, False]
    # Without standard errors only the gap rule speaks.
    nan_se = torch.full((2,), math.nan, dtype=torch.float64)
    assert missed_mode(torch.zeros(2, dtype=torch.float64), nan_se,
                       torch.tensor([0.3, 0.1], dtype=torch.float64), nan_se).tolist() == \
        [True, False]
    assert MODE_GAP == 0.2


def test_guide_estimate_alone_is_not_checked_for_modes():
    importance = result([-10.0, -11.0, -12.0], [0.1, 0.1, 0.1], [0.2, 0.9, math.nan])
    verdicts = point_verdicts({"importance": importance})
    assert verdicts.reasons == [NOT_CHECKED, f"khat;{NOT_CHECKED}", NOT_CHECKED]
    assert not verdicts.trusted.any() and not verdicts.recommended_trusted.any()
    # The best available value is still recommended, marked untrusted.
    assert verdicts.recommended_estimator == ["importance"] * 3
    relaxed = point_verdicts({"importance": importance}, require_mode_check=False)
    assert relaxed.reasons == ["", "khat", NOT_CHECKED]       # no k-hat, nothing to compare
    assert relaxed.trusted.tolist() == [True, False, False]


def test_disagreement_ais_gap_and_reference():
    importance = result([-50.0, -50.0, -50.0, -50.0], [0.05] * 4, [0.1] * 4)
    mixture = result([-50.0, -50.02, -49.99, -49.99], [0.05] * 4, [0.3] * 4)
    ais = result([-50.0, -49.2, -50.0, -50.02], [0.1] * 4, [0.2] * 4)
    reference = torch.tensor([-50.0, -49.2, -50.0, -49.6], dtype=torch.float64)
    verdicts = point_verdicts({"importance": importance, "mixture": mixture, "ais": ais},
                              reference=reference, ais_gap=torch.tensor([0.1, 0.1, 0.9, 0.1]))
    # 1: importance and mixture both 0.8 below AIS and the reference; 2: AIS's gap too wide;
    # 3: all of them 0.4 below the reference, by 8 s.e.
    assert verdicts.reasons == ["", "disagree:ais;disagree:reference", "",
                                "disagree:reference"]
    assert verdicts.codes["mixture"] == ["", "disagree:ais;disagree:reference", "",
                                         "disagree:reference"]
    assert verdicts.codes["ais"] == ["", "", "ais-gap", "disagree:reference"]
    assert verdicts.recommended_estimator[1] == "ais"
    assert verdicts.recommended_estimator[2] == "mixture"         # AIS fails, mixture highest
    assert not verdicts.recommended_trusted[3]
    # A gap in nats for every point at once, and an estimate above the reference.
    above = point_verdicts({"importance": result([-49.0], [0.05], [0.1]),
                            "mixture": result([-49.0], [0.05], [0.2]),
                            "ais": result([-49.1], [0.05], [0.2])},
                           reference=torch.tensor([-49.5]), ais_gap=1.0)
    assert above.reasons == ["disagree:reference"]
    assert above.codes["ais"] == ["ais-gap;disagree:reference"]


def test_an_estimate_too_few_weights_could_check_is_never_trusted_nor_recommended_as_such():
    # AIS with 3 chains (k-hat needs 20 weights) lies highest and agrees with importance within
    # its error: without k-hat its error cannot be believed, so it is "not checked" and the
    # recommended value is the checked mixture's.
    importance = result([-100.0, -100.0], [0.05, 0.05], [0.3, 0.3])
    mixture = result([-99.98, -99.99], [0.05, 0.05], [0.3, 0.3])
    ais = {**result([-99.9, -99.9], [0.2, 0.2], [math.nan, math.nan]), "khat_checked": False}
    verdicts = point_verdicts({"importance": importance, "mixture": mixture, "ais": ais})
    assert verdicts.codes["ais"] == ["not checked", "not checked"]
    assert verdicts.trusted.tolist() == [True, True]
    assert verdicts.recommended_estimator == ["mixture", "mixture"]
    assert verdicts.recommended.tolist() == [-99.98, -99.99]
    # Where k-hat does not apply (no khat_checked given, or True with NaN k-hats from equal
    # weights), nothing is added.
    ais["khat_checked"] = True
    assert point_verdicts({"importance": importance, "mixture": mixture,
                           "ais": ais}).codes["ais"] == ["", ""]


def test_an_estimator_of_your_own_declares_its_kind(monkeypatch):
    monkeypatch.setattr(ESTIMATORS, "kinds", dict(ESTIMATORS.kinds))
    monkeypatch.setattr(ESTIMATORS, "_entries", dict(ESTIMATORS._entries))
    ESTIMATORS.register("wide", lambda model, guide, x, num_samples: None, kind="defensive")
    assert kind_of("wide") == "defensive"
    importance = result([-100.0], [0.05], [0.3])
    wide = result([-99.5], [0.05], [0.3])
    verdicts = point_verdicts({"importance": importance, "wide": wide})
    assert verdicts.reasons == ["missed-mode"] and verdicts.recommended_estimator == ["wide"]
    with pytest.raises(ConfigError, match="unknown kind 'nonsense' of the estimator 'odd'"):
        ESTIMATORS.register("odd", lambda model, guide, x, num_samples: None, kind="nonsense")


def test_elbo_is_never_recommended_over_a_lower_bound():
    elbo = result([-60.0, -60.0], [0.01, 0.01])
    importance = result([-58.0, -58.0], [0.05, 0.05], [0.3, 1.5])
    mixture = result([-58.1, math.nan], [0.05, math.nan], [0.3, math.nan])
    verdicts = point_verdicts({"elbo": elbo, "importance": importance, "mixture": mixture})
    assert verdicts.codes["elbo"] == [NOT_CHECKED, NOT_CHECKED]
    assert verdicts.recommended_estimator == ["importance", "importance"]
    assert verdicts.recommended_trusted.tolist() == [True, False]
    assert verdicts.reasons == ["", f"khat;{NOT_CHECKED}"]    # no mixture at point 1
    alone = point_verdicts({"elbo": elbo})
    assert alone.primary == "elbo" and alone.recommended_estimator == ["elbo", "elbo"]
    assert not alone.recommended_trusted.any()


def test_fallback_takes_the_highest_sampling_estimate_and_references_first():
    importance = result([-30.0, -30.6], [0.2, 0.2], [1.2, 1.2])
    mixture = result([-30.3, -30.3], [0.2, 0.2], [0.9, 0.9])
    prior = result([-29.0, -29.0], [0.5, 0.5], [1.8, 1.8])
    verdicts = point_verdicts({"importance": importance, "mixture": mixture, "prior": prior})
    assert not verdicts.recommended_trusted.any()
    # The higher of importance and mixture, never the prior's overshooting estimate.
    assert verdicts.recommended_estimator == ["importance", "mixture"]
    assert verdicts.recommended.tolist() == [-30.0, -30.3]
    assert point_verdicts({"prior": prior, "elbo": result([-31.0, -31.0], [0.1, 0.1])}
                          ).recommended_estimator == ["prior", "prior"]
    with_quadrature = point_verdicts({"importance": importance, "mixture": mixture,
                                      "quadrature": result([-29.9, -29.9], [1e-4, 1e-4])})
    assert with_quadrature.recommended_estimator == ["quadrature", "quadrature"]
    assert with_quadrature.recommended_trusted.all()


def test_not_finite_estimates():
    verdicts = point_verdicts({"importance": result([math.nan, -5.0], [math.nan, 0.1],
                                                    [math.nan, 0.1]),
                               "mixture": result([math.nan, -5.0], [math.nan, 0.1], [0.1, 0.1])})
    assert verdicts.reasons[0] == "not finite"
    assert math.isnan(verdicts.recommended[0]) and verdicts.recommended_estimator[0] == ""
    summary = summarize_verdicts(verdicts)
    assert math.isnan(summary["recommended_mean"])
    assert any("no finite estimate" in line for line in summary["advice"])


def test_summary_counts_mean_and_advice():
    importance = result([-10.0, -20.0, -30.0, -40.0], [0.1] * 4, [0.1, 0.1, 0.9, 0.1])
    mixture = result([-10.0, -19.0, -30.1, -40.0], [0.1] * 4, [0.2, 0.3, 0.5, 0.2])
    verdicts = point_verdicts({"importance": importance, "mixture": mixture})
    summary = summarize_verdicts(verdicts)
    assert summary["num_points"] == 4 and summary["num_trusted"] == 2
    assert summary["num_recommended_trusted"] == 4
    assert summary["recommended_mean"] == pytest.approx((-10.0 - 19.0 - 30.1 - 40.0) / 4)
    assert summary["recommended_stderr"] == pytest.approx(math.sqrt(4 * 0.01) / 4)
    assert summary["recommended_by"] == {"importance": 2, "mixture": 2}
    assert summary["reasons"] == {"missed-mode": 1, "khat": 1}
    advice = " ".join(summary["advice"])
    assert "2 of the 2 untrusted points have a recommended value" in advice
    assert "k-hat" in advice and "ais" in advice and "mixture" in advice
    text = format_summary(summary)
    assert text.startswith("2 of 4 points trusted (importance)")
    assert "mean log p(x) with the recommended values: -24.775" in text


def test_the_error_of_the_recommended_mean_adds_up_the_spreads_of_the_chosen_estimates():
    # Per point the error of the chosen estimate: importance's at 0 and 2, the mixture's at 1
    # (above by the gap rule); the mean's error adds their spreads, where a result gives them.
    importance = result([-10.0, -20.0, -30.0], [0.2, 0.2, 0.2], [0.1, 0.1, 0.1])
    importance["stderr_spread"] = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64)
    mixture = result([-10.0, -19.0, -30.0], [0.4, 0.4, 0.4], [0.1, 0.1, 0.1])
    verdicts = point_verdicts({"importance": importance, "mixture": mixture})
    assert verdicts.recommended_estimator == ["importance", "mixture", "importance"]
    assert verdicts.recommended_stderr.tolist() == [0.2, 0.4, 0.2]
    assert verdicts.recommended_spread.tolist() == [0.1, 0.4, 0.1]   # no spread: its stderr
    summary = summarize_verdicts(verdicts)
    assert summary["recommended_stderr"] == pytest.approx(math.sqrt(0.01 + 0.16 + 0.01) / 3)
    # With no error known at any point (one sample each), the mean's error is unknown, not 0.
    single = point_verdicts({"importance": result([-10.0, -20.0], [math.nan] * 2, [0.1] * 2),
                             "mixture": result([-11.0, -21.0], [math.nan] * 2, [0.1] * 2)})
    assert math.isnan(summarize_verdicts(single)["recommended_stderr"])


def test_inputs_kinds_and_errors():
    assert kind_of("mixture0.8") == "defensive" and kind_of("importance") == "guide"
    assert kind_of("my_estimator") == "sampling"
    assert kind_of("wide", {"wide": "defensive"}) == "defensive"
    assert set(ESTIMATORS.kinds) == set(ESTIMATORS)   # every estimator declares its kind
    with pytest.raises(ValueError, match="unknown kind"):
        kind_of("x", {"x": "nonsense"})
    nan = torch.full((2,), math.nan, dtype=torch.float64)
    estimates = [Estimate("importance", torch.tensor([-5.0, -6.0], dtype=torch.float64),
                          torch.tensor([0.1, 0.1], dtype=torch.float64), nan,
                          torch.tensor([0.1, 0.1], dtype=torch.float64), nan, 100),
                 Estimate("mixture", torch.tensor([-5.0, -5.5], dtype=torch.float64),
                          torch.tensor([0.1, 0.1], dtype=torch.float64), nan,
                          torch.tensor([0.1, 0.1], dtype=torch.float64), nan, 100)]
    verdicts = point_verdicts(estimates)                     # a sequence of Estimates
    assert verdicts.reasons == ["", "missed-mode"]
    with pytest.raises(ValueError, match="differ in length"):
        point_verdicts({"importance": result([1.0], [0.1]),
                        "mixture": result([1.0, 2.0], [0.1, 0.1])})
    with pytest.raises(ValueError, match="primary estimator 'ais'"):
        point_verdicts({"importance": result([1.0], [0.1])}, primary="ais")


# ---------------------------------------------------------------------------------------------
# A z_dim = 2 model with a bimodal posterior and a guide fixed on one mode, against quadrature
# ---------------------------------------------------------------------------------------------

class SquareDecoder(nn.Module):
    """f(z) = (z_1^2, z_2): p(x | z) cannot tell z_1 from -z_1, so for x_1 > 0 the posterior has
    two mirror-image modes at z_1 ~ +-sqrt(x_1), each with half of the mass."""

    def forward(self, z):
        return torch.stack([z[..., 0] ** 2, z[..., 1]], -1)


class OneModeGuide(Guide):
    """q(z | x): a Gaussian fitted (by moments on a grid) to the mode with z_1 > 0 alone, its
    scales inflated a little so that its weights there are light-tailed."""

    def __init__(self, loc, scale):
        super().__init__(2, 2)
        self.loc, self.scale = loc, scale

    def distribution(self, x):
        return dist.Normal(self.loc[:x.shape[0]], self.scale[:x.shape[0]]).to_event(1)


def bimodal_model_and_guide(x, sigma=0.3, inflation=1.3):
    model = VAE(StandardNormalPrior(2), SquareDecoder(), GaussianLikelihood(sigma=sigma), 2)
    model.requires_grad_(False).eval()
    # Moments of the posterior restricted to z_1 > 0, on a fine grid.
    axis = torch.linspace(-6, 6, 801, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, 2)
    log_f = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
             + dist.Normal(SquareDecoder()(z), sigma).log_prob(x.double()).sum(-1))  # (G, N)
    log_f = torch.where(z[..., 0] > 0, log_f, -math.inf)
    weights = torch.softmax(log_f, 0).unsqueeze(-1)
    loc = (weights * z).sum(0)
    scale = (weights * (z - loc) ** 2).sum(0).sqrt() * inflation
    return model, OneModeGuide(loc.float(), scale.float())


def test_missed_mode_is_flagged_where_the_guide_misses_half_the_posterior():
    x = torch.tensor([[2.5, 0.3], [1.5, -0.5], [2.0, 0.0]])
    model, guide = bimodal_model_and_guide(x)
    truth = estimate("quadrature", model, None, x, None).estimate
    importance = estimate("importance", model, guide, x, 2000)
    mixture = estimate("mixture", model, guide, x, 2000, mixture_weight=0.5)
    # The guide sees one mode of two mirror images: importance is log 2 low, and its weights
    # do not show it (light tails on the mode it proposes).
    assert torch.allclose(importance.estimate, truth - math.log(2), atol=0.08), \
        (importance.estimate - truth)
    assert (importance.khat < 0.5).all(), importance.khat
    # The defensive mixture finds the other mode.
    assert ((mixture.estimate - truth).abs() < 4 * mixture.stderr + 0.05).all(), \
        (mixture.estimate - truth, mixture.stderr)
    verdicts = point_verdicts({"importance": importance, "mixture": mixture})
    assert verdicts.reasons == ["missed-mode"] * 3
    assert not verdicts.trusted.any()
    assert verdicts.recommended_estimator == ["mixture"] * 3
    assert ((verdicts.recommended - truth).abs() < 4 * verdicts.recommended_stderr + 0.05).all()
    # The same with quadrature as the reference: also a disagreement with the truth.
    checked = point_verdicts({"importance": importance, "mixture": mixture}, reference=truth)
    assert all(reason.split(";") == ["missed-mode", "disagree:reference"]
               for reason in checked.reasons), checked.reasons


def test_no_missed_mode_where_the_guide_is_the_exact_posterior():
    model = linear_gaussian()
    with torch.no_grad():
        x = model(batch_size=20)
    guide = ExactPosteriorGuide(model)
    exact = log_marginal(model, x)
    importance = estimate("importance", model, guide, x, 2000)
    mixture = estimate("mixture", model, guide, x, 2000, mixture_weight=0.5)
    assert ((importance.estimate - exact).abs() < 1e-3).all()
    verdicts = point_verdicts({"importance": importance, "mixture": mixture}, reference=exact)
    assert verdicts.trusted.all(), [r for r in verdicts.reasons if r]
    assert verdicts.reasons == [""] * 20
    assert ((verdicts.recommended - exact).abs() < 4 * verdicts.recommended_stderr + 0.02).all()
    # The mixture never lies far above an exact importance estimate.
    assert (mixture.estimate - importance.estimate).max() < MODE_GAP / 2

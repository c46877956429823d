"""The maths on log weights, tested on synthetic weights with known answers."""

import math

import pytest
import torch

from evaluation.diagnostics import (WeightSummary, effective_sample_size, fraction_flagged,
                                    log_mean_exp, log_mean_exp_stderr, max_normalized_weight,
                                    mean_stderr, pareto_khat, summarize_weights)


def test_log_mean_exp_is_stable_over_huge_ranges_in_float32():
    log_weights = torch.tensor([[1e4, -1e4, -3e4], [-1e4, -1e4, -3e4]], dtype=torch.float32)
    result = log_mean_exp(log_weights)
    assert torch.isfinite(result).all()
    assert result[0].item() == pytest.approx(1e4 - math.log(2), abs=1e-6)
    assert result[1].item() == pytest.approx(-1e4, abs=1e-6)
    assert result[2].item() == pytest.approx(-3e4, abs=1e-6)


def test_log_mean_exp_matches_direct_computation_on_moderate_weights():
    log_weights = torch.randn(50, 7, dtype=torch.float64)
    expected = log_weights.exp().mean(0).log()
    assert torch.allclose(log_mean_exp(log_weights), expected, atol=1e-12)


def test_all_minus_infinity_weights_give_minus_infinity_not_nan():
    log_weights = torch.full((5, 2), -math.inf)
    log_weights[:, 1] = 0.0
    assert log_mean_exp(log_weights)[0].item() == -math.inf
    assert log_mean_exp(log_weights)[1].item() == 0.0


def test_ess_of_equal_weights_is_k_and_of_one_dominant_weight_is_one():
    equal = torch.full((64, 3), -123.4)
    assert torch.allclose(effective_sample_size(equal), torch.full((3,), 64.0, dtype=torch.float64))
    dominant = torch.full((64, 1), -1000.0)
    dominant[7] = 0.0
    assert effective_sample_size(dominant).item() == pytest.approx(1.0)
    assert max_normalized_weight(dominant).item() == pytest.approx(1.0)
    assert max_normalized_weight(equal)[0].item() == pytest.approx(1 / 64)


def test_ess_matches_its_definition():
    log_weights = torch.randn(100, 4, dtype=torch.float64)
    w = log_weights.exp()
    assert torch.allclose(effective_sample_size(log_weights), w.sum(0) ** 2 / (w ** 2).sum(0))


@pytest.mark.parametrize("shape", [0.3, 0.5, 0.9])
def test_pareto_khat_recovers_the_shape_of_pareto_weights(shape):
    # w ~ Pareto(scale 1, tail index 1 / k): the generalized Pareto tail has shape k.
    torch.manual_seed(1)
    uniform = torch.rand(20000, 16, dtype=torch.float64)
    log_weights = -shape * torch.log(uniform)          # log of u^(-k)
    khat = pareto_khat(log_weights)
    assert khat.shape == (16,)
    # PSIS fits the largest 3 sqrt(K) = 424 weights, so one k-hat has a spread of about
    # (1 + k) / sqrt(424) < 0.1; the mean over 16 columns has a spread below 0.025.
    assert abs(khat.mean().item() - shape) < 0.08, khat
    assert (khat - shape).abs().max() < 0.35, khat


@pytest.mark.parametrize("num_samples", [100, 5000])
def test_a_points_khat_does_not_depend_on_the_points_fitted_with_it(num_samples):
    """The k-hat of N points fitted at once equals, bit for bit, that of the points fitted in
    any parts (as the processes of a run fit their shares) and one at a time."""
    torch.manual_seed(4)
    scales = torch.linspace(0.2, 3.0, 10, dtype=torch.float64)
    log_weights = -scales * torch.log(torch.rand(num_samples, 10, dtype=torch.float64))
    whole = pareto_khat(log_weights)
    assert torch.isfinite(whole).all()
    for cuts in ([3], [1], [3, 7], [1, 9], list(range(1, 10))):
        edges = [0, *cuts, 10]
        parts = torch.cat([pareto_khat(log_weights[:, start:stop])
                           for start, stop in zip(edges, edges[1:])])
        assert torch.equal(parts, whole), cuts


def test_pareto_khat_of_light_tailed_weights_is_small_and_few_weights_give_nan():
    log_weights = 0.1 * torch.randn(2000, 3, dtype=torch.float64)
    assert (pareto_khat(log_weights) < 0.3).all()
    assert torch.isnan(pareto_khat(log_weights[:10])).all()


def test_stderr_formula_matches_spread_over_repeated_estimates():
    torch.manual_seed(2)
    num_samples, repeats = 1000, 400
    log_weights = 0.8 * torch.randn(num_samples, repeats, dtype=torch.float64)
    estimates = log_mean_exp(log_weights)           # one estimate per column = per repeat
    predicted = log_mean_exp_stderr(log_weights).mean()
    assert estimates.std().item() == pytest.approx(predicted.item(), rel=0.1)


def test_stderr_of_a_single_sample_is_undefined():
    assert torch.isnan(log_mean_exp_stderr(torch.zeros(1, 3))).all()
    mean, stderr = mean_stderr(torch.tensor([[1.0], [3.0]]))
    assert mean.item() == 2.0 and stderr.item() == pytest.approx(1.0)


def test_summary_and_flagged_fraction():
    torch.manual_seed(3)
    light = 0.1 * torch.randn(500, 3, dtype=torch.float64)
    heavy = -1.2 * torch.log(torch.rand(500, 1, dtype=torch.float64))
    summary = summarize_weights(torch.cat([light, heavy], 1))
    assert set(summary) == {"estimate", "stderr", "stderr_spread", "ess", "ess_fraction", "khat",
                            "max_weight"}
    assert fraction_flagged(summary["khat"]) == pytest.approx(0.25)
    assert (summary["ess_fraction"] <= 1).all()


def test_bad_log_weights_are_rejected():
    with pytest.raises(ValueError, match=r"shape \(num_samples, num_data\)"):
        log_mean_exp(torch.zeros(5))
    with pytest.raises(ValueError, match="log weights contain NaN"):
        effective_sample_size(torch.tensor([[0.0], [math.nan]]))
    with pytest.raises(ValueError, match=r"\+inf"):
        log_mean_exp(torch.tensor([[0.0], [math.inf]]))


def test_whole_columns_are_summarized_with_the_bits_of_the_general_merge():
    # A chunk that brings all K weights of its points takes a shortcut with nothing to merge;
    # it must give what the general update gives when it merges them into the empty state.
    torch.manual_seed(4)
    log_weights = torch.randn(400, 6, dtype=torch.float64) * 3
    log_weights[:, 1] = -math.inf                  # a point whose weights are all zero
    log_weights[:7, 2] = -math.inf
    log_weights[:, 3] = log_weights[0, 3]           # all weights equal
    results = []
    for general in (False, True):
        summary = WeightSummary(6, 400, log_moments=True)
        # Expecting more weights than arrive sends the chunk through the general merge.
        summary.num_samples += general
        summary.update(slice(0, 4), log_weights[:, :4])
        summary.update(torch.tensor([5, 4]), log_weights[:, [5, 4]])
        summary.num_samples -= general
        results.append(summary.result())
    shortcut, merged = results
    assert set(shortcut) == set(merged)
    for key in merged:
        assert torch.equal(shortcut[key].nan_to_num(7.0), merged[key].nan_to_num(7.0)), key
    assert shortcut["estimate"][1] == -math.inf
    assert shortcut["ess"][3].item() == pytest.approx(400, rel=1e-12)


def test_nan_and_infinite_weights_are_reported_from_either_update():
    for first_chunk in (400, 150):
        for bad, message in ((math.nan, "contain NaN"), (math.inf, r"\+inf")):
            log_weights = torch.zeros(400, 3)
            log_weights[200, 1] = bad
            summary = WeightSummary(3, 400)
            summary.update(slice(None), log_weights[:first_chunk])
            if first_chunk < 400:
                summary.update(slice(None), log_weights[first_chunk:])
            with pytest.raises(ValueError, match=message):
                summary.result()

"""Score a trained run: log p(x) of its chosen data points by each estimator, with standard
errors, diagnostics and a verdict per point (:mod:`evaluation.verdicts`: can it be trusted, why
not, and the recommended value), printed as a table and written as a report (a JSON file of the
per-estimator summaries, ``verdicts`` (their summary, with advice) and ``recommended`` (the
table row of the recommended values) and, beside it, a CSV with one row per data point and
estimator, plus one per point with its recommended value).

:func:`score_run` is what ``evaluate.py`` does once its flags are checked and the run is opened
(:func:`evaluation.command_line.open_run`), and how ``reproduce.py`` gives a run its final
score.
"""

import os
import time

import pyro
import torch

from evaluation.ais import bdmc as bdmc_sandwich, check_bdmc_fits
from evaluation.estimators import ESTIMATORS, estimate, options_for
from evaluation.gaps import gap_decomposition, summarize_gaps
from evaluation.reporting.tables import (csv_text, per_point_rows, recommended_rows,
                                         recommended_summary, render)
from evaluation.verdicts import (format_summary, point_verdicts, summarize_verdicts,
                                 trusted_share)
from inference.local import fit_local_guide
from models.utilities.files import atomic_write_json, atomic_write_text


def csv_path(json_path):
    """The per-point CSV written beside the JSON summary."""
    return os.path.splitext(json_path)[0] + ".csv"


def score_run(opened, names, num_samples, *, sample_counts=None, run=None, split="test",
              options=None, seed=0, local_fit=None, guide_name="run", bdmc=None,
              bdmc_tolerance=None, out=None, progress=True, group=None, log=print):
    """Estimate log p(x) of the points ``opened.x`` of the opened run ``opened`` (a
    :class:`evaluation.command_line.OpenRun`) by each estimator of ``names``, each from the
    random numbers of ``seed``, in this process or shared among a ``group`` of them (the first
    one prints and writes).

    :param num_samples: K, samples per data point, of every estimator whose K is not a setting
        of its own, and of the gap decomposition.
    :param sample_counts: {estimator: K} of the estimators whose K is a setting of their own
        (:class:`evaluation.estimators.OwnSamples`: the chains of ais, also those of BDMC);
        their defaults where absent.
    :param run: the run as the user named it (for the report); ``split``: the points' split.
    :param options: the estimators' options ({option: value}; each estimator takes its own).
    :param local_fit: the settings of :func:`inference.local.fit_local_guide` (``num_steps``,
        ``learning_rate``, ``num_particles``) to score a guide fitted on the points themselves
        instead of the run's, with the gap decomposition of Cremer et al. (2018); one process.
    :param guide_name: what the report names the guide of the estimators.
    :param bdmc: also run BDMC on this many points simulated from the model (first process).
    :param bdmc_tolerance: with ``bdmc``: run BDMC before the estimates, doubling the AIS steps
        (from ``options``' ``ais_steps``) until the gap is at most this many nats, at most
        ``MAX_STEP_DOUBLINGS`` times; the ``ais`` estimate then uses those steps. Every process
        calibrates alike, from the same seed, so all of them anneal with the same steps.
    :param out: write the report here (JSON) and the per-point CSV beside it.
    :returns: the report.
    """
    main = group is None or group.is_main
    options = options or {}
    counts = {name: own.default for name, own in ESTIMATORS.own_samples.items()}
    counts.update(sample_counts or {})
    model, x = opened.model, opened.x
    if bdmc:
        check_bdmc_fits(model, bdmc, x[:1])   # before any work, not after the estimates
    log(f"{opened.path}: {opened.config.data.dataset} {split} split, {x.shape[0]} data "
        f"points, z_dim={opened.config.model.z_dim}, on {opened.device}")
    guide, local_steps = opened.guide, None
    if local_fit is not None:
        local_steps = local_fit["num_steps"]
        pyro.set_rng_seed(seed)
        guide, history = fit_local_guide(model, opened.guide, x, **local_fit, progress=progress)
        log(f"fitted the local guide on {x.shape[0]} points: {local_steps} Adam steps, mean "
            f"ELBO {history[0] if history else float('nan'):.3f} -> "
            f"{history[-1] if history else float('nan'):.3f}")
    calibration = None
    if bdmc and bdmc_tolerance is not None:
        calibration = calibrate_ais_steps(model, opened.guide, bdmc, counts["ais"], options,
                                          seed, bdmc_tolerance, like=x[:1], log=log if main
                                          else (lambda line: None))
        options = {**options, "ais_steps": calibration["ais_steps"]}
    results = {}
    for name in names:
        pyro.set_rng_seed(seed)  # each estimator's numbers do not depend on the others
        results[name] = estimate(name, model, guide, x, counts.get(name, num_samples),
                                 progress=progress and main, group=group,
                                 **options_for(name, options))
    report = {"run": run, "checkpoint": opened.path, "split": split, "seed": seed,
              "num_data": int(x.shape[0]), "device": str(opened.device),
              "config": opened.config.to_dict(), "guide": guide_name,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if calibration is not None:
        report["bdmc"] = calibration["report"]
        report["bdmc"]["calibration"] = calibration["tried"]
        report["bdmc"]["tolerance"] = bdmc_tolerance
        report["bdmc"]["tolerance_met"] = calibration["met"]
    elif bdmc and main:   # simulated points: the first process alone
        # the run's guide: a local guide is fitted to the real points, not the simulated ones
        report["bdmc"] = bdmc_report(model, opened.guide, bdmc, counts["ais"], options, seed,
                                     like=x[:1])
    verdicts, summaries, rows = judge(results, opened.labels,
                                      ais_gap=report.get("bdmc", {}).get("gap"),
                                      max_ais_gap=bdmc_tolerance)
    report["estimators"] = summaries
    report["verdicts"] = summarize_verdicts(verdicts)
    report["recommended"] = recommended_summary(verdicts, report["verdicts"])
    log(render(summaries + [report["recommended"]]))
    for s in summaries:
        if s.get("num_flagged"):
            log(f"{s['estimator']}: {s['num_flagged']} of {s['num_data']} data points have "
                "Pareto k-hat > 0.7; their estimates cannot be trusted")
    log(format_summary(report["verdicts"]))
    if local_steps is not None:
        pyro.set_rng_seed(seed)
        gaps = summarize_gaps(gap_decomposition(model, opened.guide, guide, x, num_samples))
        report["gaps"] = dict(gaps, local_steps=local_steps, num_samples=num_samples)
        log(format_gaps(gaps, num_samples))
    if "bdmc" in report:
        sandwich = report["bdmc"]
        log(f"BDMC on {bdmc} points simulated from the model, AIS from the "
            f"{sandwich['ais_start']} ({sandwich['ais_steps']} steps, {sandwich['ais_leapfrog']} "
            f"leapfrog, {sandwich['ais_chains']} chains): forward AIS {sandwich['lower']:.3f} <= "
            f"log p(x) <= reverse AIS {sandwich['upper']:.3f} (gap {sandwich['gap']:.3f} nats)")
    if out and main:
        atomic_write_json(out, report)
        table = csv_path(out)
        atomic_write_text(table, csv_text(rows))
        log(f"wrote {out} and {table}")
    return report


def judge(results, labels, ais_gap=None, max_ais_gap=None):
    """The verdicts on the estimates ``results`` ({estimator: Estimate}, the same points), the
    estimators' summaries with the share of points each can be trusted on (``trusted_frac``,
    ``num_trusted``), and the per-point CSV rows with their verdicts followed by one row per
    point with its recommended value; ``ais_gap``: the measured BDMC gap of the AIS setting,
    failing the AIS estimates above ``max_ais_gap`` (default: the verdicts' own)."""
    verdicts = point_verdicts(results, ais_gap=ais_gap, **(
        {} if max_ais_gap is None else {"max_ais_gap": max_ais_gap}))
    summaries, rows = [], []
    for name, result in results.items():
        codes = verdicts.codes[name]
        summaries.append({**result.summary(), **trusted_share(codes)})
        rows += per_point_rows(result, labels, codes)
    rows += recommended_rows(verdicts, labels)
    return verdicts, summaries, rows


def bdmc_report(model, guide, num_data, chains, options, seed, like=None):
    """The mean BDMC sandwich of ``num_data`` points simulated from ``model``, annealed with the
    ais estimator's ``options`` from its start (``ais_start``: the prior, or ``guide``'s
    q(z | x) of the simulated points), with its settings."""
    pyro.set_rng_seed(seed)
    ais = {**ESTIMATORS.options("ais"), **options_for("ais", options)}
    with torch.no_grad():
        sandwich = bdmc_sandwich(model, num_data, chains, guide=guide, start=ais["ais_start"],
                                 like=like, num_steps=ais["ais_steps"],
                                 num_leapfrog=ais["ais_leapfrog"], step_size=ais["ais_step_size"],
                                 target_accept=ais["ais_target_accept"],
                                 schedule=ais["ais_schedule"])
    report = {key: sandwich[key].mean().item() for key in ("lower", "upper", "gap")}
    report.update(num_data=num_data, ais_chains=chains, ais_steps=ais["ais_steps"],
                  ais_leapfrog=ais["ais_leapfrog"], ais_schedule=ais["ais_schedule"],
                  ais_start=ais["ais_start"])
    return report


#: --bdmc-tolerance doubles the AIS steps at most this many times (16 times the steps given)
MAX_STEP_DOUBLINGS = 4


def calibrate_ais_steps(model, guide, num_data, chains, options, seed, tolerance, like=None,
                        log=print):
    """The fewest AIS steps, of ``ais_steps`` (from ``options``) doubled up to
    ``MAX_STEP_DOUBLINGS`` times, whose BDMC gap on ``num_data`` simulated points is at most
    ``tolerance`` nats (Grosse et al. 2015): each try is :func:`bdmc_report` from the same seed
    with the steps of that try.

    :returns: dict with ``ais_steps`` (those of the last try), ``report`` (its BDMC report),
        ``tried`` ([{"ais_steps", "gap"}] of every try) and ``met`` (whether the last gap is
        within the tolerance).
    """
    steps = {**ESTIMATORS.options("ais"), **options_for("ais", options)}["ais_steps"]
    tried = []
    for doubling in range(MAX_STEP_DOUBLINGS + 1):
        report = bdmc_report(model, guide, num_data, chains, {**options, "ais_steps": steps},
                             seed, like=like)
        tried.append({"ais_steps": steps, "gap": report["gap"]})
        log(f"BDMC with {steps} AIS steps: gap {report['gap']:.3f} nats "
            f"({'within' if report['gap'] <= tolerance else 'above'} the tolerance of "
            f"{tolerance:g})")
        if report["gap"] <= tolerance or doubling == MAX_STEP_DOUBLINGS:
            break
        steps *= 2
    met = report["gap"] <= tolerance
    if not met:
        log(f"the BDMC gap stays above {tolerance:g} nats at {steps} steps, the most "
            f"--bdmc-tolerance tries; the ais estimate uses them, and its verdicts say ais-gap")
    return {"ais_steps": steps, "report": report, "tried": tried, "met": met}


def format_gaps(gaps, num_samples):
    def cell(name):
        return f"{gaps[name]:9.3f} +- {gaps[name + '_stderr']:.3f}"

    return "\n".join([
        f"gap decomposition (Cremer et al. 2018; log p(x) by importance sampling with the local "
        f"guide, K={num_samples}):",
        f"  log p(x)                      {cell('log_px')}",
        f"  ELBO, encoder                 {cell('elbo_amortized')}",
        f"  ELBO, local guide             {cell('elbo_local')}",
        f"  inference gap                 {cell('inference_gap')}",
        f"  = approximation gap           {cell('approximation_gap')}",
        f"  + amortization gap            {cell('amortization_gap')}",
    ])

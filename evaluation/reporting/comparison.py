"""Compare estimates of log p(x) across runs, estimators and numbers of samples K, with the
verdicts of :mod:`evaluation.verdicts` at each K and paired differences that say whether they
hold.

:func:`evaluate_run` scores one opened run on the grid of K; :func:`compare_results` turns the
estimates of all runs into the tables (each estimator's share of trusted points, a
``recommended`` row per run and K, the per-point verdicts, the paired differences against the
first run with :func:`paired_verdict`); :func:`write_outputs` writes them. ``compare.py`` is
these three once its flags are checked and the runs are open.

The verdicts of a run at a K judge the estimates of the estimators on the grid at that K
together with those scored once (``ais`` with its own chains, ``exact``, ``quadrature``), which
join every K; an estimator scored once is shown with its verdict at the largest K, where the
others are the sharpest. The paired differences are taken, as the estimates' own, at each
estimator's largest K, with the verdicts of that largest K.

(Over 300 lines: scoring the runs, the verdicts at each K, the paired differences with whether
they hold, and writing the five tables are the one comparison that compare.py runs.)
"""

import math
import os
from dataclasses import dataclass, field

import pyro
import torch

from evaluation.estimators import ESTIMATORS, estimate, options_for
from evaluation.reporting import palette, plots
from evaluation.reporting.html import figure_html, note, page
from evaluation.reporting.tables import (CSV_FIELDS, ESTIMATE_COLUMNS, PAIRED_COLUMNS,
                                         RUN_COLUMN, Column, csv_text, per_point_rows,
                                         recommended_rows, recommended_summary, render)
from evaluation.verdicts import point_verdicts, summarize_verdicts, trusted_share
from models.base.config import ConfigError
from models.utilities.files import atomic_write_text

#: comparison.csv, one row per run, estimator and K (``num_trusted``, ``trusted_frac``: the
#: points whose estimate passes every check, added after the columns of older files)
SUMMARY_FIELDS = ("run", "estimator", "num_samples", "num_data", "log_px_mean", "log_px_stderr",
                  "log_px_data_stderr", "ess_mean", "khat_frac_above_0_7", "seconds",
                  "num_trusted", "trusted_frac")
#: recommended.csv, one row per run and K: the mean of the recommended values over all points
#: (``trusted_frac``: the share whose recommended value passes its checks)
RECOMMENDED_FIELDS = ("run", "estimator", "num_samples", "num_data", "log_px_mean",
                      "log_px_stderr", "log_px_data_stderr", "trusted_frac", "recommended_by")
#: points.csv, one row per run, estimator and point at the largest K, and one per run and point
#: with its recommended value (the per-point CSV of evaluate.py, with the run)
POINT_FIELDS = ("run", "num_samples") + CSV_FIELDS
#: paired.csv: the columns of older files, then the verdicts' (see :func:`paired_verdict`)
PAIRED_FIELDS = ("run", "baseline", "estimator", "num_samples", "num_data", "mean_difference",
                 "paired_stderr", "unpaired_stderr", "num_trusted", "trusted_difference",
                 "trusted_stderr", "recommended_difference", "recommended_stderr", "holds",
                 "holds_reason")
OUTPUTS = ("comparison.md", "comparison.csv", "recommended.csv", "points.csv",
           "convergence.png", "paired.csv", "paired.png", "report.html")

#: a paired difference holds only where at least this many points are trusted in both runs:
#: below it the 2-standard-error rule (a normal approximation) misleads, and the trusted points
#: say little about the rest
MIN_TRUSTED_POINTS = 10
#: standard errors beyond zero that make a mean difference significant, and within which the
#: difference over the trusted points and that of the recommended values agree in size
HOLD_SIGMAS = 2.0


def run_label(path):
    return os.path.basename(os.path.normpath(path)) or path


def run_labels(paths):
    """The name of each run in the tables: its folder's name, numbered where two are alike."""
    labels = [run_label(path) for path in paths]
    if len(set(labels)) != len(labels):
        labels = [f"{i}:{label}" for i, label in enumerate(labels)]
    return labels


def sampled_once(name):
    """Estimators scored once rather than on the K grid: those whose K is a setting of their own
    (ais: K = --ais-chains) and those that do not sample."""
    return ESTIMATORS.own_samples_of(name) is not None or not ESTIMATORS.uses_samples(name)


def evaluate_run(opened, label, names, grid, counts, options, *, seed=0, progress=True,
                 group=None, log=print):
    """{(estimator, K): Estimate} for one opened run (shared among a ``group`` of processes):
    each estimator of ``names`` at each K of ``grid``, or once, with its own K from ``counts``
    ({estimator: K}) where it has one, and 0 where it does not sample."""
    results = {}
    for name in names:
        sizes = [counts.get(name, 0)] if sampled_once(name) else grid
        for num_samples in sizes:
            pyro.set_rng_seed(seed)
            result = estimate(name, opened.model, opened.guide, opened.x, num_samples,
                              progress=progress and (group is None or group.is_main),
                              group=group, **options_for(name, options))
            results[name, num_samples] = result
            log(f"  {label}  {name:<11} K={num_samples:<6} log p(x) "
                f"{result.summary()['log_px_mean']:10.3f}  ({result.seconds:.1f} s)")
    return results


def check_same_points(data):
    """Refuse runs scored on different data points ({label: x}; the first is the baseline)."""
    labels = list(data)
    baseline = labels[0]
    for label in labels[1:]:
        if data[label].shape != data[baseline].shape or \
                not torch.equal(data[label].cpu(), data[baseline].cpu()):
            raise ConfigError(f"runs {baseline} and {label} were scored on different data "
                              "points (another data set or binarization); a paired comparison "
                              "needs the same ones")


def judge_run(results):
    """{K: ({estimator: Estimate}, Verdicts)} of one run's estimates ``results`` ({(estimator,
    K): Estimate}): at each K of the grid, the estimators on the grid at that K with those scored
    once; one entry, under None, where none takes the grid. The largest K comes last."""
    names = list(dict.fromkeys(name for name, _ in results))
    once = {name: next(result for (n, _), result in results.items() if n == name)
            for name in names if sampled_once(name)}
    grid = sorted({k for name, k in results if not sampled_once(name)})
    judged = {}
    for k in grid or [None]:
        at_k = {name: once[name] if name in once else results[name, k] for name in names
                if name in once or (name, k) in results}
        judged[k] = (at_k, point_verdicts(at_k))
    return judged


def judged_at(name, k, judged):
    """The K of the verdicts that judge estimator ``name`` at ``k``: its own for an estimator on
    the grid, the largest for one scored once."""
    return k if not sampled_once(name) and k in judged else list(judged)[-1]


def mean_and_stderr(values):
    """The mean of ``values`` and its standard error sd / sqrt(n) (NaN for fewer than two)."""
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    n = values.numel()
    mean = values.mean().item() if n else math.nan
    stderr = values.std().item() / math.sqrt(n) if n > 1 else math.nan
    return mean, stderr


def paired(results, baseline, name, num_samples):
    """Mean per-point difference of two runs and its paired and unpaired standard errors."""
    a, b = results[name, num_samples].estimate, baseline[name, num_samples].estimate
    difference = a - b
    n = difference.numel()
    mean, paired_stderr = mean_and_stderr(difference)
    return {"mean_difference": mean, "paired_stderr": paired_stderr,
            "unpaired_stderr": math.sqrt(a.var().item() / n + b.var().item() / n)
            if n > 1 else math.nan,
            "num_data": n, "difference": difference}


def _sign(value):
    return (value > 0) - (value < 0)


def paired_verdict(difference, recommended_difference, trusted, *,
                   min_trusted=MIN_TRUSTED_POINTS, sigmas=HOLD_SIGMAS):
    """Does a paired difference of two runs survive the verdicts?

    :param difference: per point, one estimator's estimate of one run minus the baseline's.
    :param recommended_difference: per point, the recommended value of the run minus the
        baseline's (:class:`evaluation.verdicts.Verdicts`).
    :param trusted: per point, True where that estimator's estimate passed every check in both
        runs.
    :returns: ``num_trusted``; ``trusted_difference`` and ``trusted_stderr``, the mean
        difference over the points trusted in both runs and its paired standard error;
        ``recommended_difference`` and ``recommended_stderr``, the same of the recommended
        values over all points; ``holds``, 'yes' or 'no', and ``holds_reason`` ('' for yes).

    It holds when at least ``min_trusted`` points are trusted in both runs, and the difference
    over them and that of the recommended values (1) have the sign of the estimator's own mean
    difference, (2) each lie more than ``sigmas`` paired standard errors from zero, and (3)
    differ from each other by less than ``sigmas`` combined standard errors
    sqrt(se_trusted^2 + se_recommended^2). The first reason that fails is given: ``no trusted
    points``, ``too few trusted points (n)``, ``recommended values not finite``, ``sign flips
    on trusted points`` / ``with recommended values``, ``not significant on trusted points`` /
    ``with recommended values``, ``sizes disagree``. The two means share points, so their
    combined standard error overstates the noise of their gap: (3) catches a gross
    disagreement (the trusted points are not representative, or the recommended values move
    the untrusted ones), never noise.
    """
    difference = torch.as_tensor(difference, dtype=torch.float64).cpu().reshape(-1)
    recommended_difference = torch.as_tensor(recommended_difference,
                                             dtype=torch.float64).cpu().reshape(-1)
    trusted = torch.as_tensor(trusted, dtype=torch.bool).cpu().reshape(-1)
    num_trusted = int(trusted.sum())
    trusted_difference, trusted_stderr = mean_and_stderr(difference[trusted])
    recommended, recommended_stderr = mean_and_stderr(recommended_difference)
    verdict = {"num_trusted": num_trusted, "trusted_difference": trusted_difference,
               "trusted_stderr": trusted_stderr, "recommended_difference": recommended,
               "recommended_stderr": recommended_stderr}

    def holds(reason=""):
        return dict(verdict, holds="no" if reason else "yes", holds_reason=reason)

    if num_trusted == 0:
        return holds("no trusted points")
    if num_trusted < min_trusted:
        return holds(f"too few trusted points ({num_trusted})")
    if not math.isfinite(recommended):
        return holds("recommended values not finite")
    own = difference.mean().item()
    reference = _sign(own) if math.isfinite(own) and own != 0 else _sign(recommended)
    flips = [where for where, value in (("on trusted points", trusted_difference),
                                        ("with recommended values", recommended))
             if _sign(value) != reference]
    if flips:
        return holds("sign flips " + " and ".join(flips))
    weak = [where for where, value, stderr in (
        ("on trusted points", trusted_difference, trusted_stderr),
        ("with recommended values", recommended, recommended_stderr))
        if not abs(value) > sigmas * stderr]   # a NaN standard error is not significant
    if weak:
        return holds("not significant " + " and ".join(weak))
    if not abs(trusted_difference - recommended) <= \
            sigmas * math.hypot(trusted_stderr, recommended_stderr):
        return holds("sizes disagree")
    return holds()


@dataclass
class Comparison:
    """What :func:`compare_results` makes of the estimates of several runs.

    ``rows``: one summary per run, estimator and K, with ``num_trusted`` and ``trusted_frac``;
    ``recommended``: one row per run and K, the mean of the recommended values; ``points``: the
    per-point rows at the largest K; ``paired_rows``: the rows of paired.csv, and
    ``paired_results`` the same with each ``difference`` tensor (for the figure); ``results``:
    {run: {(estimator, K): Estimate}}; ``verdicts``: {run: {K: Verdicts}}.
    """

    rows: list
    recommended: list
    points: list
    paired_rows: list = field(default_factory=list)
    paired_results: list = field(default_factory=list)
    results: dict = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)

    def table_rows(self):
        """The rows of the estimates table: each run's estimators, then its recommended rows."""
        return [row for label in self.results
                for row in [r for r in self.rows if r["run"] == label]
                + [r for r in self.recommended if r["run"] == label]]


def compare_results(all_results, point_labels=None):
    """The tables of a comparison of the runs ``all_results`` ({run: {(estimator, K):
    Estimate}}, the same data points; the first run is the baseline), with
    ``point_labels`` ({run: the points' labels}) for the per-point rows.

    Each run is judged at each K (:func:`judge_run`); each estimator of each later run is
    paired with the baseline's at its largest K (:func:`paired`, :func:`paired_verdict`)."""
    rows, recommended, points, verdicts = [], [], [], {}
    for label, results in all_results.items():
        judged = judge_run(results)
        verdicts[label] = {k: v for k, (_, v) in judged.items()}
        for (name, k), result in results.items():
            codes = judged[judged_at(name, k, judged)][1].codes[name]
            rows.append(dict(result.summary(), run=label, **trusted_share(codes)))
        for k, (_, judgement) in judged.items():
            row = dict(recommended_summary(judgement, summarize_verdicts(judgement)), run=label)
            row["num_samples"] = k or None
            recommended.append(row)
        largest, (at_k, judgement) = list(judged.items())[-1]
        labels = (point_labels or {}).get(label)
        if labels is None:
            labels = [-1] * len(judgement)
        for name, result in at_k.items():
            points += [dict(point, run=label, num_samples=result.num_samples or None)
                       for point in per_point_rows(result, labels, judgement.codes[name])]
        points += [dict(point, run=label, num_samples=largest or None)
                   for point in recommended_rows(judgement, labels)]

    comparison = Comparison(rows, recommended, points, results=all_results, verdicts=verdicts)
    labels = list(all_results)
    baseline = labels[0]
    base_judged = verdicts[baseline]
    for label in labels[1:]:
        judged = verdicts[label]
        names = list(dict.fromkeys(name for name, _ in all_results[label]))
        for name in names:
            # Each estimator at its largest K, where its estimates are the sharpest.
            k = max(key[1] for key in all_results[label] if key[0] == name)
            result = paired(all_results[label], all_results[baseline], name, k)
            at = judged_at(name, k, judged)
            ours, theirs = judged[at], base_judged[judged_at(name, k, base_judged)]
            trusted = torch.tensor([not a and not b for a, b in
                                    zip(ours.codes[name], theirs.codes[name])], dtype=torch.bool)
            result.update(paired_verdict(result["difference"],
                                         ours.recommended - theirs.recommended, trusted))
            result.update(run=label, baseline=baseline, estimator=name, num_samples=k)
            comparison.paired_results.append(result)
            comparison.paired_rows.append({key: result[key] for key in PAIRED_FIELDS})
    return comparison


def recommended_by_text(row):
    """'importance 60, mixture 40': where a recommended row's values come from."""
    return ", ".join(f"{name} {count}" for name, count in
                     sorted((row.get("recommended_by") or {}).items()))


PAIRED_NOTE = ("Paired: the mean per-point difference (run minus baseline, same points) of "
               "each estimator at its largest K, with its paired and unpaired standard errors. "
               "trusted N / on trusted: over the points whose estimate passes every check in "
               "both runs; recommended: the same of the recommended values over all points. "
               f"holds: both have the sign of the estimator's difference, each lies more than "
               f"{HOLD_SIGMAS:g} paired s.e. from zero, they differ by less than {HOLD_SIGMAS:g} "
               f"combined s.e., and at least {MIN_TRUSTED_POINTS} points are trusted in both "
               "runs.")
ESTIMATES_NOTE = ("trusted: the share of points whose estimate passes every check of "
                  "evaluation/verdicts.py, judged with the other estimators at the same K (those "
                  "scored once at the largest K). recommended: per point the tightest estimate "
                  "that passes (else the best guess), averaged over all points; its trusted share "
                  "is that of the recommended values that pass.")


def markdown(table_rows, paired_rows):
    text = render(table_rows, (RUN_COLUMN,) + ESTIMATE_COLUMNS, "markdown") + \
        f"\n{ESTIMATES_NOTE}\n"
    if paired_rows:
        text += ("\nPaired per-data-point differences (run minus baseline, same data points):"
                 "\n\n" + render(paired_rows, PAIRED_COLUMNS, "markdown") + f"\n{PAIRED_NOTE}\n")
    return text


def convergence_panels(all_results):
    """One panel per run: the K grid as curves, estimators scored once as references."""
    panels = []
    for label, results in all_results.items():
        curves, references = {}, []
        for (name, k), result in results.items():
            summary = result.summary()
            if sampled_once(name):
                own = ESTIMATORS.own_samples_of(name)
                references.append({"label": f"{name} ({k} {own.unit})" if own else name,
                                   "value": summary["log_px_mean"],
                                   "stderr": summary["log_px_stderr"],
                                   "colour": palette.estimator_colour(name)})
            else:
                curves.setdefault(name, []).append(
                    (k, summary["log_px_mean"], summary["log_px_stderr"]))
        panels.append({"title": label, "curves": curves, "references": references})
    return panels


def write_report(out, paths, comparison):
    """report.html: the tables and plots of this comparison in one self-contained file."""
    runs = [{"run": label, "path": path} for label, path in zip(comparison.results, paths)]
    run_columns = (RUN_COLUMN, Column("path", "path", str, text=True))
    sections = [("Runs", render(runs, run_columns, "html")),
                ("Estimates", render(comparison.table_rows(), (RUN_COLUMN,) + ESTIMATE_COLUMNS,
                                     "html")
                 + note(ESTIMATES_NOTE)
                 + figure_html(os.path.join(out, "convergence.png"),
                               "Mean log p-hat against K, +-2 standard errors."))]
    if comparison.paired_rows:
        sections.append(("Paired differences against the first run",
                         render(comparison.paired_rows, PAIRED_COLUMNS, "html")
                         + note(PAIRED_NOTE)
                         + figure_html(os.path.join(out, "paired.png"),
                                       "Per-image differences against the first run.")))
    atomic_write_text(os.path.join(out, "report.html"),
                      page("Comparison of log p(x) estimates", sections))


def write_outputs(out, paths, comparison):
    """Write the files of ``comparison`` (:func:`compare_results`) of the runs at ``paths``
    into ``out``; returns the Markdown table and the names of the files written."""
    os.makedirs(out, exist_ok=True)
    table = markdown(comparison.table_rows(), comparison.paired_rows)
    atomic_write_text(os.path.join(out, "comparison.md"), table)
    atomic_write_text(os.path.join(out, "comparison.csv"), csv_text(
        [{key: row.get(key) for key in SUMMARY_FIELDS} for row in comparison.rows],
        SUMMARY_FIELDS))
    atomic_write_text(os.path.join(out, "recommended.csv"), csv_text(
        [{**{key: row.get(key) for key in RECOMMENDED_FIELDS},
          "recommended_by": recommended_by_text(row)} for row in comparison.recommended],
        RECOMMENDED_FIELDS))
    atomic_write_text(os.path.join(out, "points.csv"), csv_text(comparison.points, POINT_FIELDS))
    plots.convergence(convergence_panels(comparison.results),
                      os.path.join(out, "convergence.png"),
                      suptitle="Mean log p-hat(x) against K (bands: +-2 Monte Carlo s.e.)")
    files = ["comparison.md", "comparison.csv", "recommended.csv", "points.csv",
             "convergence.png"]
    if comparison.paired_rows:
        atomic_write_text(os.path.join(out, "paired.csv"),
                          csv_text(comparison.paired_rows, PAIRED_FIELDS))
        plots.paired_differences(comparison.paired_results, os.path.join(out, "paired.png"))
        files += ["paired.csv", "paired.png"]
    write_report(out, paths, comparison)
    files.append("report.html")
    return table, files

"""Per-data-point verdicts on estimates of log p(x): can each point's estimate be trusted, why
not, which value to use instead, and what to run next.

The story: a data point x, a latent z with prior p(z), a decoder p(x | z) and a guide q(z | x).
A sampling estimator draws K latents z_k from a proposal r(z | x) and averages the importance
weights w_k = p(x, z_k) / r(z_k | x), so that log p-hat(x) = log (1/K) sum_k w_k; the log
weights log w_k are what :mod:`evaluation.diagnostics` summarizes (estimate, standard error,
Pareto k-hat). Each p-hat is unbiased for p(x), so each log p-hat is a *stochastic lower bound*
of log p(x): low in expectation (Jensen), seldom far above. Of two such estimates the higher is
the tighter, and one that lies far above another says that the lower one has missed mass.

Nothing here samples, reads or writes: the functions take per-point results (tensors of shape
(N,)) of estimators that were run already and return tensors, lists and text.

The checks, each a short code in a point's reasons:

``khat``
    The Pareto k-hat of the K weights exceeds 0.7 (``KHAT_THRESHOLD``): the right tail of the
    weights is so heavy that neither the estimate nor its standard error can be trusted, and
    more samples help only slowly (PSIS: Vehtari, Simpson, Gelman, Yao & Gabry 2024, "Pareto
    smoothed importance sampling", JMLR).
``missed-mode``
    An estimate with the guide as its proposal (``importance``) lies well below one whose
    proposal does not rely on q(z | x) covering the posterior: a *defensive* mixture
    r = a q(z | x) + (1 - a) p(z) (Hesterberg 1995; Owen & Zhou 2000, "Safe and effective
    importance sampling", JASA), whose weights are bounded by p(x | z) / (1 - a), or a mixture
    that adds the guide with inflated scales. Flagged when the defensive estimate is above by
    more than ``mode_gap`` nats (it found at least 1 - exp(-mode_gap) of p(x) that the guide's
    draws never reached: 18% for the default 0.2), or by more than ``sigmas`` combined standard
    errors. The gap in nats needs no standard error because a missed mode is a bias that the
    guide's weights cannot show: their k-hat and standard error describe only the region q
    proposes (on the z_dim = 2 MNIST model the check was measured on, test image 66 has most
    of its posterior in a mode the guide never proposes, an importance estimate 2-3 nats below
    quadrature, and k-hat below 0). The prior estimator,
    log (1/K) sum_k p(x | z_k) with z_k ~ p(z), flags ``missed-mode`` only beyond ``sigmas``
    standard errors: its own estimate is too noisy for the gap rule.
``disagree:<name>``
    A stochastic lower bound lies below the estimate of ``<name>`` by more than ``sigmas``
    combined standard errors sqrt(se_a^2 + se_b^2) (and more than ``tolerance`` nats); against
    a reference (``exact``, ``quadrature`` or the ``reference`` argument) a gap in either
    direction counts.
``ais-gap``
    The measured gap of the annealing setting (the BDMC gap of Grosse, Ghahramani & Adams 2015:
    reverse minus forward AIS on data simulated from the model, which bounds the error of
    forward AIS with these settings) exceeds ``max_ais_gap`` nats.
``not checked``
    No diagnostic applies: a guide-based estimate with no defensive estimate or reference to
    hold it against (the guide may miss a mode unseen, whatever its k-hat), or a sampling
    estimate without k-hat and without any other estimate.
``not finite``
    The estimate is NaN or infinite.

The kinds of estimator, as each declares its own (``ESTIMATORS.kinds``; ``register(...,
kind=)`` for one of yours; a name such as ``mixture0.8`` takes the kind of its leading letters,
and ``kinds=`` overrides):

- ``guide``: importance sampling from q(z | x): checked by k-hat and by a defensive estimate;
- ``defensive``: a mixture proposal containing q and a wider component (``mixture``);
- ``prior``: the prior as proposal, hopeless in many dimensions;
- ``annealed``: AIS (Neal 2001), a stochastic lower bound like the others, checked by k-hat
  over its chains and by ``ais_gap``;
- ``sampling``: any other sampling estimator (a lower bound in expectation; k-hat and
  disagreement checks only);
- ``bound``: the ELBO, a lower bound with a trustworthy standard error but a gap (the KL of q
  from the posterior) that no check sees, hence ``not checked``: in expectation below every
  importance estimate with the same guide (Burda et al. 2016), it is recommended only where no
  other estimate is finite;
- ``reference``: ``exact`` and ``quadrature``, taken as correct (quadrature within its
  refinement error) and preferred as the recommended value.

The verdict of a point is that of its *primary* estimate (``importance`` when given); its
recommended value is the highest estimate among those that pass every check (a reference
first), with the name of its estimator. Where none passes, it is a best guess, with
``recommended_trusted`` False: the highest estimate of the first tier present in
``FALLBACK_ORDER``: a reference; else the highest of the importance, defensive, annealed and
other sampling estimates; else the prior estimator's; else the ELBO. The prior estimator comes
after the others because its heavy-tailed weights overshoot now and then (taking the highest
of all estimates on the z_dim = 2 MNIST model erred by +0.24 nats on average at the untrusted
points, against +0.09 without the prior); the ELBO comes last, because a failing importance
estimate is still a lower bound in expectation, and a tighter one. The defensive mixture alone
erred least there (-0.03), but in fifty dimensions, where its prior draws find nothing, it is
importance sampling with half the draws, lower in expectation, so it is not preferred to a
higher guide estimate. Picking the highest of several passing estimates favours upward noise
slightly, within their standard errors.

Measured on a z_dim = 2 MNIST VAE (2 epochs, the first 200 test images, importance with
K = 2000, quadrature as truth; the commands are in docs/estimators.md): the checks flagged all
27 images whose importance estimate was 0.5 nats or more below quadrature (``missed-mode`` from
``mixture``, a = 0.5, the same K, about as much time again as importance, caught 26 of them,
among them both whose k-hat was below 0.7), and ``missed-mode`` flagged 1 of the 110 images
within 0.1 nats. In the experiments behind the rule, a mixture 0.4 q + 0.2 q(scales x2) +
0.2 q(scales x3) + 0.2 p with K / 2 draws flagged every such image with at most 1% false flags
over independent draws; it needs the guide's scales and is not an estimator yet.

(Over 300 lines: the checks, the recommendation and the summary with its advice share the kinds
and thresholds above, and most of the length is this account of them.)
"""

import math
import re
from dataclasses import dataclass, field

import torch

from evaluation.diagnostics import KHAT_THRESHOLD
from evaluation.estimators import ESTIMATORS, KINDS

#: the kinds of estimator, as the estimators declare them (``ESTIMATORS.kinds``)
KIND_NAMES = KINDS
#: kinds whose estimates are stochastic lower bounds of log p(x) (in expectation)
LOWER_BOUNDS = ("guide", "defensive", "prior", "annealed", "sampling")
#: kinds whose proposal does not rely on q(z | x) covering the posterior
MODE_CHECKERS = ("defensive", "prior", "reference")

#: default gap in nats by which a defensive estimate above a guide-based one flags a missed mode
MODE_GAP = 0.2
#: default number of combined standard errors beyond which two estimates disagree
SIGMAS = 3.0
#: default smallest difference in nats that counts as a disagreement
TOLERANCE = 0.05
#: default largest measured AIS (BDMC) gap in nats that leaves AIS trusted
MAX_AIS_GAP = 0.5

#: what evaluate.py runs unless told otherwise: importance sampling, the ELBO beside it, and the
#: defensive mixture at the same K, without which no importance estimate is checked for a
#: missed mode (about twice the cost of importance alone)
DEFAULT_ESTIMATORS = ("elbo", "importance", "mixture")
NOT_CHECKED = "not checked"
NOT_FINITE = "not finite"
REFERENCE = "reference"


@dataclass
class Verdicts:
    """Per-point verdicts; tensors of shape (N,) and lists of N strings.

    ``trusted``: the primary estimate passed every check. ``reasons``: its failed checks, codes
    joined by ';' ('' where trusted). ``recommended`` / ``recommended_stderr`` /
    ``recommended_estimator``: the tightest passing estimate (or, where none passes, the best
    guess of ``FALLBACK_ORDER``) and its estimator ('' where no estimate is finite).
    ``recommended_trusted``: whether that estimate passed. ``settings``: the thresholds used.
    ``codes``: {estimator: [codes joined by ';' per point]} for every estimator.
    ``recommended_spread``: the recommended estimate's standard deviation over repeated draws
    (its ``stderr_spread``, else its ``stderr``), what the error of a mean over points adds up.
    """

    primary: str
    trusted: torch.Tensor
    reasons: list
    recommended: torch.Tensor
    recommended_stderr: torch.Tensor
    recommended_estimator: list
    recommended_trusted: torch.Tensor
    codes: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    recommended_spread: torch.Tensor = None

    def __post_init__(self):
        if self.recommended_spread is None:
            self.recommended_spread = self.recommended_stderr

    def __len__(self):
        return self.trusted.numel()


def kind_of(name, kinds=None):
    """The kind of estimator ``name``: ``kinds[name]`` if given, else the one it declared in
    :data:`evaluation.estimators.ESTIMATORS` under the name or its leading letters
    (``mixture0.8`` -> ``mixture``), else ``sampling``."""
    if kinds and name in kinds:
        kind = kinds[name]
    elif name in ESTIMATORS.kinds:
        kind = ESTIMATORS.kinds[name]
    else:
        kind = ESTIMATORS.kind_of(re.match(r"[A-Za-z]*", name).group(0).lower())
    if kind not in KIND_NAMES:
        raise ValueError(f"unknown kind {kind!r} of estimator {name!r}; valid: "
                         f"{', '.join(KIND_NAMES)}")
    return kind


def _field(result, name, num_data=None):
    value = result.get(name) if isinstance(result, dict) else getattr(result, name, None)
    if value is None:
        if num_data is None:
            raise ValueError(f"a result without {name!r}")
        return torch.full((num_data,), math.nan, dtype=torch.float64)
    value = torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1)
    if num_data is not None and value.numel() == 1:
        value = value.expand(num_data).clone()
    return value


def per_point(results):
    """{name: {"estimate", "stderr", "stderr_spread", "khat"}} of float64 tensors of one length
    N, and ``khat_checked`` (see :meth:`evaluation.estimators.Estimate.khat_checked`), from a
    mapping {name: Estimate or mapping with those fields} or from a sequence of Estimates (named
    by their ``estimator``). A missing ``stderr`` or ``khat`` is NaN, a missing
    ``stderr_spread`` the ``stderr``, a missing ``khat_checked`` None."""
    if not isinstance(results, dict):
        named = {}
        for result in results:
            name = getattr(result, "estimator", None)
            if name is None or name in named:
                raise ValueError("a sequence of results needs distinct .estimator names; pass "
                                 "a mapping {name: result} instead")
            named[name] = result
        results = named
    if not results:
        raise ValueError("no results to judge")
    table, num_data = {}, None
    for name, result in results.items():
        estimate = _field(result, "estimate")
        if num_data is None:
            num_data = estimate.numel()
        if estimate.numel() != num_data:
            raise ValueError(f"the results differ in length: {name!r} has {estimate.numel()} "
                             f"points, others {num_data}")
        stderr = _field(result, "stderr", num_data)
        spread = _field(result, "stderr_spread", num_data)
        table[name] = {"estimate": estimate, "stderr": stderr,
                       "stderr_spread": torch.where(torch.isnan(spread), stderr, spread),
                       "khat": _field(result, "khat", num_data),
                       "khat_checked": _khat_checked(result)}
    return table


def _khat_checked(result):
    """False where k-hat judges the estimator but could not be computed (too few weights),
    True where it was, None where it does not apply or the result does not say."""
    checked = result.get("khat_checked") if isinstance(result, dict) else \
        getattr(result, "khat_checked", None)
    return checked() if callable(checked) else checked


def trusted_share(codes):
    """The points an estimator passes on, from its codes (one per point, '' where it passed):
    ``{"num_trusted": count, "trusted_frac": their share}`` (NaN for no points)."""
    count = sum(not code for code in codes)
    return {"num_trusted": count, "trusted_frac": count / len(codes) if codes else math.nan}


def combined_stderr(*stderrs):
    """sqrt(sum se_i^2), the standard error of a difference of independent estimates."""
    return torch.stack([torch.as_tensor(s, dtype=torch.float64) ** 2 for s in stderrs]).sum(0) \
        .sqrt()


def disagrees(low, low_stderr, high, high_stderr, *, sigmas=SIGMAS, tolerance=TOLERANCE):
    """Per point: ``high`` lies above ``low`` by more than ``sigmas`` combined standard errors
    and by more than ``tolerance`` nats. A NaN anywhere gives False."""
    low = torch.as_tensor(low, dtype=torch.float64)
    high = torch.as_tensor(high, dtype=torch.float64)
    difference = high - low
    return (difference > sigmas * combined_stderr(low_stderr, high_stderr)) & \
        (difference > tolerance)


def missed_mode(guide_estimate, guide_stderr, defensive_estimate, defensive_stderr, *,
                mode_gap=MODE_GAP, sigmas=SIGMAS, tolerance=TOLERANCE):
    """Per point: the guide-based estimate (proposal q(z | x)) misses posterior mass that a
    defensive estimate (proposal a q + (1 - a) p(z), or one with inflated scales) finds: the
    defensive estimate lies above by more than ``mode_gap`` nats, or by more than ``sigmas``
    combined standard errors (and ``tolerance`` nats). ``mode_gap=None`` keeps only the second
    rule (as for the prior estimator). A NaN estimate gives False; a NaN standard error leaves
    the gap rule alone."""
    guide_estimate = torch.as_tensor(guide_estimate, dtype=torch.float64)
    defensive_estimate = torch.as_tensor(defensive_estimate, dtype=torch.float64)
    flagged = disagrees(guide_estimate, guide_stderr, defensive_estimate, defensive_stderr,
                        sigmas=sigmas, tolerance=tolerance)
    if mode_gap is not None:
        flagged = flagged | (defensive_estimate - guide_estimate > mode_gap)
    return flagged


def _add(codes, mask, code):
    for index in mask.nonzero().flatten().tolist():
        if code not in codes[index]:
            codes[index].append(code)


def point_verdicts(results, *, reference=None, reference_stderr=None, ais_gap=None,
                   primary=None, kinds=None, khat_threshold=KHAT_THRESHOLD, sigmas=SIGMAS,
                   tolerance=TOLERANCE, mode_gap=MODE_GAP, max_ais_gap=MAX_AIS_GAP,
                   require_mode_check=True):
    """The verdict on each data point's estimate of log p(x).

    :param results: {estimator name: per-point result} (an :class:`~evaluation.estimators.
        Estimate`, or a mapping with ``estimate``, ``stderr`` and optionally ``khat``, each of
        shape (N,)), or a sequence of Estimates.
    :param reference: a per-point reference value of log p(x) (quadrature, exact) to check the
        estimates against, with ``reference_stderr`` (default 0); it is a check only, never
        recommended (put ``quadrature`` among the results for that).
    :param ais_gap: the measured gap of the AIS setting in nats: a number, or one per point.
    :param primary: the estimator whose verdict is the point's (default ``importance`` if
        given, else the first lower bound, else the first result).
    :param kinds: {estimator name: kind} overriding what the estimators declare.
    :param khat_threshold: k-hat above this fails (0.7, Vehtari et al. 2024).
    :param sigmas, tolerance: a disagreement is a gap beyond ``sigmas`` combined standard
        errors and beyond ``tolerance`` nats.
    :param mode_gap: a defensive estimate this many nats above a guide-based one flags a missed
        mode whatever the standard errors (None: only the ``sigmas`` rule).
    :param max_ais_gap: an AIS gap above this fails the ``annealed`` estimates.
    :param require_mode_check: a guide-based estimate with nothing to hold it against (no
        defensive or prior estimate, no reference) is ``not checked``, hence not trusted.
    :returns: :class:`Verdicts`.
    """
    table = per_point(results)
    names = list(table)
    num_data = table[names[0]]["estimate"].numel()
    kind = {name: kind_of(name, kinds) for name in names}
    others = dict(table)
    other_kind = dict(kind)
    if reference is not None:
        reference = _field({"estimate": reference}, "estimate")
        if reference.numel() != num_data:
            raise ValueError(f"the reference has {reference.numel()} points, the results "
                             f"{num_data}")
        others[REFERENCE] = {"estimate": reference,
                             "stderr": _field({"stderr": 0.0 if reference_stderr is None
                                               else reference_stderr}, "stderr", num_data),
                             "khat": _field({}, "khat", num_data)}
        other_kind[REFERENCE] = "reference"
    gap = None
    if ais_gap is not None:
        gap = _field({"gap": ais_gap}, "gap", num_data)
    if primary is None:
        primary = "importance" if "importance" in table else next(
            (name for name in names if kind[name] in LOWER_BOUNDS), names[0])
    if primary not in table:
        raise ValueError(f"the primary estimator {primary!r} is not among the results "
                         f"({', '.join(names)})")

    codes = {name: [[] for _ in range(num_data)] for name in names}
    for name in names:
        row, own = table[name], kind[name]
        finite = torch.isfinite(row["estimate"])
        _add(codes[name], ~finite, NOT_FINITE)
        if own == "bound":
            # Nothing measures the gap of a bound (the KL of q from the posterior).
            _add(codes[name], finite, NOT_CHECKED)
            continue
        if own == "reference":
            continue
        khat_known = torch.isfinite(row["khat"])
        _add(codes[name], khat_known & (row["khat"] > khat_threshold), "khat")
        if row["khat_checked"] is False:
            # Too few weights for k-hat (AIS with its 16 chains, K < 20): nothing says whether
            # the standard error can be believed, so agreement with the others proves little.
            _add(codes[name], finite, NOT_CHECKED)
        checked = khat_known.clone()
        mode_checked = torch.zeros(num_data, dtype=torch.bool)
        if own == "annealed" and gap is not None:
            _add(codes[name], torch.isfinite(gap) & (gap > max_ais_gap), "ais-gap")
            checked |= torch.isfinite(gap)
        for other, against in others.items():
            other_type = other_kind[other]
            if other == name or other_type == "bound":
                continue
            present = finite & torch.isfinite(against["estimate"])
            checked |= present
            if other_type in MODE_CHECKERS:
                mode_checked |= present
            if other_type == "reference":
                low = disagrees(row["estimate"], row["stderr"], against["estimate"],
                                against["stderr"], sigmas=sigmas, tolerance=tolerance)
                high = disagrees(against["estimate"], against["stderr"], row["estimate"],
                                 row["stderr"], sigmas=sigmas, tolerance=tolerance)
                _add(codes[name], low | high, f"disagree:{other}")
            elif own == "guide" and other_type in ("defensive", "prior"):
                flagged = missed_mode(row["estimate"], row["stderr"], against["estimate"],
                                      against["stderr"], sigmas=sigmas, tolerance=tolerance,
                                      mode_gap=mode_gap if other_type == "defensive" else None)
                _add(codes[name], flagged, "missed-mode")
            else:
                flagged = disagrees(row["estimate"], row["stderr"], against["estimate"],
                                    against["stderr"], sigmas=sigmas, tolerance=tolerance)
                _add(codes[name], flagged, f"disagree:{other}")
        if own == "guide" and require_mode_check:
            _add(codes[name], finite & ~mode_checked, NOT_CHECKED)
        _add(codes[name], finite & ~checked, NOT_CHECKED)

    joined = {name: [";".join(point) for point in codes[name]] for name in names}
    passed = {name: torch.tensor([not point for point in codes[name]], dtype=torch.bool)
              for name in names}
    recommended, recommended_stderr, recommended_spread, recommended_name, recommended_ok = \
        _recommend(table, kind, passed, num_data)
    settings = {"khat_threshold": khat_threshold, "sigmas": sigmas, "tolerance": tolerance,
                "mode_gap": mode_gap, "max_ais_gap": max_ais_gap,
                "require_mode_check": require_mode_check, "kinds": kind,
                "reference": reference is not None, "ais_gap": gap is not None}
    return Verdicts(primary, passed[primary], joined[primary], recommended, recommended_stderr,
                    recommended_name, recommended_ok, joined, settings, recommended_spread)


def _rank(kind):
    """Order of preference among passing estimates: references, then stochastic lower bounds
    (the highest first). The ELBO never passes."""
    return {"reference": 0, "bound": 2}.get(kind, 1)


#: tiers of preference among estimates where none passes, the highest estimate of the first
#: tier present (see the module's docstring)
FALLBACK_ORDER = (("reference",), ("defensive", "annealed", "guide", "sampling"), ("prior",),
                  ("bound",))


def _fallback_rank(kind):
    return next(tier for tier, kinds in enumerate(FALLBACK_ORDER) if kind in kinds)


def _recommend(table, kind, passed, num_data):
    """Per point: the preferred passing estimate (or, where none passes, the preferred finite
    one), its standard error and spread, its estimator's name ('' where none is finite) and
    whether it passed."""
    names = list(table)
    values = torch.stack([table[name]["estimate"] for name in names])          # (E, N)
    stderrs = torch.stack([table[name]["stderr"] for name in names])
    spreads = torch.stack([table[name]["stderr_spread"] for name in names])
    finite = torch.isfinite(values)
    passing = torch.stack([passed[name] for name in names]) & finite
    any_passing = passing.any(0)
    pool = torch.where(any_passing, passing, finite)
    rank = torch.tensor([[_rank(kind[name]), _fallback_rank(kind[name])] for name in names],
                        dtype=torch.float64)                                     # (E, 2)
    rank = torch.where(any_passing, rank[:, :1], rank[:, 1:])                    # (E, N)
    best_rank = torch.where(pool, rank, math.inf).min(0).values
    candidates = pool & (rank == best_rank)
    choice = torch.where(candidates, values, -math.inf).argmax(0)
    found = candidates.any(0)
    columns = torch.arange(num_data)
    value = torch.where(found, values[choice, columns], math.nan)
    stderr = torch.where(found, stderrs[choice, columns], math.nan)
    spread = torch.where(found, spreads[choice, columns], math.nan)
    chosen = [names[index] if ok else "" for index, ok in zip(choice.tolist(), found.tolist())]
    return value, stderr, spread, chosen, any_passing


#: what to run next, per reason code (``{n}``: how many points; settings fill the rest)
ADVICE = {
    "khat": "{n} with heavy-tailed weights (Pareto k-hat > {khat_threshold}): more samples "
            "help only slowly; run ais, or a mixture proposal that covers the posterior",
    "missed-mode": "{n} where the guide misses posterior mass that a defensive estimate finds "
                   "(> {mode_gap} nats or > {sigmas} s.e. above): use the recommended value "
                   "where it passes; elsewhere run mixture with 4x the samples, or ais from "
                   "the prior",
    "disagree": "{n} where estimators disagree beyond {sigmas} standard errors: run them with "
                "4x the samples; keep the higher (each is a lower bound in expectation)",
    "ais-gap": "{n} where the measured AIS gap exceeds {max_ais_gap} nats: run ais with more "
               "steps (ais_steps x4)",
    NOT_CHECKED: "{n} not checked (nothing to hold the estimate against): run mixture "
                 "(a q + (1 - a) p) with the same K beside importance",
    NOT_FINITE: "{n} with a non-finite estimate: check the data and the model at these points",
}


def _code_family(code):
    return code.split(":", 1)[0]


def summarize_verdicts(verdicts):
    """Counts and advice over the points.

    :returns: dict with ``num_points``; ``num_trusted`` (the primary estimate passed) and
        ``num_recommended_trusted`` (the recommended value passed); ``recommended_mean``, the
        mean of the recommended values over all points, and ``recommended_stderr``, its Monte
        Carlo standard error sqrt(sum_n se_n^2) / N of the recommended values' spreads;
        ``recommended_by`` {estimator: points}; ``reasons`` {code: untrusted points with it};
        ``advice``, sentences on what to run next for the untrusted points; ``primary``.
    """
    num_points = len(verdicts)
    values = verdicts.recommended
    finite = torch.isfinite(values)
    mean = values[finite].mean().item() if finite.all() and num_points else math.nan
    se = verdicts.recommended_spread
    known = se[torch.isfinite(se)]
    # NaN where no recommended value has an error (K = 1), never a reassuring 0
    stderr = (known ** 2).sum().sqrt().item() / num_points if known.numel() else math.nan
    recommended_by = {}
    for name in verdicts.recommended_estimator:
        recommended_by[name or "none"] = recommended_by.get(name or "none", 0) + 1
    reasons, families = {}, {}
    for point_reasons in verdicts.reasons:
        for code in filter(None, point_reasons.split(";")):
            reasons[code] = reasons.get(code, 0) + 1
        for family in {_code_family(code) for code in filter(None, point_reasons.split(";"))}:
            families[family] = families.get(family, 0) + 1
    settings = dict(verdicts.settings)
    num_trusted = int(verdicts.trusted.sum())
    num_recommended_trusted = int(verdicts.recommended_trusted.sum())
    advice = []
    if num_trusted < num_points:
        rescued = int((~verdicts.trusted & verdicts.recommended_trusted).sum())
        if rescued:
            advice.append(f"{rescued} of the {num_points - num_trusted} untrusted points have "
                          f"a recommended value from another estimator that passes its checks")
        for family in ADVICE:
            if families.get(family):
                advice.append(ADVICE[family].format(n=families[family], **settings))
    if not finite.all():
        advice.append(f"{int((~finite).sum())} points have no finite estimate at all; the mean "
                      "is undefined")
    return {"primary": verdicts.primary, "num_points": num_points, "num_trusted": num_trusted,
            "num_recommended_trusted": num_recommended_trusted, "recommended_mean": mean,
            "recommended_stderr": stderr, "recommended_by": recommended_by, "reasons": reasons,
            "advice": advice}


def format_summary(summary):
    """The summary of :func:`summarize_verdicts` as a few lines of text."""
    lines = [f"{summary['num_trusted']} of {summary['num_points']} points trusted "
             f"({summary['primary']}); {summary['num_recommended_trusted']} with a recommended "
             f"value that passes its checks",
             f"mean log p(x) with the recommended values: {summary['recommended_mean']:.3f} "
             f"+- {summary['recommended_stderr']:.3f} (Monte Carlo s.e.)",
             "recommended from: " + ", ".join(f"{name} {count}" for name, count
                                              in sorted(summary["recommended_by"].items()))]
    if summary["reasons"]:
        lines.append("untrusted because: " + ", ".join(
            f"{code} {count}" for code, count in sorted(summary["reasons"].items())))
    lines += [f"- {sentence}" for sentence in summary["advice"]]
    return "\n".join(lines)

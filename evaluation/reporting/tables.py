"""Tables of estimates: one set of columns, rendered as terminal text, Markdown or HTML; per-point
rows and CSV text.

Every table of estimates in the project (``evaluate.py``'s printout, ``compare.py``'s
``comparison.md``, the HTML reports, the tutorial) is :func:`render` of :data:`ESTIMATE_COLUMNS`
on ``Estimate.summary()`` dicts, so one number is shown the same way everywhere.
"""

import csv
import html
import io
import math
from dataclasses import dataclass
from typing import Callable

#: the per-point CSV; ``stderr`` covers (about 95% of points within two of it), ``stderr_spread``
#: is the estimate's standard deviation over repeated draws (what errors of means add up),
#: ``stderr_delta`` the delta method's; ``trusted`` (1 or 0) and ``reasons`` are the verdict on
#: that estimator's estimate at that point (:mod:`evaluation.verdicts`), ``source`` the
#: estimator a ``recommended`` row's value comes from. Files written before these columns read
#: the same.
CSV_FIELDS = ("estimator", "index", "label", "estimate", "stderr", "ess", "khat", "max_weight",
              "stderr_delta", "stderr_spread", "trusted", "reasons", "source")


def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def fixed(digits):
    """A formatter with ``digits`` decimals ('' for a missing value)."""
    return lambda value: "" if _missing(value) else f"{value:.{digits}f}"


def percent(value):
    return "" if _missing(value) else f"{100 * value:.0f}%"


def samples(value):
    """K, or '-' for estimators that take none."""
    return "-" if not value else str(value)


def format_number(value):
    """A value shown with as many digits as it deserves ('' for NaN)."""
    if _missing(value):
        return ""
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}" if abs(value) < 1 else f"{value:.3f}".rstrip("0").rstrip(".")
        return f"{value:.3e}"
    return str(value)


def khat_note(row):
    """'not checked' where an estimator that k-hat judges had too few weights for it (the
    summary's ``khat_checked`` is False): never an empty cell or 0% that reads as trusted."""
    return "not checked" if row.get("khat_checked") is False else None


@dataclass(frozen=True)
class Column:
    key: str
    heading: str
    format: Callable = format_number
    #: left-aligned (text) rather than right-aligned (numbers)
    text: bool = False
    #: note(row): a text shown instead of the value, or None for the value
    note: Callable = None

    def cell(self, row):
        """The text of this column in ``row``."""
        shown = self.note(row) if self.note is not None else None
        return shown if shown is not None else self.format(row.get(self.key))


ESTIMATE_COLUMNS = (
    Column("estimator", "estimator", str, text=True),
    Column("num_samples", "K", samples),
    Column("num_data", "N", str),
    Column("log_px_mean", "log p(x)", fixed(3)),
    Column("log_px_stderr", "MC s.e.", fixed(4)),
    Column("log_px_data_stderr", "data s.e.", fixed(3)),
    Column("ess_mean", "ESS", fixed(1)),
    Column("khat_frac_above_0_7", "k-hat > 0.7", percent, note=khat_note),
    Column("trusted_frac", "trusted", percent),
    Column("seconds", "seconds", fixed(2)),
)
RUN_COLUMN = Column("run", "run", str, text=True)


def holds_note(row):
    """'yes', or 'no: why' (:func:`evaluation.reporting.comparison.paired_verdict`); '' where the
    row has no verdict."""
    if not row.get("holds"):
        return ""
    return row["holds"] + (f": {row['holds_reason']}" if row.get("holds_reason") else "")


#: a paired difference of two runs (``compare.py``), then whether it survives the verdicts: the
#: difference over the points trusted in both runs, that of the recommended values over all
#: points, and whether it holds (blank in rows without them)
PAIRED_COLUMNS = (
    Column("run", "run", str, text=True),
    Column("baseline", "baseline", str, text=True),
    Column("estimator", "estimator", str, text=True),
    Column("num_samples", "K", samples),
    Column("mean_difference", "mean difference", fixed(3)),
    Column("paired_stderr", "paired s.e.", fixed(3)),
    Column("unpaired_stderr", "unpaired s.e.", fixed(3)),
    Column("num_trusted", "trusted N", format_number),
    Column("trusted_difference", "on trusted", fixed(3)),
    Column("trusted_stderr", "s.e.", fixed(3)),
    Column("recommended_difference", "recommended", fixed(3)),
    Column("recommended_stderr", "s.e.", fixed(3)),
    Column("holds", "holds", str, text=True, note=holds_note),
)
SETTING_COLUMNS = (Column("key", "setting", str, text=True),
                   Column("value", "value", format_number, text=True))


def columns(*keys, base=ESTIMATE_COLUMNS):
    """The columns of ``base`` called ``keys``, in that order."""
    by_key = {column.key: column for column in base}
    return tuple(by_key[key] for key in keys)


def render(rows, table_columns=ESTIMATE_COLUMNS, style="text"):
    """``rows`` (dicts) as a table in ``style``: ``text`` (aligned, for the terminal),
    ``markdown`` or ``html``."""
    cells = [[column.cell(row) for column in table_columns] for row in rows]
    headings = [column.heading for column in table_columns]
    if style == "markdown":
        rule = ["---" if column.text else "---:" for column in table_columns]
        lines = [headings, rule] + cells
        return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"
    if style == "html":
        def row_html(values, tag):
            return "<tr>" + "".join(
                f'<{tag} class="{"text" if column.text else ""}">{html.escape(value)}</{tag}>'
                for column, value in zip(table_columns, values)) + "</tr>"

        return ("<table>" + row_html(headings, "th")
                + "".join(row_html(values, "td") for values in cells) + "</table>")
    if style == "text":
        widths = [max(len(value) for value in column_values)
                  for column_values in zip(headings, *cells)]

        def line(values):
            return "  ".join(value.ljust(width) if column.text else value.rjust(width)
                             for column, value, width in zip(table_columns, values, widths))

        return "\n".join([line(headings), "-" * len(line(headings))]
                         + [line(values) for values in cells]).rstrip()
    raise ValueError(f"unknown table style {style!r}; valid: text, markdown, html")


def settings_rows(mapping, prefix=""):
    """{key: value} flattened into setting rows (nested dicts become dotted keys)."""
    rows = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += settings_rows(value, prefix=name + ".")
        else:
            rows.append({"key": name, "value": value if not isinstance(value, dict) else ""})
    return rows


def per_point_rows(result, labels, codes=None):
    """One CSV row per data point of an :class:`evaluation.estimators.Estimate`; with ``codes``
    (the verdict's failed checks per point, '' where it passed), whether it is trusted and why
    not."""
    rows = []
    for index in range(result.estimate.numel()):
        rows.append({
            "estimator": result.estimator, "index": index, "label": int(labels[index]),
            "estimate": result.estimate[index].item(), "stderr": result.stderr[index].item(),
            "ess": result.ess[index].item(), "khat": result.khat[index].item(),
            "max_weight": result.max_weight[index].item(),
            "stderr_delta": result.stderr_delta[index].item(),
            "stderr_spread": result.stderr_spread[index].item()})
        if codes is not None:
            rows[-1].update(trusted=int(not codes[index]), reasons=codes[index])
    return rows


def recommended_rows(verdicts, labels):
    """One CSV row per data point with its recommended value (:class:`evaluation.verdicts.
    Verdicts`): the estimate and standard error of the estimator named in ``source``, whether
    it passed its checks, and, where not, its failed checks."""
    rows = []
    for index, source in enumerate(verdicts.recommended_estimator):
        trusted = bool(verdicts.recommended_trusted[index])
        reasons = "" if trusted or not source else verdicts.codes[source][index]
        rows.append({"estimator": "recommended", "index": index, "label": int(labels[index]),
                     "estimate": verdicts.recommended[index].item(),
                     "stderr": verdicts.recommended_stderr[index].item(),
                     "stderr_spread": verdicts.recommended_spread[index].item(),
                     "trusted": int(trusted), "reasons": reasons, "source": source})
    return rows


def recommended_summary(verdicts, summary):
    """The table row of the recommended values: their mean over all points with its Monte Carlo
    error (``summary``: :func:`evaluation.verdicts.summarize_verdicts`), the spread over the
    data, and the share that passed their checks."""
    values = verdicts.recommended
    num_data = values.numel()
    return {"estimator": "recommended", "num_samples": None, "num_data": num_data,
            "log_px_mean": summary["recommended_mean"],
            "log_px_stderr": summary["recommended_stderr"],
            "log_px_data_stderr": values.std().item() / math.sqrt(num_data) if num_data > 1
            else math.nan,
            "trusted_frac": summary["num_recommended_trusted"] / num_data if num_data
            else math.nan,
            "recommended_by": summary["recommended_by"]}


def csv_text(rows, fields=CSV_FIELDS):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

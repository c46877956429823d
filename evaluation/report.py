"""Tables of estimates: per-point rows, CSV text and the printed summary table."""

import csv
import io
import math

CSV_FIELDS = ("estimator", "index", "label", "estimate", "stderr", "ess", "khat", "max_weight")


def per_point_rows(result, labels):
    rows = []
    for index in range(result.estimate.numel()):
        rows.append({
            "estimator": result.estimator, "index": index, "label": int(labels[index]),
            "estimate": result.estimate[index].item(), "stderr": result.stderr[index].item(),
            "ess": result.ess[index].item(), "khat": result.khat[index].item(),
            "max_weight": result.max_weight[index].item()})
    return rows


def csv_text(rows, fields=CSV_FIELDS):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def format_table(summaries):
    header = (f"{'estimator':<11}{'K':>7}{'log p(x)':>12}{'MC s.e.':>10}{'data s.e.':>11}"
              f"{'ESS':>10}{'k>0.7':>8}{'seconds':>10}")
    lines = [header, "-" * len(header)]
    for s in summaries:
        flagged = "" if math.isnan(s["khat_frac_above_0_7"]) else \
            f"{100 * s['khat_frac_above_0_7']:.0f}%"
        ess = "" if math.isnan(s["ess_mean"]) else f"{s['ess_mean']:.1f}"
        lines.append(f"{s['estimator']:<11}{s['num_samples']:>7}{s['log_px_mean']:>12.3f}"
                     f"{s['log_px_stderr']:>10.4f}{s['log_px_data_stderr']:>11.3f}{ess:>10}"
                     f"{flagged:>8}{s['seconds']:>10.2f}")
    return "\n".join(lines)


def format_number(value):
    """A float shown with as many digits as it deserves ('' for NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}" if abs(value) < 1 else f"{value:.3f}".rstrip("0").rstrip(".")
        return f"{value:.3e}"
    return str(value)

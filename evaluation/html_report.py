"""Self-contained HTML reports: one file, images embedded as data URIs, no external references,
so that it opens anywhere without a network and can be mailed or archived as it is."""

import base64
import html
import math
import os

from evaluation.report import format_number

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em;
     border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
.note { font-size: 0.9em; color: #555; }
"""


def image_tag(path, alt):
    """An <img> whose source is the PNG file itself, base64-encoded."""
    with open(path, "rb") as handle:
        data = base64.b64encode(handle.read()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def figure_html(path, caption):
    if not os.path.isfile(path):
        return ""
    return (f"<figure>{image_tag(path, caption)}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table_html(rows, columns):
    """rows: list of dicts; columns: list of (key, heading). Numbers are formatted compactly."""
    head = "".join(f'<th class="{"text" if i == 0 else ""}">{html.escape(heading)}</th>'
                   for i, (_, heading) in enumerate(columns))
    body = []
    for row in rows:
        cells = []
        for i, (key, _) in enumerate(columns):
            value = row.get(key, "")
            text = format_number(value) if isinstance(value, float) else str(value)
            cells.append(f'<td class="{"text" if i == 0 else ""}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


ESTIMATE_COLUMNS = [("estimator", "estimator"), ("num_samples", "K"), ("num_data", "points"),
                    ("log_px_mean", "log p(x), mean"), ("log_px_stderr", "Monte Carlo s.e."),
                    ("log_px_data_stderr", "s.e. over data"), ("ess_mean", "ESS (mean)"),
                    ("khat_share", "share k-hat > 0.7"), ("seconds", "seconds")]


def estimate_rows(summaries):
    rows = []
    for summary in summaries:
        row = dict(summary)
        share = summary.get("khat_frac_above_0_7", math.nan)
        row["khat_share"] = "" if share is None or math.isnan(share) else f"{100 * share:.0f}%"
        rows.append(row)
    return rows


def page(title, sections):
    """A whole HTML document from (heading, inner html) sections."""
    parts = [f"<h2>{html.escape(heading)}</h2>{inner}" if heading else inner
             for heading, inner in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def config_html(config):
    rows = [{"key": key, "value": value} for key, value in sorted(config.items())]
    return table_html(rows, [("key", "setting"), ("value", "value")])

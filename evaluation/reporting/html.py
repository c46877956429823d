"""Self-contained HTML reports: one file, images embedded as data URIs, no external references,
so that it opens anywhere without a network and can be mailed or archived as it is."""

import base64
import html
import os

from evaluation.reporting.tables import SETTING_COLUMNS, render, settings_rows

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
    """A captioned figure of the PNG at ``path`` ('' when the file does not exist)."""
    if not os.path.isfile(path):
        return ""
    return (f"<figure>{image_tag(path, caption)}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def note(text):
    return f'<p class="note">{html.escape(text)}</p>'


def settings_html(mapping):
    """A two-column table of settings (nested keys dotted), such as a run's configuration."""
    return render(settings_rows(mapping), SETTING_COLUMNS, "html")


def page(title, sections):
    """A whole HTML document from (heading, inner html) sections."""
    parts = [f"<h2>{html.escape(heading)}</h2>{inner}" if heading else inner
             for heading, inner in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body>\n</html>\n")

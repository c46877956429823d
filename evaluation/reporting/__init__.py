"""Reporting: tables, plots, figures of the story, HTML pages and the command-line spine of the
scripts. It renders what the estimators computed; no estimator imports it."""

"""Evaluation: per-data-point estimates of log p(x), their diagnostics, comparisons and reports."""

"""Evaluation: estimators of log p(x) per data point, their diagnostics, AIS, quadrature, the gap
decomposition and the numbers behind the figures of the story. ``evaluation.reporting`` renders
them (tables, plots, HTML, the command-line spine); nothing here imports it."""

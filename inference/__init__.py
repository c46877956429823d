"""Inference: guides (amortized encoders), objectives, per-data-point log weights, data, the SVI
training driver, checkpoints and the opening of trained runs."""

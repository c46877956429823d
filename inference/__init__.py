"""Inference: guides (amortized encoders), data, SVI training and checkpoints."""

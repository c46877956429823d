"""The shared base every layer may use: typed configuration, registries of swappable parts,
atomic file output, device choice and command-line plumbing. It imports nothing from the
layers above it (the rest of ``models``, ``inference``, ``evaluation``)."""

from models.base.config import (ConfigError, DataConfig, ModelConfig, PartSpec, RunConfig,
                                TrainingConfig)
from models.base.registry import Registry

__all__ = ["ConfigError", "DataConfig", "ModelConfig", "PartSpec", "Registry", "RunConfig",
           "TrainingConfig"]

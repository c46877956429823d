"""The shared base every layer may use: typed configuration and the registries of swappable
parts. It imports nothing from the layers above it (``models.utilities``, the rest of
``models``, ``inference``, ``evaluation``)."""

from models.base.config import (ConfigError, DataConfig, ModelConfig, PartSpec, RunConfig,
                                TrainingConfig)
from models.base.registry import Registry

__all__ = ["ConfigError", "DataConfig", "ModelConfig", "PartSpec", "Registry", "RunConfig",
           "TrainingConfig"]

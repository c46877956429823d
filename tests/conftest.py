import pyro
import pytest
import torch

from inference.training import forget_stale_params


@pytest.fixture(autouse=True)
def reset_global_state():
    """Every test starts from an empty param store, a fixed seed and validation switched on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    forget_stale_params()
    yield
    pyro.clear_param_store()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def small_config(**overrides):
    """The configuration of a small VAE for tests (plain dict, as a run would store it)."""
    config = {
        "dataset": "synthetic", "binarize": "none", "prior": "standard",
        "likelihood": "bernoulli", "sigma": 0.1, "guide": "diagonal", "architecture": "mlp",
        "z_dim": 2, "x_dim": 50, "hidden_dims": [32], "activation": "relu",
        "num_epochs": 2, "batch_size": 100, "learning_rate": 1e-2, "jit": False,
        "device": "cpu", "seed": 0, "synthetic_num_train": 1000,
    }
    config.update(overrides)
    return config

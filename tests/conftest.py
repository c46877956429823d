import importlib.util
import math
import os
import sys

import pyro
import pytest
import torch

from inference.build import resolve
from inference.training import forget_stale_params
from models import build_model
from models.base.config import RunConfig

# Under pytest-xdist (``-n 2``, the README's command) each worker has one core: one thread each,
# here and in the processes the tests start, rather than two threads per worker fighting over
# two cores (measured on two cores: 190 s with two threads per worker, 71 s with one).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
_DATA_KEYS = {"dataset", "data_dir", "download", "binarize", "num_validation",
              "synthetic_z_dim", "synthetic_x_dim", "synthetic_num_train", "synthetic_seed",
              "synthetic_prior"}
_TRAINING_KEYS = {"num_epochs", "batch_size", "learning_rate", "kl_warmup_epochs", "jit",
                  "learning_rate_schedule", "adam_eps", "cuda_graph"}


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


def small_config(*, prior="standard", prior_options=None, likelihood="bernoulli",
                 likelihood_options=None, guide="diagonal", guide_options=None,
                 architecture="mlp", hidden_dims=(32,), activation="relu", z_dim=2, x_dim=50,
                 image_shape=None, objective="elbo", objective_options=None, seed=0, **other):
    """The resolved RunConfig of a small VAE on synthetic data, for tests. Data and training
    settings are passed by their field names (``num_epochs=3``, ``synthetic_prior=...``)."""
    unknown = set(other) - _DATA_KEYS - _TRAINING_KEYS
    assert not unknown, f"small_config does not know {unknown}"
    data = {"dataset": "synthetic", "synthetic_num_train": 1000,
            **{key: value for key, value in other.items() if key in _DATA_KEYS}}
    training = {"num_epochs": 2, "batch_size": 100, "learning_rate": 1e-2,
                "objective": {"name": objective, "options": objective_options or {}},
                **{key: value for key, value in other.items() if key in _TRAINING_KEYS}}
    model = {
        "z_dim": z_dim, "x_dim": x_dim, "image_shape": image_shape,
        "architecture": {"name": architecture,
                         "options": {"hidden_dims": list(hidden_dims), "activation": activation}},
        "prior": {"name": prior, "options": prior_options or {}},
        "likelihood": {"name": likelihood, "options": likelihood_options or {}},
        "guide": {"name": guide, "options": guide_options or {}},
    }
    return resolve(RunConfig.from_dict({"data": data, "model": model, "training": training,
                                        "seed": seed, "device": "cpu"}))


def load_script(name):
    """A script of scripts/ imported as a module (its ``main(argv)`` runs it in this process)."""
    module_name = f"vae_script_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            module_name, os.path.join(ROOT, "scripts", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[module_name] = module
    return sys.modules[module_name]


def run_main(name, *args):
    """Run ``scripts/<name>.py`` in this process with ``args``; returns what its main returns."""
    return load_script(name).main([str(arg) for arg in args])


def refused(capsys, name, *args):
    """Run a script that must refuse its input: it exits with status 2 and one line on stderr,
    which is returned."""
    os.environ.pop("VAE_TRACEBACK", None)
    with pytest.raises(SystemExit) as exit_info:
        run_main(name, *args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


#: a tiny model on the shipped subset, one epoch
SMALL = ["--dataset", "mnist-subset", "--num-epochs", "1", "--z-dim", "4", "--hidden-dims", "32",
         "--batch-size", "200", "--no-progress", "--device", "cpu"]


def small_args(z_dim=4):
    args = list(SMALL)
    args[args.index("--z-dim") + 1] = str(z_dim)
    return args


#: a tiny run on synthetic data: seconds to train, for the tests of run folders and scripts
TINY = ["--dataset", "synthetic", "--synthetic-num-train", "300", "--synthetic-x-dim", "20",
        "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "100", "--no-progress",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished two-epoch run of :data:`TINY` (one per test module; copy it to change it)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    run_main("train", *TINY, "--num-epochs", "2", "--out", out)
    return out


def linear_gaussian(z_dim=2, x_dim=10, sigma=0.5, weight_scale=2.0, seed=0):
    """A linear-Gaussian VAE (exact log p(x) and posterior in models.linear_gaussian) with a
    random decoder of the given scale."""
    torch.manual_seed(seed)
    model = build_model(small_config(z_dim=z_dim, x_dim=x_dim, hidden_dims=[],
                                     architecture="linear", likelihood="gaussian",
                                     likelihood_options={"sigma": sigma}))
    with torch.no_grad():
        model.decoder.weight.copy_(weight_scale * torch.randn(x_dim, z_dim) / math.sqrt(z_dim))
        model.decoder.bias.copy_(torch.randn(x_dim))
    return model.requires_grad_(False).eval()

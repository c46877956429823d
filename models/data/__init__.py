"""Data sets: which data a run's configuration names, loaded as whole-split tensors on the
training device (a minibatch is an index into a tensor rather than 128 PIL conversions).

- :mod:`models.data.splits`: a split and a data set, and their binarization;
- :mod:`models.data.mnist`: the MNIST files with their checks, and the shipped subset;
- :mod:`models.data.synthetic`: data drawn from a known story, with their true latents.
"""

from models.base.config import (BINARIZATIONS, DATASETS, ConfigError, DataConfig,
                                RunConfig)
from models.data.mnist import (DEFAULT_NUM_VALIDATION, IDX_MAGIC, MNIST_FILES, SUBSET_PATH,
                               check_idx_file, check_mnist, default_data_dir, mnist_dataset,
                               read_mnist, read_mnist_subset)
from models.data.splits import (FIXED_BINARIZATION_SEEDS, SPLITS, DataError, Dataset, Split,
                                binarized_splits)
from models.data.synthetic import make_synthetic, synthetic_story

__all__ = [
    "DEFAULT_NUM_VALIDATION", "DataError", "Dataset", "FIXED_BINARIZATION_SEEDS", "IDX_MAGIC",
    "MNIST_FILES", "SPLITS", "SUBSET_PATH", "Split", "binarized_splits", "check_idx_file",
    "check_mnist", "default_data_dir", "load_dataset", "make_synthetic", "mnist_dataset",
    "read_mnist", "read_mnist_subset", "resolve_binarize", "run_config", "synthetic_story",
]


def run_config(config):
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, DataConfig):
        return RunConfig(data=config)
    return RunConfig.from_dict(config)


def resolve_binarize(config):
    """The binarization a run uses: the one it names, else the first its likelihood can
    explain (``none`` for synthetic data, which are drawn from their own story); a
    binarization the likelihood cannot explain is refused."""
    from models.likelihoods import LIKELIHOODS

    config = run_config(config)
    binarize = config.data.binarize
    likelihood = config.model.likelihood.name
    if config.data.dataset == "synthetic":
        if binarize not in (None, "none"):
            raise ConfigError("--binarize does not apply to --dataset synthetic; drop it")
        return "none"
    if binarize is not None and binarize not in BINARIZATIONS:
        raise DataError(f"unknown binarization {binarize!r}; valid: {', '.join(BINARIZATIONS)}")
    accepted = getattr(LIKELIHOODS.get(likelihood), "binarize", BINARIZATIONS)
    if binarize is None:
        return accepted[0]
    if binarize not in accepted:
        raise ConfigError(f"the {likelihood} likelihood needs --binarize "
                          f"{' or '.join(accepted)}, got --binarize {binarize}")
    return binarize


def load_dataset(config, device="cpu"):
    """Load the data set a run configuration describes (a RunConfig, a DataConfig or a dict)
    and move it to ``device``. The result is a deterministic function of the configuration.
    Synthetic data take their likelihood (and its ``sigma``) from the model configuration."""
    config = run_config(config)
    data = config.data
    name = data.dataset
    if name == "mnist":
        data_dir = data.data_dir or default_data_dir()
        train_images, train_labels, test_images, test_labels = read_mnist(
            data_dir, download=data.download)
    elif name == "mnist-subset":
        train_images, train_labels, test_images, test_labels = read_mnist_subset()
    elif name == "synthetic":
        return make_synthetic(config).to(device)
    else:
        raise DataError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    binarize = data.binarize if data.binarize is not None else resolve_binarize(config)
    dataset = mnist_dataset(name, (train_images, test_images), (train_labels, test_labels),
                            binarize, data.num_validation)
    return dataset.to(device)

"""Load a trained run for evaluation: model, guide and the data split it was trained on."""

import torch

from inference.checkpoint import load_checkpoint, restore
from inference.data import load_dataset


def load_run(path, device="cpu", data_dir=None):
    """Rebuild the model and guide of a run folder or checkpoint and load its data set.

    :returns: (model, guide, dataset, config, checkpoint path); model and guide in eval mode.
    """
    checkpoint = load_checkpoint(path, map_location=device)
    model, guide, config = restore(checkpoint, device)
    model.requires_grad_(False), guide.requires_grad_(False)
    config = dict(config)
    if data_dir is not None:
        config["data_dir"] = data_dir
    dataset = load_dataset(config, device)
    return model, guide, dataset, config, checkpoint["path"]


def select(dataset, split, num_data=None):
    """The first ``num_data`` points of a split (all by default), binarized as for scoring:
    returns (x, labels)."""
    part = dataset.split(split)
    x, labels = part.data(), part.labels
    if num_data is not None:
        if int(num_data) < 1:
            raise ValueError(f"--num-data must be at least 1, got {num_data}")
        x, labels = x[:int(num_data)], labels[:int(num_data)]
    if not torch.is_tensor(x) or x.shape[0] == 0:
        raise ValueError(f"the {split} split is empty")
    return x, labels

"""Open a trained run: its model and guide rebuilt from the checkpoint, and its data set."""

import dataclasses

from inference.checkpoint import load_checkpoint, restore
from inference.data import load_dataset


def load_run(path, device="cpu", data_dir=None, trust=()):
    """Rebuild the model and guide of a run folder or checkpoint and load its data set.

    :param str data_dir: read the data from here instead of the folder stored in the run.
    :param trust: which ``module:Class`` parts the run may import (see ``load_checkpoint``).
    :returns: (model, guide, dataset, config, checkpoint path); model and guide in eval mode
        with gradients switched off; ``config`` a RunConfig.
    """
    checkpoint = load_checkpoint(path, map_location=device, trust=trust)
    model, guide, config = restore(checkpoint, device)
    model.requires_grad_(False), guide.requires_grad_(False)
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                      data_dir=data_dir))
    dataset = load_dataset(config, device)
    return model, guide, dataset, config, checkpoint["path"]

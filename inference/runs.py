"""Open a trained run: its model and guide rebuilt from the checkpoint, and its data set."""

import dataclasses

from inference.build import resolve
from inference.checkpoint import load_checkpoint, restore, run_folder_of
from inference.data import load_dataset
from models.base.registry import refuse_imports_from


def load_run(path, device="cpu", data_dir=None, trust=(), group=None):
    """Rebuild the model and guide of a run folder or checkpoint and load its data set.

    :param str data_dir: read the data from here instead of the folder stored in the run.
    :param trust: which ``module:Class`` parts the run may import (see ``load_checkpoint``).
    :param group: the :class:`inference.distributed.ProcessGroup` of a run of several
        processes: the first reads the checkpoint (only its machine needs the run folder) and
        gives the others what rebuilds the model and guide; every process reads the data set.
    :returns: (model, guide, dataset, config, checkpoint path); model and guide in eval mode
        with gradients switched off; ``config`` a RunConfig.
    """
    if group is None:
        checkpoint = load_checkpoint(path, map_location=device, trust=trust)
    else:
        checkpoint = shared_checkpoint(path, group, trust)
    model, guide, config = restore(checkpoint, device)
    model.requires_grad_(False), guide.requires_grad_(False)
    if data_dir is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                      data_dir=data_dir))
    dataset = load_dataset(config, device)
    return model, guide, dataset, config, checkpoint["path"]


def shared_checkpoint(path, group, trust=()):
    """What :func:`inference.checkpoint.restore` needs of the checkpoint at ``path``, read by
    the first process of ``group`` alone and given to the others as plain data (the
    configuration as a dict, the model's and the guide's states as tensors on the CPU), as
    :func:`inference.run_life.open_training_run` gives a resumed run's checkpoint."""

    def read():
        checkpoint = load_checkpoint(path, map_location="cpu", trust=trust)
        return {"config": checkpoint["config"].to_dict(), "model": checkpoint["model"],
                "guide": checkpoint["guide"], "path": checkpoint["path"]}

    shared = group.from_main("read the run's checkpoint", read)
    # The first process allowed the parts the run names (``trust``); as there, no module is
    # imported from a run folder of that name, should this machine hold one.
    with refuse_imports_from(run_folder_of(shared["path"])):
        shared["config"] = resolve(shared["config"])
    return shared

"""The splits of a data set held whole as tensors on the training device, and their
binarization.

Three binarizations: ``dynamic``, a fresh Bernoulli draw of every pixel each time a training batch
is used (the protocol of Burda et al. 2015); ``static``, one fixed Bernoulli draw of every image,
with a fixed seed; ``none``, grey levels in [0, 1], for likelihoods of continuous data. Validation
and test images are binarized once with fixed seeds under both ``dynamic`` and ``static``, so that
every model is scored on the very same binary images and per-image comparisons between models are
paired."""

from dataclasses import dataclass, field

import torch

from models.base.config import BINARIZATIONS

SPLITS = ("train", "validation", "test")
# Seeds of the fixed Bernoulli draws, one per split; independent of the training seed on purpose.
FIXED_BINARIZATION_SEEDS = {"train": 20150, "validation": 20151, "test": 20152}


class DataError(ValueError):
    """The data cannot be found, read, or used as asked."""


class Split:
    """One split of a data set, held whole as a tensor.

    :param images: float tensor (n, x_dim). For a dynamically binarized split these are the grey
        levels, i.e. the Bernoulli probabilities of the pixels.
    :param labels: int64 tensor (n,), or -1 where there is no label.
    :param bool dynamic: draw x ~ Bernoulli(images) afresh every time data are taken.
    :param latents: the true z of each point, for data drawn from a known story.
    """

    def __init__(self, images, labels, dynamic=False, latents=None):
        self.images = images
        self.labels = labels
        self.dynamic = dynamic
        self.latents = latents

    def __len__(self):
        return self.images.shape[0]

    def to(self, device):
        latents = None if self.latents is None else self.latents.to(device)
        return Split(self.images.to(device), self.labels.to(device), self.dynamic, latents)

    def data(self, index=None):
        """The data points at ``index`` (all by default), binarized afresh if dynamic."""
        x = self.images if index is None else self.images[index]
        return torch.bernoulli(x) if self.dynamic else x

    def fixed(self, seed):
        """A copy with one fixed draw of a dynamic split (itself if already fixed)."""
        if not self.dynamic:
            return self
        generator = torch.Generator().manual_seed(seed)
        binary = torch.bernoulli(self.images.cpu(), generator=generator).to(self.images.device)
        return Split(binary, self.labels, False, self.latents)

    def batches(self, batch_size, shuffle=False, drop_last=False, generator=None, share=None):
        """Yield minibatches of data, in a random order if ``shuffle``.

        The order is drawn on the CPU from ``generator`` (torch's global one by default), so a
        seed gives the same minibatches on every device. With ``share = (rank, size)`` each
        minibatch of ``batch_size`` is cut into ``size`` contiguous parts as equal as can be and
        this process's part is yielded, as ``(x, fraction)`` where ``fraction`` is its share of
        the minibatch (a part left empty by a short last minibatch is given as its first point,
        with fraction 0).
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.images.device)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            if drop_last and len(index) < batch_size:
                break
            if share is None:
                yield self.data(index)
                continue
            rank, size = share
            first, last = rank * len(index) // size, (rank + 1) * len(index) // size
            if last > first:
                yield self.data(index[first:last]), (last - first) / len(index)
            else:
                yield self.data(index[:1]), 0.0


@dataclass
class Dataset:
    """The train, validation and test splits of one data set, and what is known about it."""

    name: str
    train: Split
    validation: Split
    test: Split
    x_dim: int
    image_shape: tuple = None
    binarize: str = "none"
    #: for synthetic data: the true generative model (a VAE) that drew the data
    true_model: object = None
    info: dict = field(default_factory=dict)

    def split(self, name):
        """The split called ``name``, with a fixed binarization (for evaluation)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, name).fixed(FIXED_BINARIZATION_SEEDS[name])

    def select(self, split, num_data=None):
        """The first ``num_data`` points of a split (all by default), binarized as for scoring:
        returns (x, labels)."""
        part = self.split(split)
        x, labels = part.data(), part.labels
        if num_data is not None:
            if isinstance(num_data, bool) or int(num_data) != num_data or num_data < 1:
                raise DataError(f"--num-data must be a whole number of at least 1, got "
                                f"{num_data}")
            x, labels = x[:int(num_data)], labels[:int(num_data)]
        if x.shape[0] == 0:
            raise DataError(f"the {split} split is empty")
        return x, labels

    def to(self, device):
        return Dataset(self.name, self.train.to(device), self.validation.to(device),
                       self.test.to(device), self.x_dim, self.image_shape, self.binarize,
                       self.true_model, self.info)


def binarized_splits(grey, labels, binarize):
    """Turn {split: grey images (n, x_dim)} into Splits binarized as asked."""
    if binarize not in BINARIZATIONS:
        raise DataError(f"unknown binarization {binarize!r}; valid: {', '.join(BINARIZATIONS)}")
    splits = {}
    for name, images in grey.items():
        split = Split(images, labels[name], dynamic=binarize != "none")
        if binarize == "static" or (binarize == "dynamic" and name != "train"):
            split = split.fixed(FIXED_BINARIZATION_SEEDS[name])
        splits[name] = split
    return splits

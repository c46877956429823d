"""Data sets held as whole-split tensors on the training device.

MNIST is read once through ``torchvision.datasets.MNIST`` and kept as one float tensor per split,
so a minibatch is an index into a tensor rather than 128 PIL conversions. Three binarizations:

- ``dynamic``: a fresh Bernoulli draw of every pixel each time a training batch is used
  (the protocol of Burda et al. 2015);
- ``static``: one fixed Bernoulli draw of every image, with a fixed seed;
- ``none``: grey levels in [0, 1], for likelihoods of continuous data.

Validation and test images are binarized once with fixed seeds under both ``dynamic`` and
``static``, so that every model is scored on the very same binary images and per-image comparisons
between models are paired. A small MNIST subset ships with the package for tests and demos, and a
synthetic data set is drawn from a known generative story whose true parameters are returned.

(Over 300 lines: the MNIST files with their checks, the shipped subset, the splits and their
binarization, and the synthetic story are one data layer; it is to become a package of its own
when more data sets join.)
"""

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from pyro import poutine

from models.base.config import (BINARIZATIONS, DATASETS, SYNTHETIC_PRIORS, ConfigError,
                                DataConfig, RunConfig)
from models.base.device import check_fits

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: the IDX magic number of MNIST's files: unsigned bytes, 3 dimensions (images) or 1 (labels)
IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
SPLITS = ("train", "validation", "test")
SUBSET_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "mnist_subset.npz")
# Seeds of the fixed Bernoulli draws, one per split; independent of the training seed on purpose.
FIXED_BINARIZATION_SEEDS = {"train": 20150, "validation": 20151, "test": 20152}
DEFAULT_NUM_VALIDATION = {"mnist": 10000, "mnist-subset": 200}


class DataError(ValueError):
    """The data cannot be found, read, or used as asked."""


def default_data_dir():
    """The data folder: ``$VAE_DATA_DIR`` if set, else ``./data``."""
    return os.environ.get("VAE_DATA_DIR") or "data"


def read_mnist(data_dir, download=False):
    """Read the four MNIST files from ``data_dir/MNIST/raw/``.

    :returns: (train_images, train_labels, test_images, test_labels) as uint8 images of shape
        (n, 28, 28) and int64 labels.
    """
    import torchvision

    raw = os.path.join(data_dir, "MNIST", "raw")
    missing = [name for name in MNIST_FILES if not os.path.isfile(os.path.join(raw, name))]
    if missing and download:
        try:
            for train in (True, False):
                torchvision.datasets.MNIST(data_dir, train=train, download=True)
        except Exception as error:  # the download has many ways to fail; all mean the same
            raise DataError(f"could not download MNIST into {raw}: {error}") from error
        missing = [name for name in MNIST_FILES if not os.path.isfile(os.path.join(raw, name))]
    if missing:
        raise DataError(
            f"MNIST not found: {raw} lacks {', '.join(missing)}; put the four uncompressed files "
            f"{', '.join(MNIST_FILES)} in <data-dir>/MNIST/raw/ and pass --data-dir (or set "
            "VAE_DATA_DIR), or pass --download to fetch them")
    for name in MNIST_FILES:
        check_idx_file(os.path.join(raw, name))
    try:
        train = torchvision.datasets.MNIST(data_dir, train=True, download=False)
        test = torchvision.datasets.MNIST(data_dir, train=False, download=False)
    except Exception as error:
        raise DataError(f"could not read the MNIST files in {raw} (corrupt or truncated?): "
                        f"{str(error) or type(error).__name__}") from error
    check_mnist(train.data, train.targets, test.data, test.targets)
    return train.data, train.targets, test.data, test.targets


def check_idx_file(path):
    """Refuse an MNIST file whose IDX header is not MNIST's (the magic number of unsigned-byte
    images, 0x00000803, or labels, 0x00000801) or whose length does not match its header; the
    message names the file and says what was found and what was expected."""
    kind = "images" if "-images-" in os.path.basename(path) else "labels"
    expected = IDX_MAGIC[kind]
    with open(path, "rb") as handle:
        header = handle.read(4 + 4 * (expected & 0xFF))
    if len(header) < 4:
        raise DataError(f"{path} is {len(header)} bytes long, too short for an IDX file of MNIST "
                        f"{kind}; replace it with the uncompressed file")
    magic = int.from_bytes(header[:4], "big")
    if magic != expected:
        hint = ("it is gzip-compressed: unpack it with gunzip" if header[:2] == b"\x1f\x8b" else
                f"it is not an uncompressed MNIST {kind} file: replace it")
        raise DataError(f"{path}: magic number 0x{magic:08x}, expected 0x{expected:08x} for "
                        f"{kind}; {hint}")
    if len(header) < 4 + 4 * (expected & 0xFF):
        raise DataError(f"{path} ends inside its IDX header; the file is truncated: replace it")
    dims = [int.from_bytes(header[i:i + 4], "big") for i in range(4, len(header), 4)]
    needed, size = len(header) + math.prod(dims), os.path.getsize(path)
    if size != needed:
        raise DataError(f"{path} is {size} bytes long but its header (" + " x ".join(
            str(d) for d in dims) + f" {kind}) needs {needed}; the file is truncated or "
            "corrupt: replace it")


def check_mnist(train_images, train_labels, test_images, test_labels):
    """Refuse MNIST files that do not fit together: a label file whose length differs from its
    image file's (the labels would shift), images that are not 28 x 28, or training and test
    files that look swapped."""
    for images, labels, image_file, label_file in (
            (train_images, train_labels, MNIST_FILES[0], MNIST_FILES[1]),
            (test_images, test_labels, MNIST_FILES[2], MNIST_FILES[3])):
        if len(labels) != len(images):
            raise DataError(f"{label_file} holds {len(labels)} labels but {image_file} holds "
                            f"{len(images)} images; they must come from the same release of "
                            "MNIST (replace the wrong file)")
        if tuple(images.shape[1:]) != (28, 28):
            raise DataError(f"{image_file} holds images of shape {tuple(images.shape[1:])}, not "
                            "28 x 28; it is not an MNIST image file")
    if len(train_images) < len(test_images):
        raise DataError(f"{MNIST_FILES[0]} holds {len(train_images)} images and {MNIST_FILES[2]} "
                        f"{len(test_images)}: the training and test files look swapped (MNIST "
                        "has 60000 training and 10000 test images)")


def read_mnist_subset(path=SUBSET_PATH):
    """Read the MNIST subset shipped with the package (see scripts/make_mnist_subset.py)."""
    if not os.path.isfile(path):
        raise DataError(f"the shipped MNIST subset {path} is missing; rebuild it with "
                        "python scripts/make_mnist_subset.py --data-dir <folder with MNIST/raw>")
    with np.load(path) as archive:
        return tuple(torch.from_numpy(archive[key]) for key in
                     ("train_images", "train_labels", "test_images", "test_labels"))


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


def _binarized_splits(grey, labels, binarize):
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


def _mnist_dataset(name, images, labels, binarize, num_validation):
    train_images, test_images = images
    train_labels, test_labels = labels
    given = num_validation is not None
    if not given:
        num_validation = DEFAULT_NUM_VALIDATION[name]
    if not 0 <= num_validation < len(train_images):
        if not given:
            raise DataError(f"the training file holds only {len(train_images)} images, too few "
                            f"to hold out the default {num_validation} for validation; pass a "
                            "smaller --num-validation")
        raise DataError(f"--num-validation must be between 0 and {len(train_images) - 1}, "
                        f"got {num_validation}")
    n_train = len(train_images) - num_validation

    def grey(x):
        return x.flatten(1).float() / 255.0

    grey_splits = {"train": grey(train_images[:n_train]),
                   "validation": grey(train_images[n_train:]),
                   "test": grey(test_images)}
    label_splits = {"train": train_labels[:n_train].long(),
                    "validation": train_labels[n_train:].long(),
                    "test": test_labels.long()}
    splits = _binarized_splits(grey_splits, label_splits, binarize)
    return Dataset(name, x_dim=784, image_shape=(28, 28), binarize=binarize, **splits)


def _run_config(config):
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

    config = _run_config(config)
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
    config = _run_config(config)
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
    dataset = _mnist_dataset(name, (train_images, test_images), (train_labels, test_labels),
                             binarize, data.num_validation)
    return dataset.to(device)


def synthetic_story(z_dim=2, x_dim=50, likelihood="bernoulli", sigma=0.1, seed=0, hidden_dim=64,
                    prior="standard"):
    """A VAE with a fixed random decoder: the known generative story of the synthetic data.

    z ~ N(0, I_{z_dim}) (``prior="standard"``) or, for ``prior="mixture"``, an equal mixture of
    8 Gaussians with scale 0.15 whose means lie on a circle of radius 2.5 in the first two latent
    dimensions (clusters that a standard normal prior can only mimic by folding its mass);
    f(z) = W2 tanh(W1 z + b1) + b2 with W1, b1 ~ N(0, 1) and W2 ~ N(0, 9 / hidden_dim), so each
    logit (or mean) varies over several units with z and x carries real information about z;
    x ~ Bernoulli(sigmoid(f(z))) or N(f(z), sigma^2 I).
    """
    from models import build_model

    if prior not in SYNTHETIC_PRIORS:
        raise DataError(f"unknown synthetic prior {prior!r}; valid: {', '.join(SYNTHETIC_PRIORS)}")
    likelihood_options = {"sigma": sigma} if likelihood == "gaussian" else {}
    config = {"z_dim": z_dim, "x_dim": x_dim,
              "architecture": {"name": "mlp", "options": {"hidden_dims": [hidden_dim],
                                                          "activation": "tanh"}},
              "likelihood": {"name": likelihood, "options": likelihood_options},
              "prior": {"name": "mog", "options": {"num_components": 8}}
              if prior == "mixture" else "standard"}
    model = build_model(config)
    if prior == "mixture":
        angles = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
        with torch.no_grad():
            model.prior.logits.zero_()
            model.prior.locs.zero_()
            model.prior.locs[:, 0] = 2.5 * angles.cos()
            if z_dim > 1:
                model.prior.locs[:, 1] = 2.5 * angles.sin()
            # the prior's scale is softplus(raw + log(e - 1)) + 1e-4, so 0.15 (plus that floor)
            model.prior.raw_scales.fill_(math.log(math.exp(0.15) - 1.0) - math.log(math.e - 1.0))
    generator = torch.Generator().manual_seed(seed)
    first, last = model.decoder[0], model.decoder[-1]
    with torch.no_grad():
        first.weight.copy_(torch.randn(first.weight.shape, generator=generator))
        first.bias.copy_(torch.randn(first.bias.shape, generator=generator))
        last.weight.copy_(torch.randn(last.weight.shape, generator=generator)
                          * 3.0 / hidden_dim ** 0.5)
        last.bias.copy_(torch.randn(last.bias.shape, generator=generator))
    model.requires_grad_(False)
    return model.eval()


def make_synthetic(config):
    """Draw train, validation and test data from :func:`synthetic_story` by running its model
    forwards (the story at test time), keeping the true z of every point. The story's
    likelihood is the run's (with its ``sigma`` for ``gaussian``)."""
    from models.likelihoods import LIKELIHOODS

    config = _run_config(config)
    data = config.data
    sizes = {"train": data.synthetic_num_train, "validation": 1000, "test": 1000}
    likelihood = LIKELIHOODS.resolve(config.model.likelihood)
    # The points, their latents and the decoder's output at once, and the story's decoder.
    num_points, hidden = sum(sizes.values()), 64
    check_fits(4 * (num_points * (3 * data.synthetic_x_dim + data.synthetic_z_dim)
                    + (hidden + 1) * (data.synthetic_x_dim + data.synthetic_z_dim + 1)),
               f"synthetic data of {num_points} points with synthetic_x_dim="
               f"{data.synthetic_x_dim} and synthetic_z_dim={data.synthetic_z_dim}",
               "choose smaller --synthetic-x-dim, --synthetic-z-dim or --synthetic-num-train")
    story = synthetic_story(z_dim=data.synthetic_z_dim, x_dim=data.synthetic_x_dim,
                            likelihood=likelihood.name,
                            sigma=likelihood.options.get("sigma", 0.1),
                            seed=data.synthetic_seed, prior=data.synthetic_prior)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(data.synthetic_seed + 1)
        trace = poutine.trace(story).get_trace(batch_size=sum(sizes.values()))
    x, z = trace.nodes["x"]["value"], trace.nodes["z"]["value"]
    splits, start = {}, 0
    for name, size in sizes.items():
        labels = torch.full((size,), -1, dtype=torch.long)
        splits[name] = Split(x[start:start + size], labels, latents=z[start:start + size])
        start += size
    info = {"z_dim": story.z_dim, "x_dim": story.x_dim, "likelihood": likelihood}
    return Dataset("synthetic", x_dim=story.x_dim, true_model=story, info=info, **splits)

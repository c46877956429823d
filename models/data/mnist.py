"""MNIST: the four original IDX files, read once through ``torchvision.datasets.MNIST`` and
checked (magic numbers, lengths, shapes, swapped files), and the small subset that ships with the
package for tests and demos (``assets/mnist_subset.npz``, made by scripts/make_mnist_subset.py)."""

import math
import os

import numpy as np
import torch

from models.data.splits import DataError, Dataset, binarized_splits

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: the IDX magic number of MNIST's files: unsigned bytes, 3 dimensions (images) or 1 (labels)
IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
SUBSET_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "mnist_subset.npz")
DEFAULT_NUM_VALIDATION = {"mnist": 10000, "mnist-subset": 200}


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


def mnist_dataset(name, images, labels, binarize, num_validation):
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
    splits = binarized_splits(grey_splits, label_splits, binarize)
    return Dataset(name, x_dim=784, image_shape=(28, 28), binarize=binarize, **splits)

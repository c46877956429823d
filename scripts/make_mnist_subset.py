"""Make the small MNIST subset that ships with the project.

The subset lets the tests and the quick-start demo run with no data folder. It holds the first
``--num-train`` images of the original training file and the first ``--num-test`` images of the
original test file, as uint8 grey levels with their labels, plus a provenance note with the md5 of
every source file. Run it from the project root::

    python scripts/make_mnist_subset.py --data-dir data
"""

import hashlib
import io
import os

import numpy as np

from evaluation import command_line as cli
from evaluation.command_line import parsers
from models.data import MNIST_FILES, default_data_dir, read_mnist
from models.utilities.entry_points import entry_point
from models.utilities.files import atomic_write_bytes, refuse_to_overwrite


def md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _main(args):
    for name in ("num_train", "num_test"):
        if getattr(args, name) < 1:
            raise ValueError(f"{cli.flag(name)} must be at least 1, got {getattr(args, name)}")
    refuse_to_overwrite([args.out], args.overwrite)
    args.data_dir = args.data_dir or default_data_dir()
    train_images, train_labels, test_images, test_labels = read_mnist(args.data_dir)
    for name, images in (("num_train", train_images), ("num_test", test_images)):
        if getattr(args, name) > len(images):
            raise ValueError(f"{cli.flag(name)} {getattr(args, name)} exceeds the {len(images)} "
                             "images of the file")
    raw = os.path.join(args.data_dir, "MNIST", "raw")
    sources = ", ".join(f"{name} (md5 {md5(os.path.join(raw, name))})" for name in MNIST_FILES)
    provenance = (
        f"First {args.num_train} images of the MNIST training file and first {args.num_test} "
        f"images of the MNIST test file, uint8 grey levels, unchanged. Sources: {sources}. "
        "Made by scripts/make_mnist_subset.py."
    )
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        train_images=train_images[: args.num_train].numpy(),
        train_labels=train_labels[: args.num_train].numpy().astype(np.int64),
        test_images=test_images[: args.num_test].numpy(),
        test_labels=test_labels[: args.num_test].numpy().astype(np.int64),
        provenance=np.array(provenance),
    )
    atomic_write_bytes(args.out, buffer.getvalue())
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")
    print(provenance)


main = entry_point(_main, parsers.make_mnist_subset)


if __name__ == "__main__":
    main()

"""Data: the shipped subset, binarizations, the synthetic ground truth, and clear errors."""

import os

import numpy as np
import pytest
import torch

from models.data import (FIXED_BINARIZATION_SEEDS, MNIST_FILES, SUBSET_PATH, DataError,
                         default_data_dir, load_dataset, read_mnist)
from models.base.config import DataConfig, RunConfig


def subset(binarize="dynamic", **settings):
    return load_dataset(DataConfig(dataset="mnist-subset", binarize=binarize, **settings))


def test_subset_is_small_and_documents_its_provenance():
    assert os.path.getsize(SUBSET_PATH) < 2e6
    with np.load(SUBSET_PATH) as archive:
        assert archive["train_images"].shape == (2000, 28, 28)
        assert archive["test_images"].shape == (500, 28, 28)
        assert archive["train_images"].dtype == np.uint8
        provenance = str(archive["provenance"])
    for name in MNIST_FILES:
        assert name in provenance
    assert "md5" in provenance


def test_subset_splits_hold_out_validation_from_training_images():
    dataset = subset()
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (1800, 200, 500)
    assert dataset.x_dim == 784 and dataset.image_shape == (28, 28)
    assert dataset.train.images.shape == (1800, 784)
    assert dataset.train.labels.dtype == torch.long


def test_dynamic_binarization_draws_fresh_pixels_each_time():
    train = subset("dynamic").train
    first, second = train.data(), train.data()
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    # Pixel means follow the grey levels: E[x] = grey level.
    draws = torch.stack([train.data(torch.arange(100)) for _ in range(200)]).mean(0)
    assert (draws - train.images[:100]).abs().max() < 0.2


def test_dynamic_binarization_fixes_validation_and_test_draws():
    first, second = subset("dynamic"), subset("dynamic")
    assert torch.equal(first.test.data(), second.test.data())
    assert torch.equal(first.validation.data(), first.validation.data())
    assert set(first.test.data().unique().tolist()) == {0.0, 1.0}


def test_static_binarization_is_one_fixed_draw():
    first, second = subset("static"), subset("static")
    assert torch.equal(first.train.data(), first.train.data())
    assert torch.equal(first.train.data(), second.train.data())
    assert set(first.train.data().unique().tolist()) == {0.0, 1.0}
    # Fixed draws of the training split agree with the split's fixed evaluation view.
    dynamic = subset("dynamic")
    assert torch.equal(dynamic.split("train").data(), first.train.data())
    assert FIXED_BINARIZATION_SEEDS["train"] != FIXED_BINARIZATION_SEEDS["test"]


def test_no_binarization_keeps_grey_levels_in_unit_interval():
    x = subset("none").train.data()
    assert x.min() >= 0 and x.max() <= 1
    assert ((x > 0) & (x < 1)).any()


def test_batches_cover_the_split_once_per_epoch():
    train = subset("static").train
    torch.manual_seed(0)
    batches = list(train.batches(128, shuffle=True))
    assert sum(len(b) for b in batches) == 1800 and len(batches) == 15
    assert len(list(train.batches(128, drop_last=True))) == 14
    total = torch.cat(batches).sum(0)
    assert torch.equal(total, train.data().sum(0))


def test_missing_data_folder_names_the_four_files(tmp_path):
    with pytest.raises(DataError, match=r"MNIST not found: .* lacks train-images-idx3-ubyte, "
                       r"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"):
        read_mnist(str(tmp_path))
    with pytest.raises(DataError, match=r"--data-dir \(or set VAE_DATA_DIR\)"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path / "nowhere")))


def write_mnist_files(root, images=(30, 12)):
    """Four small files in MNIST's IDX format under root/MNIST/raw/; returns that folder."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in zip(("train", "t10k"), images):
        for kind, shape in (("images-idx3", (count, 28, 28)), ("labels-idx1", (count,))):
            header = bytes([0, 0, 8, len(shape)]) + b"".join(
                n.to_bytes(4, "big") for n in shape)
            data = rng.integers(0, 10, shape).astype(np.uint8).tobytes()
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + data)
    return raw


def test_an_mnist_file_with_a_wrong_header_says_what_was_found_and_expected(tmp_path):
    raw = write_mnist_files(tmp_path / "a")
    assert read_mnist(str(tmp_path / "a"))[0].shape == (30, 28, 28)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(bytes(4) + images.read_bytes()[4:])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: magic number 0x00000000, "
                       r"expected 0x00000803 for images; it is not an uncompressed MNIST"):
        read_mnist(str(tmp_path / "a"))
    raw = write_mnist_files(tmp_path / "b")
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x1f\x8b\x08\x08" + labels.read_bytes()[4:])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: magic number 0x1f8b0808, "
                       r"expected 0x00000801 for labels; it is gzip-compressed"):
        read_mnist(str(tmp_path / "b"))
    raw = write_mnist_files(tmp_path / "c")
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte is 9324 bytes long but its "
                       r"header \(12 x 28 x 28 images\) needs 9424; the file is truncated"):
        read_mnist(str(tmp_path / "c"))


def test_default_data_dir_follows_environment(monkeypatch):
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)
    assert default_data_dir() == "data"
    monkeypatch.setenv("VAE_DATA_DIR", "/somewhere/else")
    assert default_data_dir() == "/somewhere/else"


def test_unknown_dataset_and_binarization_are_rejected():
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'; valid datasets: mnist, "):
        load_dataset(DataConfig(dataset="cifar"))
    with pytest.raises(DataError, match=r"unknown binarization 'half'; valid: dynamic"):
        subset("half")
    with pytest.raises(DataError, match=r"--num-validation must be between 0 and 1999"):
        subset(num_validation=2000)


def test_synthetic_data_come_with_their_true_story():
    config = DataConfig(dataset="synthetic", synthetic_num_train=300, synthetic_z_dim=2,
                        synthetic_x_dim=20)
    first, second = load_dataset(config), load_dataset(config)
    assert torch.equal(first.train.data(), second.train.data())
    assert first.train.latents.shape == (300, 2)
    assert first.train.data().shape == (300, 20)
    assert first.true_model.z_dim == 2 and first.true_model.x_dim == 20
    assert not any(p.requires_grad for p in first.true_model.parameters())
    # The data carry information about z: pixels decoded from the true z explain the data far
    # better than pixels decoded from fresh prior draws.
    x, z = first.test.data(), first.test.latents
    log_lik = first.true_model.likelihood(first.true_model.decoder(z)).log_prob(x).mean()
    shuffled = first.true_model.likelihood(first.true_model.decoder(z[torch.randperm(len(z))]))
    assert log_lik > shuffled.log_prob(x).mean() + 2.0
    other = load_dataset(DataConfig(**{**config.to_dict(), "synthetic_seed": 1}))
    assert not torch.equal(other.train.data(), first.train.data())


def test_synthetic_gaussian_data_use_sigma():
    dataset = load_dataset(RunConfig.from_dict({
        "data": {"dataset": "synthetic", "synthetic_num_train": 100},
        "model": {"likelihood": {"name": "gaussian", "options": {"sigma": 0.05}}}}))
    x, z = dataset.test.data(), dataset.test.latents
    residual = x - dataset.true_model.decoder(z)
    assert residual.std().item() == pytest.approx(0.05, rel=0.05)

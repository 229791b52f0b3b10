"""Readers, the validation split, the device-resident loader and the missing-data error."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from labkit.data import MNISTFamily, TensorLoader
from labkit.data.idx import read_idx, write_idx
from labkit.data.mnist import FILES
from labkit.errors import ConfigError, DataError

from .conftest import ROOT, write_mnist_folder


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_idx_round_trip(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)
    write_idx(tmp_path / name, array)
    out = read_idx(tmp_path / name)
    assert out.dtype == torch.uint8 and out.shape == (7, 5, 3)
    assert torch.equal(out, torch.from_numpy(array))


def test_truncated_idx_file_is_named(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((4, 28, 28), np.uint8))
    data = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "b").write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "c")


def test_split_is_seeded_disjoint_and_complete(data_root):
    a = MNISTFamily(root=data_root, val_size=100)
    b = MNISTFamily(root=data_root, val_size=100)
    a.setup(), b.setup()
    assert (a.split_size("train"), a.split_size("val"), a.split_size("test")) == (500, 100, 200)
    assert torch.equal(a._get("val")[0], b._get("val")[0])
    c = MNISTFamily(root=data_root, val_size=100, split_seed=1)
    c.setup()
    assert not torch.equal(a._get("val")[0], c._get("val")[0])


def test_plain_idx_files_are_read_too(data_root):
    data = MNISTFamily(root=data_root, folder="FashionMNIST", val_size=0)
    data.setup()
    assert data.split_size("train") == 600


def test_missing_files_error_names_folder_and_files(tmp_path):
    data = MNISTFamily(root=tmp_path, download=False)
    with pytest.raises(DataError) as err:
        data.setup()
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "data.download=true" in message
    assert not (tmp_path / "MNIST").exists()  # nothing half-made left behind


def test_val_size_larger_than_training_set(data_root):
    with pytest.raises(ConfigError, match="data.val_size=600"):
        MNISTFamily(root=data_root, val_size=600).setup()



def test_train_size_takes_a_seeded_part_of_the_training_split_and_leaves_val_and_test(data_root):
    full = MNISTFamily(root=data_root, val_size=100)
    part = MNISTFamily(root=data_root, val_size=100, train_size=50)
    full.setup(), part.setup()
    assert (part.split_size("train"), part.split_size("val"), part.split_size("test")) == (50, 100, 200)
    assert torch.equal(part._get("val")[0], full._get("val")[0])
    assert torch.equal(part._get("train")[0], full._get("train")[0][:50])
    assert torch.equal(part._get("test")[0], full._get("test")[0])
    for bad in (0, 501):
        with pytest.raises(ConfigError, match=f"data.train_size={bad} is invalid.*\\[1, 500\\]"):
            MNISTFamily(root=data_root, val_size=100, train_size=bad).setup()

def test_loader_normalises_like_the_reference():
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    loader = TensorLoader(images, torch.arange(10), 4, mean=[0.1307], std=[0.3081])
    batches = list(loader)
    assert [b.inputs.shape[0] for b in batches] == [4, 4, 2]
    expected = (images.float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(torch.cat([b.inputs for b in batches]), expected, atol=1e-5)
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(10))


def test_shuffled_epoch_visits_every_sample_once_and_is_seeded():
    images = torch.zeros((50, 1, 2, 2), dtype=torch.uint8)

    def order(seed):
        gen = torch.Generator().manual_seed(seed)
        loader = TensorLoader(images, torch.arange(50), 8, [0.0], [1.0], shuffle=True,
                              generator=gen)
        return torch.cat([b.targets for b in loader])

    first = order(0)
    assert sorted(first.tolist()) == list(range(50))
    assert torch.equal(first, order(0)) and not torch.equal(first, order(1))
    gen = torch.Generator().manual_seed(0)
    loader = TensorLoader(images, torch.arange(50), 8, [0.0], [1.0], shuffle=True,
                          drop_last=True, generator=gen)
    assert len(loader) == 6 and sum(len(b.targets) for b in loader) == 48


def test_shipped_mnist_is_complete():
    """The default experiment needs no download: the four raw files are in the repository."""
    data = MNISTFamily(root=ROOT / "data", val_size=5000)
    assert data.missing_files() == []
    raw = data.load_raw()
    assert raw.train_images.shape == (60000, 1, 28, 28) and raw.test_images.shape[0] == 10000
    assert set(raw.train_targets.unique().tolist()) == set(range(10))


def test_generated_folder_helper_is_readable(tmp_path):
    write_mnist_folder(tmp_path, n_train=20, n_test=10)
    raw = MNISTFamily(root=tmp_path).load_raw()
    assert raw.train_images.shape == (20, 1, 28, 28) and raw.test_targets.dtype == torch.int64


def test_interrupted_download_leaves_nothing_that_looks_like_data(tmp_path, monkeypatch):
    """A download that dies half-way must not be taken for a dataset by the next run."""
    import torchvision.datasets as tvd

    class DyingDownload:
        def __init__(self, root, train, download):
            raw = tmp_path.joinpath(root, "MNIST", "raw")
            raw.mkdir(parents=True)
            (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b half a file")
            raise ConnectionError("connection reset")

    monkeypatch.setattr(tvd, "MNIST", DyingDownload)
    data = MNISTFamily(root=tmp_path, download=True)
    with pytest.raises(DataError, match="could not download MNIST.*connection reset"):
        data.setup()
    assert data.missing_files() == list(FILES.values())
    assert not any(p.name.startswith(".download-") for p in tmp_path.iterdir())


def test_loader_state_resumes_mid_epoch_with_the_same_batches_and_augmentation():
    """A loader restored from state_dict() hands out exactly the batches the original would."""
    import itertools

    from labkit.data.augment import build_augment

    images = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3))
    augment = build_augment({"crop_padding": 1, "flip": True})

    def loader():
        return TensorLoader(images, torch.arange(40), 8, [0.5], [0.25], shuffle=True, augment=augment,
                            generator=torch.Generator().manual_seed(0))

    def batches(it, n):
        return [(b.index.clone(), b.inputs.clone()) for b in itertools.islice(it, n)]

    reference = loader()
    expected = batches(iter(reference), 5) + batches(iter(reference), 5)  # two whole epochs
    interrupted = loader()
    first = batches(iter(interrupted), 2)  # stopped after batch 2 of epoch 1
    state = interrupted.state_dict()
    assert state["batches_done"] == 2
    resumed = loader()
    resumed.load_state_dict(state)
    got = first + batches(iter(resumed), 5) + batches(iter(resumed), 5)
    assert len(got) == len(expected) == 10
    for (index_a, inputs_a), (index_b, inputs_b) in zip(got, expected, strict=True):
        assert torch.equal(index_a, index_b) and torch.equal(inputs_a, inputs_b)
    # at an epoch's end the state is only the generator: the next epoch starts from batch 0
    assert resumed.state_dict()["batches_done"] == 0 and resumed.state_dict()["epoch_generator"] is None

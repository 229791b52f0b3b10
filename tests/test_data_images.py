"""CIFAR and image-folder readers on generated files, synthetic data, batched augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

import labkit.data.imagefolder as imagefolder_module
from labkit.data import CIFAR, CropFlip, ImageFolder, SyntheticImages, build_augment
from labkit.errors import ConfigError, DataError

from .conftest import write_cifar_folder


# -- CIFAR -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_reader_keeps_the_pixel_layout(tmp_path, variant):
    written = write_cifar_folder(tmp_path, variant, per_batch=6, n_test=4)
    raw = CIFAR(variant=variant, root=tmp_path).load_raw()
    assert raw.train_images.shape == (30, 3, 32, 32) and raw.train_images.dtype == torch.uint8
    assert raw.test_images.shape == (4, 3, 32, 32)
    first_data, first_labels = written["data_batch_1" if variant == "cifar10" else "train"]
    # row layout: 1024 red values, then green, then blue, each row-major over 32x32
    assert raw.train_images[0, 1, 2, 3] == first_data[0, 1024 + 2 * 32 + 3]
    assert raw.train_images[5, 2, 31, 0] == first_data[5, 2048 + 31 * 32]
    assert raw.train_targets[:6].tolist() == first_labels[:6].tolist()
    data = CIFAR(variant=variant, root=tmp_path, val_size=5)
    data.setup()
    assert (data.split_size("train"), data.split_size("val"), data.split_size("test")) == (25, 5, 4)
    assert data.num_classes == (10 if variant == "cifar10" else 100)


def test_cifar_batches_with_str_keys_are_read(tmp_path):
    write_cifar_folder(tmp_path, "cifar10", per_batch=2, n_test=2)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    entry = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps({k.decode(): v for k, v in entry.items()}))
    assert CIFAR(root=tmp_path).load_raw().test_targets.tolist() == list(entry[b"labels"])


def test_missing_cifar_is_one_clear_error_without_download(tmp_path):
    write_cifar_folder(tmp_path, "cifar10", per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py lacks data_batch_3\. Set data\.download=true"):
        CIFAR(root=tmp_path).setup()
    with pytest.raises(DataError, match="cifar-100-python lacks train, test"):
        CIFAR(variant="cifar100", root=tmp_path).setup()


class _RunsCode:
    """Pickles as a call of ``os.system``: what a crafted batch would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_crafted_cifar_batch_cannot_run_code(tmp_path, protocol):
    """The official batches hold dicts, lists, bytes and numpy arrays; the reader builds nothing
    else, so a pickle that would run a command is refused in one line and the command never runs."""
    write_cifar_folder(tmp_path, "cifar10", per_batch=2, n_test=2)
    marker = tmp_path / "code-ran"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    entry = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps({**entry, b"batch_label": _RunsCode(marker)}, protocol=protocol))
    with pytest.raises(DataError, match=r"data_batch_1 is not a readable CIFAR batch .*posix\.system"):
        CIFAR(root=tmp_path).load_raw()
    assert not marker.exists()
    # an honest batch written with the same protocol is read
    path.write_bytes(pickle.dumps(entry, protocol=protocol))
    assert CIFAR(root=tmp_path).load_raw().train_targets.shape[0] == 10


@pytest.mark.parametrize("content,match", [
    (b"\x80\x04 not a pickle", "not a readable CIFAR batch"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"not \[N, 3072\]"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "not a readable CIFAR batch"),
])
def test_corrupt_cifar_batch_is_named(tmp_path, content, match):
    write_cifar_folder(tmp_path, "cifar10", per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(content)
    with pytest.raises(DataError, match=match):
        CIFAR(root=tmp_path).load_raw()


def test_cifar_configs_turn_augmentation_on_and_mnist_off(cfg_factory, tmp_path):
    write_cifar_folder(tmp_path, "cifar10", per_batch=2, n_test=2)
    cifar = instantiate(cfg_factory("data=cifar10", f"data.root={tmp_path}").data)
    assert isinstance(cifar.augment, CropFlip)
    assert (cifar.augment.crop_padding, cifar.augment.flip) == (4, True)
    assert len(cifar.mean) == 3 and cifar.mean != instantiate(cfg_factory("data=cifar100").data).mean
    assert instantiate(cfg_factory("data=mnist").data).augment is None
    assert instantiate(cfg_factory("data=cifar10", "data.augment=null").data).augment is None


# -- image folders -------------------------------------------------------------------------------
COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def write_image_folder(root, per_class=(4, 2), size=20):
    for split, count in zip(("train", "test"), per_class, strict=True):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                suffix = "jpg" if i == 0 else "png"
                Image.new("RGB", (size, size + i), colour).save(folder / f"{i}.{suffix}")
    return root


def make_folder_data(path, cache, **kwargs):
    kwargs = {"num_classes": 3, "in_channels": 3, "image_size": 16, "val_size": 2, **kwargs}
    return ImageFolder(path=str(path), cache_dir=str(cache) if cache else None, **kwargs)


def test_image_folder_decodes_resizes_and_labels(tmp_path):
    write_image_folder(tmp_path / "imgs")
    data = make_folder_data(tmp_path / "imgs", tmp_path / "cache")
    raw = data.load_raw()
    assert data.classes == ["blue", "green", "red"]
    assert raw.train_images.shape == (12, 3, 16, 16) and raw.test_images.shape == (6, 3, 16, 16)
    dominant = raw.train_images.float().mean(dim=(2, 3)).argmax(1)  # which channel is bright
    expected = torch.tensor([{0: 2, 1: 1, 2: 0}[int(t)] for t in raw.train_targets])
    assert torch.equal(dominant, expected)
    grey = make_folder_data(tmp_path / "imgs", tmp_path / "cache", in_channels=1).load_raw()
    assert grey.train_images.shape == (12, 1, 16, 16)


def test_image_folder_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "imgs")
    first = make_folder_data(tmp_path / "imgs", tmp_path / "cache").load_raw()
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    real_decode, calls = imagefolder_module.decode_image, []

    def counting_decode(*args):
        calls.append(args[0])
        return real_decode(*args)

    monkeypatch.setattr(imagefolder_module, "decode_image", counting_decode)
    second = make_folder_data(tmp_path / "imgs", tmp_path / "cache").load_raw()
    assert calls == [] and torch.equal(first.train_images, second.train_images)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "imgs" / "train" / "red" / "new.png")
    third = make_folder_data(tmp_path / "imgs", tmp_path / "cache").load_raw()
    assert len(calls) == 19 and len(third.train_images) == 13  # every image decoded again
    calls.clear()
    make_folder_data(tmp_path / "imgs", tmp_path / "cache").load_raw()
    assert calls == []


def test_image_folder_errors_name_the_fix(tmp_path):
    write_image_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="set data.num_classes=3"):
        make_folder_data(tmp_path / "imgs", None, num_classes=5).load_raw()
    with pytest.raises(DataError, match="is not a folder"):
        make_folder_data(tmp_path / "nowhere", None).load_raw()
    with pytest.raises(DataError, match="set data.resize=true"):
        make_folder_data(tmp_path / "imgs", None, resize=False).load_raw()
    (tmp_path / "imgs" / "test" / "violet").mkdir()
    with pytest.raises(DataError, match="classes not in train/: violet"):
        make_folder_data(tmp_path / "imgs", None).load_raw()


# -- synthetic -----------------------------------------------------------------------------------
def test_synthetic_data_is_seeded_and_shaped():
    a = SyntheticImages(n_train=50, n_test=20, seed=3, in_channels=3, image_size=12).load_raw()
    b = SyntheticImages(n_train=50, n_test=20, seed=3, in_channels=3, image_size=12).load_raw()
    c = SyntheticImages(n_train=50, n_test=20, seed=4, in_channels=3, image_size=12).load_raw()
    assert a.train_images.shape == (50, 3, 12, 12) and a.test_images.shape == (20, 3, 12, 12)
    assert torch.equal(a.train_images, b.train_images) and not torch.equal(a.train_images, c.train_images)
    assert 0 <= int(a.train_targets.min()) and int(a.train_targets.max()) < 10
    with pytest.raises(ConfigError):
        SyntheticImages(n_train=0)


# -- augmentation --------------------------------------------------------------------------------
def candidates(image: torch.Tensor, pad: int, flips: tuple[bool, ...]) -> dict:
    """Every crop (and flip) of one image the augmentation may return, by (dy, dx, flipped)."""
    size = image.shape[-1]
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    out = {}
    for flipped in flips:
        source = padded.flip(-1) if flipped else padded
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                out[(dy, dx, flipped)] = source[:, dy : dy + size, dx : dx + size]
    return out


@pytest.mark.parametrize("pad,flip", [(2, True), (2, False), (0, True)])
def test_each_output_is_one_crop_or_flip_and_both_happen(pad, flip):
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = CropFlip(pad, flip)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.is_contiguous()
    seen = set()
    for image, result in zip(images, out, strict=True):
        matches = [key for key, crop in candidates(image, pad, (False, True) if flip else (False,)).items()
                   if torch.equal(crop, result)]
        assert matches, "output is not a crop/flip of its input"
        seen.add(matches[0])
    assert len({(dy, dx) for dy, dx, _ in seen}) > (5 if pad else 0)  # crops really vary
    assert {f for _, _, f in seen} == ({False, True} if flip else {False})  # flips really happen


def test_augmentation_is_deterministic_under_a_seed():
    images = torch.randint(0, 256, (32, 1, 10, 10), dtype=torch.uint8)
    augment = CropFlip(3, True)
    a = augment(images, torch.Generator().manual_seed(7))
    b = augment(images, torch.Generator().manual_seed(7))
    c = augment(images, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.stride() == (100, 100, 10, 1)  # plain NCHW strides, even with one channel


def test_build_augment_from_config_values():
    assert build_augment(None) is None and build_augment({"crop_padding": 0, "flip": False}) is None
    assert isinstance(build_augment({"crop_padding": 4, "flip": True}), CropFlip)
    for bad in ({"crop_padding": -1}, {"flip": "yes"}, {"rotate": 10}, 5):
        with pytest.raises(ConfigError):
            build_augment(bad)


def test_only_the_training_loader_augments():
    data = SyntheticImages(n_train=40, n_test=10, val_size=10, in_channels=1, image_size=8,
                           batch_size=40, augment={"crop_padding": 2, "flip": True})
    data.setup()
    images = data._get("train")[0]
    train_batch = next(iter(data.loader("train", torch.Generator().manual_seed(0))))
    val_batch = next(iter(data.loader("val")))
    loader = data.loader("val")
    assert torch.equal(val_batch.inputs, loader.normalise(data._get("val")[0]))
    assert not torch.equal(train_batch.inputs, loader.normalise(images[train_batch.index]))


def test_cifar10_jpeg_config_reads_the_folder_and_caches_inside_the_project(cfg_factory, tmp_path):
    """data=cifar10_jpeg: CIFAR-10's class order (sorted folder names), its statistics, 32x32
    RGB, and the decoded cache under paths.data_dir, never in the (read-only) source folder."""
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    source = tmp_path / "CIFAR-10-JPEG"
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            (source / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32), (25 * label, 0, 0)).save(source / split / name / "0000.jpg")
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    cfg = cfg_factory("data=cifar10_jpeg", f"data.path={source}", f"paths.data_dir={tmp_path / 'data'}",
                      "data.val_size=2")
    assert list(cfg.data.mean) == [0.4913, 0.4821, 0.4465] and list(cfg.data.std) == [0.2452, 0.2428, 0.2606]
    data = instantiate(cfg.data)
    raw = data.load_raw()
    assert raw.train_images.shape == (10, 3, 32, 32)
    red = raw.train_images[:, 0, 16, 16].float()  # the label is readable from the red channel
    assert torch.allclose(red, 25 * raw.train_targets.float(), atol=3)
    assert len(list((tmp_path / "data" / "cache" / "imagefolder").glob("*.pt"))) == 1
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before


# -- image-folder statistics ---------------------------------------------------------------------
def write_noise_folder(root: Path, per_class: int = 5, size: int = 8) -> torch.Tensor:
    """RGB noise whose channels differ in level and spread (train/), and white test images that
    would change the statistics if they were counted; returns the training pixels in [0, 1]."""
    rng = np.random.default_rng(0)
    train = []
    for name in ("a", "b", "c"):
        for split in ("train", "test"):
            (root / split / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.stack([rng.integers(0, 100, (size, size)), rng.integers(100, 250, (size, size)),
                               rng.integers(0, 256, (size, size))], axis=-1).astype(np.uint8)
            Image.fromarray(pixels).save(root / "train" / name / f"{i}.png")
            train.append(torch.from_numpy(pixels).permute(2, 0, 1))
        Image.new("RGB", (size, size), (255, 255, 255)).save(root / "test" / name / "0.png")
    return torch.stack(train).double() / 255


def test_image_folder_statistics_are_computed_from_the_training_images(tmp_path, caplog):
    train = write_noise_folder(tmp_path / "imgs")
    data = make_folder_data(tmp_path / "imgs", tmp_path / "cache", image_size=8, val_size=3)
    with caplog.at_level("INFO", logger="labkit.data.imagefolder"):
        data.setup()
    mean, std = train.mean(dim=(0, 2, 3)), train.std(dim=(0, 2, 3), unbiased=False)
    assert data.mean == pytest.approx(mean.tolist(), abs=1e-6)  # all of train/, validation included
    assert data.std == pytest.approx(std.tolist(), abs=1e-6)
    assert data.mean[0] < 0.4 < data.mean[1] and data.std[1] < data.std[2]
    assert f"mean [{data.mean[0]:.4f}, {data.mean[1]:.4f}, {data.mean[2]:.4f}], std [" in caplog.text
    assert "(computed from the 15 training images)" in caplog.text
    # the loader normalises with them: the training images come out at mean 0, std 1 per channel
    loader = data.loader("val")
    images = torch.cat([data._get(split)[0] for split in ("train", "val")])
    normalised = loader.normalise(images).double()
    assert normalised.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (normalised.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    [cache] = (tmp_path / "cache").glob("*.pt")
    assert torch.load(cache, weights_only=True)["statistics"]["mean"] == data.mean


def test_image_folder_statistics_are_computed_once_and_typed_ones_win(tmp_path, monkeypatch, caplog):
    write_noise_folder(tmp_path / "imgs")
    first = make_folder_data(tmp_path / "imgs", tmp_path / "cache", image_size=8)
    first.load_raw()
    real, calls = imagefolder_module.channel_statistics, []
    monkeypatch.setattr(imagefolder_module, "channel_statistics", lambda x: calls.append(1) or real(x))
    again = make_folder_data(tmp_path / "imgs", tmp_path / "cache", image_size=8)
    again.load_raw()
    assert calls == [] and again.mean == first.mean and again.std == first.std  # read from the cache
    typed = make_folder_data(tmp_path / "imgs", tmp_path / "cache", image_size=8, mean=[0.5, 0.5, 0.5])
    with caplog.at_level("INFO", logger="labkit.data.imagefolder"):
        typed.load_raw()
    assert typed.mean == [0.5, 0.5, 0.5] and typed.std == first.std and calls == []
    assert "mean [0.5000, 0.5000, 0.5000] (data.mean)" in caplog.text
    # a cache written before statistics were kept gets them added, once
    [cache] = (tmp_path / "cache").glob("*.pt")
    state = torch.load(cache, weights_only=True)
    del state["statistics"]
    torch.save(state, cache)
    for _ in range(2):
        make_folder_data(tmp_path / "imgs", tmp_path / "cache", image_size=8).load_raw()
    assert calls == [1]


def test_imagefolder_config_leaves_the_statistics_to_the_data(cfg_factory, tmp_path):
    from labkit.config.validate import validate_config

    cfg = cfg_factory("data=imagefolder", f"data.path={tmp_path}")
    assert cfg.data.mean is None and cfg.data.std is None
    validate_config(cfg)
    typed = cfg_factory("data=imagefolder", "data.mean=[0.4,0.4,0.4]", "data.std=[0.2,0.2,0.2]")
    validate_config(typed)
    assert list(typed.data.mean) == [0.4, 0.4, 0.4]
    with pytest.raises(ConfigError, match="data.std"):
        validate_config(cfg_factory("data=imagefolder", "data.std=[0,1,1]"))


def test_missing_cifar10_jpeg_names_both_ways_in_one_line(cfg_factory, tmp_path):
    cfg = cfg_factory("data=cifar10_jpeg", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(DataError) as info:
        instantiate(cfg.data).setup()
    message = str(info.value)
    assert "\n" not in message and "data=cifar10 data.download=true" in message
    assert "data.root=<a folder holding CIFAR-10-JPEG/>" in message

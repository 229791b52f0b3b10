"""data.storage=stream: image folders read by DataLoader workers, with the in-memory path's batches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import labkit.data.stream as stream_module
from labkit.data import ImageFolder
from labkit.data.stream import StreamLoader
from labkit.errors import DataError

from .conftest import run_cli

CLASSES = ("a", "b", "c")


def write_folder(root: Path, per_class: tuple[int, int] = (9, 3), size: int = 12) -> Path:
    """Noise images around a class colour; every third file a JPEG, the rest PNGs."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 120, (size, size, 3)) + 60 * label
                suffix = "jpg" if i % 3 == 0 else "png"
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i:03d}.{suffix}")
    return root


def folder_data(path: Path, storage: str, **kwargs) -> ImageFolder:
    kwargs = {"num_classes": 3, "in_channels": 3, "image_size": 12, "val_size": 4, "batch_size": 5,
              "eval_batch_size": 4, "augment": {"crop_padding": 2, "flip": True}, **kwargs}
    data = ImageFolder(path=str(path), cache_dir=None, storage=storage, **kwargs)
    data.setup("cpu")
    return data


def epochs(loader, n: int = 2) -> list:
    return [batch for _ in range(n) for batch in loader]


def train_loader(data: ImageFolder, seed: int, **kwargs):
    return data.loader("train", torch.Generator().manual_seed(seed), **kwargs)


def same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(p, q, strict=True))
                                    for p, q in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("stream") / "imgs")


def test_stream_gives_the_in_memory_batches_bit_for_bit(folder):
    """Same files, same seed: the same split, order, crops, flips and normalisation, every split."""
    memory, stream = folder_data(folder, "memory"), folder_data(folder, "stream")
    assert (memory.storage_used, stream.storage_used) == ("memory", "stream")
    assert isinstance(train_loader(stream, 0), StreamLoader)
    assert memory.mean == pytest.approx(stream.mean, abs=1e-6)  # the sample is all 27 images here
    assert same_batches(epochs(train_loader(memory, 3)), epochs(train_loader(stream, 3)))
    for split in ("val", "test"):
        assert same_batches(list(memory.loader(split)), list(stream.loader(split)))
    assert {split: stream.split_size(split) for split in ("train", "val", "test")} == {
        "train": 23, "val": 4, "test": 9}


def test_the_order_follows_the_seed(folder):
    data = folder_data(folder, "stream", augment=None)

    def order(seed: int) -> list[int]:
        return torch.cat([b.index for b in epochs(train_loader(data, seed))]).tolist()

    assert order(1) == order(1) and order(1) != order(2)
    assert sorted(order(1)[:23]) == list(range(23))  # every training image once per epoch


def test_two_workers_give_the_same_batches(folder):
    data = folder_data(folder, "stream")
    in_process = epochs(train_loader(data, 4))
    data.stream_options["num_workers"] = 2
    loader = train_loader(data, 4)
    assert loader.data_loader.num_workers == 2 and loader.data_loader.persistent_workers
    assert same_batches(in_process, epochs(loader))


def test_resume_mid_epoch_continues_at_the_same_batch(folder):
    data = folder_data(folder, "stream")
    whole = epochs(train_loader(data, 7))
    interrupted = train_loader(data, 7)
    seen = []
    for batch in interrupted:
        seen.append(batch)
        if len(seen) == 2:
            break
    state = interrupted.state_dict()
    assert state["batches_done"] == 2
    resumed = train_loader(data, 99)  # another seed: the state brings the run's own generator back
    resumed.load_state_dict(state)
    assert same_batches(seen + epochs(resumed), whole)


def test_two_ranks_read_disjoint_parts_of_every_batch(folder):
    data = folder_data(folder, "stream", augment=None)
    single = list(train_loader(data, 5))
    ranks = [list(train_loader(data, 5, rank=r, world_size=2)) for r in (0, 1)]
    for whole, part0, part1 in zip(single, *ranks, strict=True):
        assert not set(part0.index.tolist()) & set(part1.index.tolist())
        assert torch.equal(torch.cat([part0.index, part1.index]), whole.index)
        assert torch.equal(torch.cat([part0.inputs, part1.inputs]), whole.inputs)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_one_line_or_skipped_and_counted(tmp_path, workers, caplog):
    root = write_folder(tmp_path / "imgs", per_class=(4, 1))
    bad = root / "train" / "b" / "zz-broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    data = folder_data(root, "stream", mean=[0.5] * 3, std=[0.25] * 3, num_workers=workers, val_size=0)
    with pytest.raises(DataError) as error:
        epochs(train_loader(data, 0), 1)
    message = str(error.value)
    assert str(bad) in message and "data.skip_bad_images=true" in message and "\n" not in message
    skipping = folder_data(root, "stream", mean=[0.5] * 3, std=[0.25] * 3, num_workers=workers, val_size=0,
                           skip_bad_images=True)
    loader = train_loader(skipping, 0)
    with caplog.at_level(logging.WARNING, logger="labkit.data.stream"):
        batches = epochs(loader, 2)
    assert sum(len(b.targets) for b in batches) == 2 * 12 and loader.skipped == 1  # distinct files
    assert "skipped 1 unreadable image(s)" in caplog.text and str(bad) in caplog.text


def test_auto_streams_what_does_not_fit(folder, monkeypatch, caplog):
    decoded = 36 * 3 * 12 * 12  # train/ and test/ as uint8
    monkeypatch.setattr(stream_module, "available_memory", lambda device: 2 * decoded - 1)
    with caplog.at_level(logging.INFO, logger="labkit.data.imagefolder"):
        assert folder_data(folder, "auto").storage_used == "stream"
        assert folder_data(folder, "auto", memory_share=1.0).storage_used == "memory"
    assert "streamed from the files" in caplog.text and "more than 50% of the" in caplog.text
    assert "decoded into memory" in caplog.text and "within 100% of the" in caplog.text


def test_streamed_statistics_come_from_a_seeded_sample(folder, monkeypatch):
    monkeypatch.setattr("labkit.data.imagefolder.STATISTICS_SAMPLE", 10)
    first, again = folder_data(folder, "stream"), folder_data(folder, "stream")
    assert first.mean == again.mean and first.mean != folder_data(folder, "memory").mean


@pytest.mark.slow
def test_train_py_streams_an_image_folder(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    (folder / "train" / "b" / "zz-broken.jpg").write_bytes(b"not a jpeg")
    result = run_cli("train.py", "data=imagefolder", f"data.path={folder}", "data.storage=stream",
                     "data.num_classes=3", "data.image_size=12", "data.val_size=4", "data.batch_size=8",
                     "data.num_workers=1", "data.skip_bad_images=true", "model=mlp", "trainer.epochs=1",
                     "trainer.device=cpu", f"paths.log_dir={tmp_path}", "logger=none")
    assert result.returncode == 0, result.stderr[-2000:]
    said = result.stdout + result.stderr
    assert "streamed from the files by DataLoader workers (data.storage=stream)" in said
    summary = json.loads(next((tmp_path / "train" / "runs").glob("*/summary.json")).read_text())
    assert summary["status"] == "completed" and summary["train_size"] == 24  # the broken file counts here
    assert summary["skipped_images"] == 1  # the broken file, counted once over train/val/test
    assert summary["data_fingerprint"].startswith("files:")

"""MNIST and Fashion-MNIST from their raw IDX files under ``<root>/<Folder>/raw/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from labkit.data.base import ImageDataModule, RawSplits
from labkit.data.download import torchvision_download
from labkit.data.idx import read_idx
from labkit.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_targets": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_targets": "t10k-labels-idx1-ubyte",
}

# torchvision dataset class that knows how to download each folder.
_DOWNLOADERS = {"MNIST": "MNIST", "FashionMNIST": "FashionMNIST"}


def find_idx_file(raw_dir: Path, stem: str) -> Path | None:
    """The IDX file ``stem`` in ``raw_dir``, plain or gzipped, or None when absent."""
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def download_raw(folder: str, root: Path) -> None:
    """Download through torchvision, then move the finished ``.gz`` files into ``raw/``."""
    raw_dir = root / folder / "raw"
    with torchvision_download(_DOWNLOADERS[folder], root, raw_dir,
                              "copy the four IDX files there by hand") as tmp:
        raw_dir.mkdir(parents=True, exist_ok=True)
        for path in (tmp / folder / "raw").glob("*.gz"):
            shutil.move(str(path), raw_dir / path.name)


class MNISTFamily(ImageDataModule):
    """MNIST-format datasets: 28x28 grey images, ten classes."""

    def __init__(self, folder: str = "MNIST", **kwargs) -> None:
        super().__init__(**kwargs)
        if folder not in _DOWNLOADERS:
            raise DataError(f"unknown MNIST-format folder {folder!r}; known: {sorted(_DOWNLOADERS)}")
        self.folder = folder
        self.name = folder

    @property
    def raw_dir(self) -> Path:
        return self.root / self.folder / "raw"

    def missing_files(self) -> list[str]:
        return [stem for stem in FILES.values() if find_idx_file(self.raw_dir, stem) is None]

    def download_files(self) -> None:
        download_raw(self.folder, self.root)

    def load_raw(self) -> RawSplits:
        self.require_files(self.raw_dir, f"{self.folder}/raw", " (.gz or plain IDX)")
        tensors = {
            key: read_idx(find_idx_file(self.raw_dir, stem)) for key, stem in FILES.items()
        }
        for split in ("train", "test"):
            images, targets = tensors[f"{split}_images"], tensors[f"{split}_targets"]
            if images.dim() != 3 or len(images) != len(targets):
                raise DataError(
                    f"{self.raw_dir}: {split} images {tuple(images.shape)} and labels "
                    f"{tuple(targets.shape)} do not match"
                )
            tensors[f"{split}_images"] = images.unsqueeze(1)  # [N, 1, 28, 28]
            tensors[f"{split}_targets"] = targets.to(torch.int64)
        return RawSplits(**tensors)

"""Shared shape of every in-memory image dataset: load uint8 tensors, split, serve loaders."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from labkit.data.augment import CropFlip, build_augment
from labkit.data.loader import Augment, TensorLoader
from labkit.data.transfer import to_device
from labkit.errors import ConfigError, DataError


@dataclass
class RawSplits:
    """The official train and test sets as uint8 ``[N, C, H, W]`` images and int64 labels."""

    train_images: torch.Tensor
    train_targets: torch.Tensor
    test_images: torch.Tensor
    test_targets: torch.Tensor

    def fingerprint(self) -> str:
        """sha256 of the decoded images and labels, shapes included: the data a run actually
        read, whatever the files' format (IDX, CIFAR batches, JPEGs) or where they were. About
        0.4 s for CIFAR-10's 184 MB on this project's CPU, once per run."""
        digest = hashlib.sha256()
        for tensor in (self.train_images, self.train_targets, self.test_images, self.test_targets):
            flat = tensor.detach().cpu().contiguous()
            digest.update(f"{tuple(flat.shape)}:{flat.dtype};".encode())
            digest.update(memoryview(flat.reshape(-1).view(torch.uint8).numpy()))
        return digest.hexdigest()[:16]


class ImageDataModule:
    """Base class: a subclass only implements :meth:`load_raw`.

    The validation set is carved out of the official training set with a fixed seed
    (``split_seed``), so every run of a study validates on the same images whatever its
    training seed; the official test set is only used for the final evaluation.
    """

    name = "images"

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        val_size: int = 5000,
        train_size: int | None = None,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        download: bool = False,
        split_seed: int = 0,
        drop_last: bool = False,
        augment: Augment | Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.val_size = int(val_size)
        self.train_size = None if train_size is None else int(train_size)
        self.mean = list(mean)
        self.std = list(std)
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.download = bool(download)
        self.split_seed = int(split_seed)
        self.drop_last = bool(drop_last)
        # a config node such as {crop_padding: 4, flip: true} becomes the batched CropFlip
        self.augment = build_augment(augment, self.mean)
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.device = torch.device("cpu")
        self.fingerprint: str | None = None  # of the decoded data, set by setup()

    def load_raw(self) -> RawSplits:
        raise NotImplementedError

    def missing_files(self) -> list[str]:
        """Files this dataset needs that are not on disk (none for generated data)."""
        return []

    def download_files(self) -> None:
        raise DataError(f"{self.name} cannot be downloaded")

    def require_files(self, folder: Path, relative: str, kinds: str = "", alternative: str = "") -> None:
        """Download what is missing when ``data.download`` allows it, else stop with one line
        (``alternative``: another way to the same data, e.g. a local copy in another format)."""
        if self.missing_files() and self.download:
            self.download_files()
        missing = self.missing_files()
        if missing:
            raise DataError(
                f"{self.name} not found: {folder} lacks {', '.join(missing)}{kinds}. Set "
                f"data.download=true to fetch them, or data.root=DIR where DIR/{relative}/ holds them"
                f"{alternative}"
            )

    def setup(self, device: torch.device | str = "cpu") -> None:
        """Decode the data once, split off validation, and move everything to ``device``."""
        raw = self.load_raw()
        self.fingerprint = raw.fingerprint()  # provenance: which data this run read
        train_idx, val_idx = self.split_indices(len(raw.train_images))
        self.device = torch.device(device)

        def put(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return to_device(images.contiguous(), self.device), to_device(targets.long(), self.device)

        self._splits = {
            "train": put(raw.train_images[train_idx], raw.train_targets[train_idx]),
            "val": put(raw.train_images[val_idx], raw.train_targets[val_idx]),
            "test": put(raw.test_images, raw.test_targets),
        }

    def split_indices(self, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices into the official training set of the training and the validation images: a
        permutation drawn from ``split_seed`` (the same for every reader of the same files)."""
        if not 0 <= self.val_size < n_train:
            raise ConfigError(
                f"data.val_size={self.val_size} is invalid: the {self.name} training set has "
                f"{n_train} images, so val_size must be in [0, {n_train - 1}]"
            )
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(n_train, generator=generator)
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        if self.train_size is not None:
            # a quick check or a data-size study: a seeded random part of what is left to train on
            if not 1 <= self.train_size <= len(train_idx):
                raise ConfigError(
                    f"data.train_size={self.train_size} is invalid: {len(train_idx)} {self.name} "
                    f"images are left for training after val_size={self.val_size}, so train_size "
                    f"must be in [1, {len(train_idx)}] (or null for all of them)"
                )
            train_idx = train_idx[: self.train_size]
        return train_idx, val_idx

    def split_size(self, split: str) -> int:
        return len(self._get(split)[0])

    def _get(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self._splits is None:
            raise RuntimeError("call setup() before asking for loaders")
        return self._splits[split]

    def loader(
        self,
        split: str,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        augment_generator: torch.Generator | None = None,
    ) -> TensorLoader:
        """A loader over ``split`` (train: shuffled, augmented; val/test: in order, plain).

        With ``world_size > 1`` each rank gets its slice of every (global) batch.
        """
        images, targets = self._get(split)
        return TensorLoader(images, targets, **self.loader_options(split, generator, rank, world_size,
                                                                  augment_generator))

    def loader_options(self, split: str, generator: torch.Generator | None, rank: int, world_size: int,
                       augment_generator: torch.Generator | None) -> dict[str, Any]:
        """What a loader over ``split`` is told, whatever holds the images (memory or files)."""
        train = split == "train"
        augment = self.augment
        if isinstance(augment, CropFlip):  # cutout fills the mean, which setup() may have computed
            augment = augment.with_mean(self.mean)
        return {
            "batch_size": self.batch_size if train else self.eval_batch_size,
            "mean": self.mean,
            "std": self.std,
            "shuffle": train,
            "drop_last": self.drop_last and train,
            "augment": augment if train else None,
            "generator": generator,
            "rank": rank,
            "world_size": world_size,
            "augment_generator": augment_generator,
        }

"""CIFAR-10 and CIFAR-100 from their python-pickle batches under ``data.root``.

The layout is the one of the official archives (and of torchvision):
``cifar-10-batches-py/{data_batch_1..5,test_batch}`` and ``cifar-100-python/{train,test}``,
each a pickled dict whose ``data`` is ``[N, 3072]`` uint8 (1024 red, 1024 green, 1024 blue
values per image, row-major) and whose labels are ``labels`` (CIFAR-10) or ``fine_labels``
(CIFAR-100). The files are pickles, and ``pickle.load`` runs whatever code a crafted file
names; they are read with :class:`BatchUnpickler`, which builds only what the official batches
hold (dicts, lists, strings, bytes, numbers and numpy arrays) and refuses any other global.
"""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labkit.data.base import ImageDataModule, RawSplits
from labkit.data.download import torchvision_download
from labkit.errors import DataError


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    torchvision_class: str


LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                           ("test_batch",), "labels", 10, "CIFAR10"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "fine_labels", 100, "CIFAR100"),
}


# The only globals an official batch (or one re-pickled by numpy 1 or 2) refers to: the numpy
# array and dtype constructors. Anything else (os.system, builtins.eval, ...) is refused.
_ALLOWED_GLOBALS = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"),
     ("_codecs", "encode")}  # bytes pickled by Python 3 at protocol 2 (as torch's weights_only allows)


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :data:`_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR batch holds "
                                         f"(refused: loading it could run code)")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickle batch as uint8 images ``[N, 3, 32, 32]`` and int64 labels."""
    try:
        with open(path, "rb") as fh:
            entry: dict[Any, Any] = BatchUnpickler(fh, encoding="bytes").load()
        # The official files were written by Python 2: their keys are bytes.
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError,
            AttributeError) as exc:
        raise DataError(f"{path} is not a readable CIFAR batch ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{path}: data {data.shape} and {label_key} {labels.shape} are not "
                        f"[N, 3072] images with N labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def download_cifar(layout: CifarLayout, root: Path) -> None:
    """Download through torchvision, then move the finished folder into place."""
    target = root / layout.folder
    offline = (", or read the JPEG copy with data=cifar10_jpeg data.root=<folder holding CIFAR-10-JPEG/>"
               if layout.folder.startswith("cifar-10-") else "")
    with torchvision_download(layout.torchvision_class, root, target,
                              f"unpack the python version of the archive there by hand{offline}") as tmp:
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(tmp / layout.folder), target)


class CIFAR(ImageDataModule):
    """CIFAR-10 (``variant=cifar10``) or CIFAR-100 (``variant=cifar100``, fine labels)."""

    def __init__(self, variant: str = "cifar10", **kwargs) -> None:
        if variant not in LAYOUTS:
            raise DataError(f"unknown CIFAR variant {variant!r}; known: {sorted(LAYOUTS)}")
        kwargs.setdefault("num_classes", LAYOUTS[variant].num_classes)
        kwargs.setdefault("in_channels", 3)
        kwargs.setdefault("image_size", 32)
        super().__init__(**kwargs)
        self.layout = LAYOUTS[variant]
        self.name = variant

    @property
    def folder(self) -> Path:
        return self.root / self.layout.folder

    def missing_files(self) -> list[str]:
        names = self.layout.train_files + self.layout.test_files
        return [name for name in names if not (self.folder / name).is_file()]

    def download_files(self) -> None:
        download_cifar(self.layout, self.root)

    def load_raw(self) -> RawSplits:
        jpeg = (", or read the JPEG copy: data=cifar10_jpeg data.root=<folder holding CIFAR-10-JPEG/>"
                if self.layout.folder.startswith("cifar-10-") else "")
        self.require_files(self.folder, self.layout.folder, alternative=jpeg)
        if self.num_classes != self.layout.num_classes or self.in_channels != 3 or self.image_size != 32:
            raise DataError(f"{self.name} has {self.layout.num_classes} classes of 3x32x32 images; the "
                            f"config says num_classes={self.num_classes}, in_channels={self.in_channels}, "
                            f"image_size={self.image_size}")
        splits = {}
        for split, names in (("train", self.layout.train_files), ("test", self.layout.test_files)):
            parts = [read_cifar_batch(self.folder / name, self.layout.label_key) for name in names]
            images, targets = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            if len(targets) and (targets.min() < 0 or targets.max() >= self.num_classes):
                raise DataError(f"{self.folder}: {split} labels outside [0, {self.num_classes - 1}]")
            splits[f"{split}_images"], splits[f"{split}_targets"] = images, targets
        return RawSplits(**splits)

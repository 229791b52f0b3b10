"""Any folder of ``train/<class>/*`` and ``test/<class>/*`` images, decoded once and cached.

The first run decodes every jpg/png (optionally resizing it to ``image_size``) into one uint8
tensor and saves it under ``cache_dir``; later runs load that file instead of decoding again.
The cache records a fingerprint of the folder (each image's relative path, size and
modification time), so adding, removing, replacing or touching an image rebuilds it.

Normalisation uses the data set's own per-channel mean and std: typed in the config
(``data.mean`` / ``data.std``), or, when left null, computed from the decoded training images
(all of ``train/``, before the validation split, as published statistics are) and kept in the
cache next to the images, so they are computed once. The run's log says which were used.

``storage`` says where the decoded images live: ``memory`` (the above), ``stream`` (the files
are read and decoded by DataLoader workers every epoch, :mod:`labkit.data.stream`; statistics
left null are then computed from a seeded sample of ``STATISTICS_SAMPLE`` training images), or
``auto``: memory when the decoded set fits ``memory_share`` of the device's available memory.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from labkit.data.base import ImageDataModule, RawSplits
from labkit.data.stream import ImageFiles, StreamLoader, choose_storage, wrong_size
from labkit.errors import DataError
from labkit.io import atomic_write

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_FORMAT = "labkit-imagefolder-v1"
STATISTICS_SAMPLE = 1000  # streamed folders: training images the statistics are computed from


def list_images(split_dir: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """Sorted class names (sub-folders) and ``(file, class)`` pairs of ``split_dir``."""
    if not split_dir.is_dir():
        raise DataError(f"image folder split not found: {split_dir} (expected <class>/<image> inside)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [
        (path, name)
        for name in classes
        for path in sorted((split_dir / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    return classes, files


def fingerprint(root: Path, files: list[Path], settings: str) -> str:
    """A hash of every image's relative path, size and mtime, and of the decode settings."""
    digest = hashlib.sha256(settings.encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_image(path: Path, channels: int, size: int, resize: bool) -> torch.Tensor:
    """One image as uint8 ``[channels, size, size]``, resized (bilinear, antialiased) if ``resize``.

    PIL is fine here: decoding happens once per image, before training, and is then cached.
    """
    try:
        with Image.open(path) as file:
            image = file.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot decode {path} ({exc})") from exc
    if image.size != (size, size):
        if not resize:
            raise DataError(wrong_size(path, *image.size, size))
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels[None] if channels == 1 else pixels.permute(2, 0, 1).contiguous()


class ImageFolder(ImageDataModule):
    """Images under ``path/train/<class>/`` and ``path/test/<class>/`` (classes sorted by name).

    ``num_classes`` must equal the number of class folders in ``train/`` (the model is built
    from it); test classes must be among the training classes.
    """

    def __init__(self, path: str, cache_dir: str | None = None, resize: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 storage: str = "memory", memory_share: float = 0.5, num_workers: int = 0,
                 prefetch_factor: int = 2, skip_bad_images: bool = False, **kwargs) -> None:
        kwargs.setdefault("root", path)
        super().__init__(mean=mean if mean is not None else (), std=std if std is not None else (), **kwargs)
        #: the statistics typed in the config; None: computed from the training images by load_raw
        self.given = {"mean": None if mean is None else list(mean), "std": None if std is None else list(std)}
        if self.in_channels not in (1, 3):
            raise DataError(f"data.in_channels={self.in_channels}: image folders are read as grey (1) "
                            f"or RGB (3)")
        self.path = Path(path).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.resize = bool(resize)
        self.name = f"imagefolder:{self.path.name}"
        self.classes: list[str] = []
        self.storage, self.memory_share = storage, float(memory_share)
        self.stream_options = {"num_workers": int(num_workers), "prefetch_factor": int(prefetch_factor),
                               "skip_bad_images": bool(skip_bad_images)}
        self.storage_used: str | None = None  # memory or stream, decided by setup()
        self._streams: dict[str, tuple[ImageFiles, torch.Tensor]] | None = None
        self._listing: tuple[list[str], list[tuple[Path, str]], list[tuple[Path, str]]] | None = None

    def cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(f"{self.path.resolve()}".encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.path.name}-{key}-{self.in_channels}x{self.image_size}.pt"

    def list_folder(self) -> tuple[list[str], list[tuple[Path, str]], list[tuple[Path, str]]]:
        """Class names and the ``(file, class)`` pairs of train/ and test/, checked (listed once)."""
        if self._listing is not None:
            return self._listing
        if not self.path.is_dir() and self.path.name == "CIFAR-10-JPEG":  # data=cifar10_jpeg
            raise DataError(f"data.path={str(self.path)!r} is not a folder: use the official CIFAR-10 "
                            f"batches (data=cifar10 data.download=true), or data.root=<a folder holding "
                            f"CIFAR-10-JPEG/>")
        if not self.path.is_dir():
            raise DataError(f"data.path={str(self.path)!r} is not a folder; expected "
                            f"train/<class>/*.png|jpg and test/<class>/*.png|jpg inside")
        classes, train_files = list_images(self.path / "train")
        test_classes, test_files = list_images(self.path / "test")
        if len(classes) != self.num_classes:
            raise DataError(f"{self.path / 'train'} has {len(classes)} class folders but "
                            f"data.num_classes={self.num_classes}; set data.num_classes={len(classes)}")
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"{self.path / 'test'} has classes not in train/: {', '.join(unknown)}")
        if not train_files or not test_files:
            raise DataError(f"{self.path}: train/ and test/ must each hold at least one jpg or png image")
        self.classes = classes
        self._listing = classes, train_files, test_files
        return self._listing

    def load_raw(self) -> RawSplits:
        classes, train_files, test_files = self.list_folder()
        settings = f"{CACHE_FORMAT}|{self.in_channels}|{self.image_size}|{self.resize}|{classes}"
        stamp = fingerprint(self.path, [p for p, _ in train_files + test_files], settings)
        cached = self._read_cache(stamp)
        if cached is not None:
            raw, stats = cached
            if stats is None and None in self.given.values():  # a cache from before statistics
                stats = channel_statistics(raw.train_images)   # were kept: add them, once
                self._write_cache(stamp, raw, stats)
        else:
            index = {name: i for i, name in enumerate(classes)}
            splits = {}
            for split, files in (("train", train_files), ("test", test_files)):
                splits[f"{split}_images"] = torch.stack(
                    [decode_image(p, self.in_channels, self.image_size, self.resize) for p, _ in files]
                )
                splits[f"{split}_targets"] = torch.tensor([index[c] for _, c in files], dtype=torch.int64)
            raw = RawSplits(**splits)
            stats = channel_statistics(raw.train_images)
            self._write_cache(stamp, raw, stats)
        self._use_statistics(stats, len(raw.train_images))
        return raw

    def setup(self, device: torch.device | str = "cpu") -> None:
        """Decode into memory (see :class:`ImageDataModule`) or prepare to stream the files, as
        ``storage`` says; the log says which and why."""
        device = torch.device(device)
        classes, train_files, test_files = self.list_folder()
        decoded = (len(train_files) + len(test_files)) * self.in_channels * self.image_size ** 2
        self.storage_used, reason = choose_storage(self.storage, decoded, device, self.memory_share)
        log.info("%s: %s (%s)", self.name, "decoded into memory" if self.storage_used == "memory"
                 else "streamed from the files by DataLoader workers", reason)
        if self.storage_used == "memory":
            super().setup(device)
            return
        self.device = device
        paths = [str(p) for p, _ in train_files]
        index = {name: i for i, name in enumerate(classes)}
        targets = torch.tensor([index[c] for _, c in train_files], dtype=torch.int64)
        train_idx, val_idx = self.split_indices(len(paths))
        settings = f"{CACHE_FORMAT}|{self.in_channels}|{self.image_size}|{self.resize}|{classes}"
        # provenance: the files' paths, sizes and times (the decoded pixels are never all in hand)
        self.fingerprint = "files:" + fingerprint(self.path, [p for p, _ in train_files + test_files],
                                                  settings)[:16]
        stats = None if None not in self.given.values() else self._sample_statistics(paths)
        self._use_statistics(stats, min(len(paths), STATISTICS_SAMPLE), sample="a seeded sample of")

        def files(chosen: list[str], labels: torch.Tensor) -> tuple[ImageFiles, torch.Tensor]:
            return ImageFiles(chosen, self.in_channels, self.image_size, self.resize), labels

        self._streams = {
            "train": files([paths[i] for i in train_idx.tolist()], targets[train_idx]),
            "val": files([paths[i] for i in val_idx.tolist()], targets[val_idx]),
            "test": files([str(p) for p, _ in test_files],
                          torch.tensor([index[c] for _, c in test_files], dtype=torch.int64)),
        }

    def _sample_statistics(self, paths: list[str]) -> dict[str, list[float]]:
        """Per-channel statistics of a seeded sample of the training images (all of train/)."""
        chosen = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))[:STATISTICS_SAMPLE]
        sample = ImageFiles([paths[i] for i in chosen.tolist()], self.in_channels, self.image_size,
                            self.resize)
        images = []
        for i in range(len(sample)):
            image, _, error = sample[i]
            if error is not None and not (error[1] and self.stream_options["skip_bad_images"]):
                raise DataError(error[0] + ("; set data.skip_bad_images=true to skip such files"
                                            if error[1] else ""))
            if image is not None:
                images.append(image)
        if not images:
            raise DataError(f"{self.path}: no readable training image to compute data.mean / data.std from")
        return channel_statistics(torch.stack(images))

    def loader(self, split: str, generator: torch.Generator | None = None, rank: int = 0,
               world_size: int = 1, augment_generator: torch.Generator | None = None):
        """The in-memory loader, or a :class:`StreamLoader` with the same batches."""
        if self._streams is None:
            return super().loader(split, generator, rank, world_size, augment_generator)
        files, targets = self._streams[split]
        options = self.loader_options(split, generator, rank, world_size, augment_generator)
        return StreamLoader(files, targets, device=self.device, **self.stream_options, **options)

    def split_size(self, split: str) -> int:
        if self._streams is not None:
            return len(self._streams[split][0])
        return super().split_size(split)

    def _get(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self._streams is not None:
            raise DataError(f"{self.name} is streamed (data.storage=stream): this command needs the "
                            f"images in memory; set data.storage=memory")
        return super()._get(split)

    def _use_statistics(self, computed: dict[str, list[float]] | None, n_images: int,
                        sample: str = "the") -> None:
        """Normalise with the typed statistics where given, else the computed ones; say which."""
        for key in ("mean", "std"):
            value = self.given[key]
            if value is None:
                assert computed is not None  # load_raw computes them whenever one is not given
                value = computed[key]
            setattr(self, key, value)
        computed_from = f"computed from {sample} {n_images} training images"
        mean_from, std_from = (f"data.{key}" if self.given[key] is not None else computed_from
                               for key in ("mean", "std"))
        if mean_from == std_from:
            log.info("%s normalisation: mean %s, std %s (%s)", self.name, _rounded(self.mean),
                     _rounded(self.std), mean_from)
        else:
            log.info("%s normalisation: mean %s (%s), std %s (%s)", self.name, _rounded(self.mean),
                     mean_from, _rounded(self.std), std_from)

    def _read_cache(self, stamp: str) -> tuple[RawSplits, dict[str, list[float]] | None] | None:
        path = self.cache_file()
        if path is None or not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable image cache %s (%s)", path, exc)
            return None
        if state.get("format") != CACHE_FORMAT or state.get("fingerprint") != stamp:
            log.info("image folder changed since %s was written; decoding again", path)
            return None
        log.info("loaded decoded images from %s", path)
        keys = ("train_images", "train_targets", "test_images", "test_targets")
        return RawSplits(*(state[k] for k in keys)), state.get("statistics")

    def _write_cache(self, stamp: str, raw: RawSplits, stats: dict[str, list[float]] | None) -> None:
        path = self.cache_file()
        if path is None:
            return
        state = {"format": CACHE_FORMAT, "fingerprint": stamp, **vars(raw), "statistics": stats}
        atomic_write(path, lambda tmp: torch.save(state, tmp))  # never half a cache
        log.info("cached decoded images and their statistics in %s", path)


def _rounded(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def channel_statistics(images: torch.Tensor) -> dict[str, list[float]]:
    """Per-channel mean and std (over every pixel of every image) of uint8 ``[N, C, H, W]``
    images scaled to [0, 1], as ``data.mean`` / ``data.std`` expect them. Summed in float64 in
    chunks (no float copy of the whole set): 1.6 s for CIFAR-10's 50,000 training images on this
    project's shared CPU, once per cache.
    A channel that never changes gets std 1 (nothing to scale) rather than a division by 0."""
    channels = images.shape[1]
    chunk = max(1, 2**22 // max(images[0].numel(), 1))  # about 32 MB of float64 at a time
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = images.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return {"mean": [round(v, 6) for v in mean.tolist()], "std": [round(v, 6) for v in std.tolist()]}

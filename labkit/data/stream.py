"""Image folders that do not fit in memory: files read and decoded by DataLoader workers.

Worker processes of torch's ``DataLoader`` read each file and decode it with
``torchvision.io.decode_image`` (resized to ``image_size`` when ``resize`` is on); the batches
arrive as uint8 tensors, are copied to the training device and then augmented and normalised
there by the same code as the in-memory path (:class:`~labkit.data.loader.EpochLoader`). The
order of every epoch is planned by the loader from its seeded generator, exactly as
:class:`~labkit.data.loader.TensorLoader` draws it, and handed to the ``DataLoader`` through
:class:`PlannedBatches`, so the same seed gives the same batches in both paths, each rank of a
data-parallel job reads only its part of every batch, and a resumed run starts at its batch.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import resize as resize_image

from labkit.data.loader import Batch, EpochLoader
from labkit.errors import DataError

log = logging.getLogger(__name__)
# torchvision 0.29 announces that its decoders will move to TorchCodec (not a labkit dependency);
# they are the ones the issue names and work as before, so the per-call notice is kept quiet
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

#: a sample the worker could not turn into an image: its index, the one-line reason, and whether
#: it is a bad file (skippable with data.skip_bad_images) rather than a setting that fits no file
Failure = tuple[int, str, bool]


class ImageFiles(Dataset):
    """The images of one split as files: item ``i`` is ``(uint8 [C, size, size], i, None)``, or
    ``(None, i, (reason, skippable))`` when the file cannot be read or decoded (the loader decides whether
    that stops the run or is skipped, so a bad file never kills a worker process)."""

    def __init__(self, files: Sequence[str | Path], channels: int, size: int, resize: bool) -> None:
        # fixed-width bytes in one numpy array, not a list of str: forked workers then share
        # the pages instead of copying them as Python touches each object's reference count
        self.files = np.array([os.fsencode(str(f)) for f in files], dtype=np.bytes_)
        self.channels, self.size, self.resize = int(channels), int(size), bool(resize)
        self.mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> str:
        return os.fsdecode(self.files[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, tuple[str, bool] | None]:
        path = self.path(i)
        try:
            data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
            image = decode_image(data, mode=self.mode)
        except (OSError, RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return None, i, (f"cannot decode {path} ({reason})", True)
        if tuple(image.shape[-2:]) != (self.size, self.size):
            if not self.resize:
                return None, i, (wrong_size(path, image.shape[-1], image.shape[-2], self.size), False)
            image = resize_image(image, [self.size, self.size], antialias=True)
        return image, i, None


def wrong_size(path: str | Path, width: int, height: int, size: int) -> str:
    """The one line for an image of another size than ``data.image_size`` with ``data.resize=false``
    (both paths say it alike)."""
    return (f"{path} is {width}x{height}, not {size}x{size}; set data.resize=true or data.image_size "
            f"to the images' size")


def collate(samples: list[tuple[torch.Tensor | None, int, tuple[str, bool] | None]]
            ) -> tuple[torch.Tensor | None, torch.Tensor, list[Failure]]:
    """Stack the decoded images of a batch; the ones that failed travel as ``(index, reason, skippable)``."""
    good = [(image, i) for image, i, _ in samples if image is not None]
    failed = [(i, *error) for image, i, error in samples if image is None]
    images = torch.stack([image for image, _ in good]) if good else None
    return images, torch.tensor([i for _, i in good], dtype=torch.int64), failed


class PlannedBatches(Sampler[list[int]]):
    """A batch sampler that hands out the batches its loader planned for the current epoch.

    The plan (this rank's indices of every batch still to come, see
    :meth:`EpochLoader.epoch_batches`) is drawn in the main process before the epoch starts, so
    workers prefetching ahead never draw random numbers and a resumed epoch is simply a plan
    that starts at a later batch.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        yield from list(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamLoader(EpochLoader):
    """A loader with :class:`~labkit.data.loader.TensorLoader`'s interface and batches over
    files decoded by ``num_workers`` persistent worker processes (0: in the main process).

    ``skip_bad_images``: an unreadable file is left out of its batch and counted (``skipped``:
    the distinct files, however many epochs meet them) instead of stopping the run with a
    :class:`DataError` that names it.
    """

    def __init__(self, files: ImageFiles, targets: torch.Tensor, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str = "cpu", num_workers: int = 0,
                 prefetch_factor: int = 2, skip_bad_images: bool = False, **kwargs: Any) -> None:
        if len(files) != len(targets):
            raise ValueError("files and targets differ in length")
        super().__init__(len(files), files.channels, device, batch_size, mean, std, **kwargs)
        self.files = files
        self.targets = targets.to(self.device)
        self.skip_bad_images = bool(skip_bad_images)
        self.bad_files: set[int] = set()  # unreadable files left out so far (with skip_bad_images)
        self.plan = PlannedBatches()
        workers = int(num_workers)
        self.data_loader = DataLoader(
            files, batch_sampler=self.plan, collate_fn=collate, num_workers=workers,
            # the training loader keeps its workers from epoch to epoch; validation and test
            # loaders start theirs for each pass, so at most two pools exist at a time
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0 and self.shuffle,
            prefetch_factor=int(prefetch_factor) if workers > 0 else None,
        )

    def iter_from(self, start_batch: int, generator_state: torch.Tensor | None = None) -> Iterator[Batch]:
        # the plan is drawn before the first batch, as TensorLoader draws its permutation
        self.plan.batches = [index.tolist() for index in self.epoch_batches(start_batch, generator_state)]
        for images, index, failed in self.data_loader:
            if failed:
                self._handle(failed)
            if images is None:
                raise DataError(f"every image of a batch of {self.files.path(failed[0][0])} and "
                                f"{len(failed) - 1} others is unreadable; check the folder")
            index = index.to(self.device, non_blocking=True)
            images = images.to(self.device, non_blocking=True)
            yield self.finish(images, self.targets[index], index)

    def _handle(self, failed: list[Failure]) -> None:
        """Stop with one line naming the first bad file, or count and skip them."""
        for _, reason, skippable in failed:
            if not (skippable and self.skip_bad_images):
                hint = "; set data.skip_bad_images=true to skip such files" if skippable else ""
                raise DataError(reason + hint)
        self.bad_files.update(i for i, _, _ in failed)
        log.warning("skipped %d unreadable image(s), %d so far in this loader: %s", len(failed),
                    self.skipped, failed[0][1])

    @property
    def skipped(self) -> int:
        """How many distinct files were left out as unreadable (``skip_bad_images``)."""
        return len(self.bad_files)

    def images_at(self, index: torch.Tensor) -> torch.Tensor:
        """The uint8 images at ``index``, decoded here (explain.py's few test images); an
        unreadable one stops with its one line whatever ``skip_bad_images`` says."""
        decoded = [self.files[int(i)] for i in index.tolist()]
        for image, _, error in decoded:
            if image is None:
                raise DataError(error[0])
        return torch.stack([image for image, _, _ in decoded]).to(self.device)


# -- memory or stream -------------------------------------------------------------------------
def available_memory(device: torch.device) -> int:
    """Bytes the training device has free: CUDA's free memory, or the host's available RAM
    (``MemAvailable`` in /proc/meminfo; free pages where that file does not exist)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_storage(setting: str, decoded_bytes: int, device: torch.device, share: float) -> tuple[str, str]:
    """``memory`` or ``stream`` for ``data.storage=setting``, and the reason in words.

    ``auto`` keeps the data in memory when the decoded images fit in ``share`` of what the
    training device has available, and streams them otherwise.
    """
    if setting != "auto":
        return setting, f"data.storage={setting}"
    free = available_memory(device)
    fits = decoded_bytes <= share * free
    where = "GPU memory free" if device.type == "cuda" else "RAM available"
    reason = (f"data.storage=auto: the decoded images take {decoded_bytes / 1e6:,.0f} MB, "
              f"{'within' if fits else 'more than'} {share:.0%} of the {free / 1e6:,.0f} MB of {where}")
    return ("memory" if fits else "stream"), reason

"""Batched augmentation of uint8 image batches on their own device: random crop, flip, cutout.

Crop and flip are index arithmetic: each output pixel ``(y, x)`` of sample ``n`` reads the
zero-padded input at ``(y + dy[n], x' + dx[n])``, where ``x'`` is ``x`` or ``W - 1 - x`` for a
flipped sample. So one gather does both for the whole batch, with no per-sample Python and no
PIL, and the random offsets come from the loader's ``torch.Generator`` (same seed, same
batches). Cutout is one broadcast mask per batch, drawn after crop and flip from the same
generator, so a run without it gets exactly the batches it got before cutout existed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from labkit.config.schema import AUGMENT
from labkit.data.loader import Augment


class CropFlip:
    """Random crop of the original size from a ``crop_padding``-pixel zero-padded image, and a
    horizontal flip of each sample with probability 0.5 (``flip``), as in the standard CIFAR
    recipe (``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``); then, with ``cutout > 0``,
    one ``cutout`` x ``cutout`` square per image set to the data set's mean colour.

    Cutout (DeVries & Taylor 2017, "Improved Regularization of Convolutional Neural Networks with
    Cutout") follows the authors' ``util/cutout.py`` (github.com/uoguelph-mlrg/Cutout, commit
    287f934): the centre is uniform over the image and the square is clipped at the border, so a
    patch near an edge covers less. Their rows are ``[y - L//2, y + L//2)``; here they are
    ``[y - L//2, y - L//2 + L)``, the same for the even sizes they use (16 on CIFAR-10, 8 on
    CIFAR-100) and ``L`` rather than ``L - 1`` pixels for an odd size. They zero the normalised
    tensor, i.e. fill with the mean colour; labkit augments uint8 images before normalising, so
    the fill is ``round(255 * mean)`` per channel (``mean``: the data set's ``data.mean``; None
    fills 0).
    """

    def __init__(self, crop_padding: int = 0, flip: bool = False, cutout: int = 0,
                 mean: Sequence[float] | None = None) -> None:
        AUGMENT.check({"crop_padding": crop_padding, "flip": flip, "cutout": cutout}, "data.augment")
        self.crop_padding = crop_padding
        self.flip = flip
        self.cutout = cutout
        self.mean = None if mean is None else [float(m) for m in mean]

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.cutout > 0

    @property
    def fill(self) -> list[int]:
        """The cutout colour in uint8 steps, one value per channel (or one for all)."""
        return [round(255 * m) for m in self.mean] if self.mean else [0]

    def with_mean(self, mean: Sequence[float] | None) -> CropFlip:
        """The same augmentation with cutout filling ``mean`` (an image folder's statistics are
        only known once its images are decoded, after the augment was built)."""
        return CropFlip(self.crop_padding, self.flip, self.cutout, mean)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``images`` ``[N, C, H, W]`` (any dtype); a new tensor of that shape (``images``
        itself when everything is off)."""
        if self.crop_padding > 0 or self.flip:
            images = self._crop_flip(images, generator)
        if self.cutout > 0:  # its numbers come after crop/flip's: cutout=0 leaves those unchanged
            images = self._cut(images, generator)
        return images

    def _crop_flip(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, channels, height, width = images.shape
        device, pad = images.device, self.crop_padding
        rows = torch.arange(height, device=device).expand(n, height)
        cols = torch.arange(width, device=device).expand(n, width)
        if self.flip:
            flipped = torch.rand(n, 1, device=device, generator=generator) < 0.5
            cols = torch.where(flipped, width - 1 - cols, cols)
        if pad:
            images = F.pad(images, (pad, pad, pad, pad))
            dy = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
            dx = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
            rows, cols = rows + dy, cols + dx
        # One gather with four broadcast index tensors: the result is a plain contiguous
        # [N, C, H, W] tensor (a permuted view would carry odd strides when C == 1).
        sample = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(channels, device=device)[None, :, None, None]
        return images[sample, channel, rows[:, None, :, None], cols[:, None, None, :]]

    def _cut(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Set one clipped ``cutout``-pixel square per image, centred uniformly, to the fill."""
        n, _, height, width = images.shape
        device, size = images.device, self.cutout
        centre_y = torch.randint(0, height, (n, 1), device=device, generator=generator)
        centre_x = torch.randint(0, width, (n, 1), device=device, generator=generator)
        top, left = centre_y - size // 2, centre_x - size // 2
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        inside_rows = (rows >= top) & (rows < top + size)  # [N, H]; off-image rows never match
        inside_cols = (cols >= left) & (cols < left + size)  # [N, W]
        inside = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
        fill = torch.tensor(self.fill, dtype=images.dtype, device=device).reshape(1, -1, 1, 1)
        return torch.where(inside, fill, images)

    def __repr__(self) -> str:
        return f"CropFlip(crop_padding={self.crop_padding}, flip={self.flip}, cutout={self.cutout})"


def build_augment(spec: Augment | Mapping[str, Any] | None,
                  mean: Sequence[float] | None = None) -> Augment | None:
    """The augment callable for a data config's ``augment`` node.

    ``None`` (or a node with everything off) means no augmentation; a mapping gives
    :class:`CropFlip` its keys (``mean``: the data set's, cutout's fill); a callable is used as
    it is.
    """
    if spec is None:
        return None
    if callable(spec):
        return spec
    AUGMENT.check(dict(spec) if isinstance(spec, Mapping) else spec, "data.augment")
    augment = CropFlip(**dict(spec), mean=mean)
    return augment if augment.active else None

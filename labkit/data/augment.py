"""Batched augmentation of uint8 image batches on their own device: random crop and flip.

Both are index arithmetic: each output pixel ``(y, x)`` of sample ``n`` reads the zero-padded
input at ``(y + dy[n], x' + dx[n])``, where ``x'`` is ``x`` or ``W - 1 - x`` for a flipped
sample. So one gather does both for the whole batch, with no per-sample Python and no PIL,
and the random offsets come from the loader's ``torch.Generator`` (same seed, same batches).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from labkit.config.schema import AUGMENT
from labkit.data.loader import Augment


class CropFlip:
    """Random crop of the original size from a ``crop_padding``-pixel zero-padded image, and a
    horizontal flip of each sample with probability 0.5 (``flip``), as in the standard CIFAR
    recipe (``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``)."""

    def __init__(self, crop_padding: int = 0, flip: bool = False) -> None:
        AUGMENT.check({"crop_padding": crop_padding, "flip": flip}, "data.augment")
        self.crop_padding = crop_padding
        self.flip = flip

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``images`` ``[N, C, H, W]`` (any dtype); returns a new tensor of that shape."""
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

    def __repr__(self) -> str:
        return f"CropFlip(crop_padding={self.crop_padding}, flip={self.flip})"


def build_augment(spec: Augment | Mapping[str, Any] | None) -> Augment | None:
    """The augment callable for a data config's ``augment`` node.

    ``None`` (or a node with everything off) means no augmentation; a mapping gives
    :class:`CropFlip` its keys; a callable is used as it is.
    """
    if spec is None:
        return None
    if callable(spec):
        return spec
    AUGMENT.check(dict(spec) if isinstance(spec, Mapping) else spec, "data.augment")
    augment = CropFlip(**dict(spec))
    return augment if augment.active else None

"""Cutout (``data.augment.cutout``): one mean-coloured square per image, batched, after crop/flip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labkit.data import CropFlip, SyntheticImages, build_augment
from labkit.errors import ConfigError

MEAN = (0.5, 0.25, 1.0)
FILL = torch.tensor([128, 64, 255], dtype=torch.uint8)  # round(255 * mean)


def constant(n: int = 64, size: int = 16, value: int = 7) -> torch.Tensor:
    return torch.full((n, 3, size, size), value, dtype=torch.uint8)


def expected_masks(n: int, height: int, width: int, length: int, seed: int) -> torch.Tensor:
    """The authors' rule (uoguelph-mlrg/Cutout util/cutout.py), one image at a time: a centre
    uniform over the image, the square [c - L//2, c - L//2 + L) clipped at the border."""
    generator = torch.Generator().manual_seed(seed)
    ys = torch.randint(0, height, (n, 1), generator=generator)
    xs = torch.randint(0, width, (n, 1), generator=generator)
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    for i in range(n):
        y1, x1 = int(ys[i]) - length // 2, int(xs[i]) - length // 2
        masks[i, max(y1, 0): max(y1 + length, 0), max(x1, 0): max(x1 + length, 0)] = True
    return masks


def old_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """CropFlip as it was before cutout, written per sample: the reference for cutout=0."""
    n, _, height, width = images.shape
    still = torch.zeros(n, 1, dtype=torch.long)
    flipped = torch.rand(n, 1, generator=generator) < 0.5 if flip else still.bool()
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) if pad else still
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) if pad else still
    padded = F.pad(images, (pad, pad, pad, pad))
    out = []
    for i in range(n):
        crop = padded[i, :, int(dy[i]): int(dy[i]) + height, int(dx[i]): int(dx[i]) + width]
        out.append(crop.flip(-1) if flipped[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("length", [4, 5, 8])
def test_patch_is_the_clipped_square_filled_with_the_mean_colour(length):
    images = constant()
    out = CropFlip(cutout=length, mean=MEAN)(images, torch.Generator().manual_seed(0))
    masks = expected_masks(64, 16, 16, length, seed=0)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    cut = (out != 7).all(dim=1)  # a pixel is cut in all channels at once
    assert torch.equal(cut, masks)
    assert torch.equal(out.permute(0, 2, 3, 1)[cut], FILL.expand(int(cut.sum()), 3))
    sizes = cut.sum(dim=(1, 2))
    assert sizes.max() == length * length  # an interior centre: exactly L x L (odd L too)
    assert sizes.min() < length * length  # a centre near the border: clipped, as the authors do
    assert (sizes > 0).all()  # the centre itself is always inside the image


def test_every_image_gets_its_own_patch_and_a_seed_repeats_it():
    images = constant(n=128, size=32)
    augment = CropFlip(crop_padding=4, flip=True, cutout=8, mean=MEAN)
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    c = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    centres = {tuple(torch.nonzero(m == 128).float().mean(0).round().tolist()) for m in a[:, 0]}
    assert len(centres) > 60  # 128 images, 32 x 32 centres: almost all differ


@pytest.mark.parametrize("pad,flip", [(0, False), (0, True), (3, False), (3, True)])
def test_cutout_zero_gives_the_batches_of_before(pad, flip):
    images = torch.randint(0, 256, (32, 3, 10, 10), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    new, old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = CropFlip(pad, flip, cutout=0, mean=MEAN)(images, new)
    if pad or flip:
        assert torch.equal(out, old_crop_flip(images, pad, flip, old))
    assert torch.equal(new.get_state(), old.get_state())  # the next batch draws the same numbers
    # with cutout the crops and flips are still those (its numbers are drawn after theirs):
    # what differs from the cutout=0 batch lies within one 4 x 4 square per image
    cut = CropFlip(pad, flip, cutout=4, mean=MEAN)(images, torch.Generator().manual_seed(5))
    for differs in (cut != out).any(dim=1):
        rows, cols = differs.any(dim=1).nonzero(), differs.any(dim=0).nonzero()
        assert len(rows) and rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4


def test_the_loader_fills_with_the_data_sets_mean_and_only_trains_with_it():
    mean = [0.2, 0.4, 0.6]
    data = SyntheticImages(n_train=40, n_test=10, val_size=10, in_channels=3, image_size=8, batch_size=40,
                           mean=mean, std=[0.5, 0.5, 0.5],
                           augment={"crop_padding": 0, "flip": False, "cutout": 4})
    data.setup()
    assert data.augment.fill == [51, 102, 153]
    batch = next(iter(data.loader("train", generator=torch.Generator().manual_seed(0))))
    fill_inputs = (torch.tensor([51, 102, 153]) / 255 - torch.tensor(mean)) / 0.5  # normalised fill
    filled = torch.isclose(batch.inputs, fill_inputs.reshape(1, 3, 1, 1), atol=1e-6).all(dim=1)
    assert (filled.sum(dim=(1, 2)) >= 1).all()
    plain = next(iter(data.loader("val")))
    assert not torch.isclose(plain.inputs, fill_inputs.reshape(1, 3, 1, 1), atol=1e-6).all(dim=1).any()


def test_cutout_config_values():
    assert build_augment({"crop_padding": 0, "flip": False, "cutout": 0}) is None
    assert build_augment({"crop_padding": 0, "flip": False, "cutout": 8}).cutout == 8
    assert build_augment({"crop_padding": 2, "flip": False}).cutout == 0  # absent: off
    assert CropFlip(cutout=3).fill == [0]  # no mean given: black
    assert CropFlip(cutout=3, mean=[0.5]).with_mean([0.1, 0.2, 0.3]).fill == [26, 51, 76]
    for bad in ({"cutout": -1}, {"cutout": 2.5}, {"cutout": True}):
        with pytest.raises(ConfigError):
            build_augment(bad)

"""A generated, learnable image dataset of any shape: for tests, smoke runs and benchmarks.

Each class has a smooth prototype image (low-resolution noise, upsampled, mirrored so that a
horizontal flip keeps it); a sample is its class prototype plus pixel noise. A CNN learns it in
an epoch or two, augmented or not, and nothing is read from disk or downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labkit.data.base import ImageDataModule, RawSplits
from labkit.errors import ConfigError


def make_prototypes(num_classes: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``[num_classes, C, size, size]`` float prototypes in [0, 255], symmetric left to right."""
    coarse = torch.rand(num_classes, channels, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    smooth = (smooth + smooth.flip(-1)) / 2
    low, high = smooth.amin(dim=(1, 2, 3), keepdim=True), smooth.amax(dim=(1, 2, 3), keepdim=True)
    return 255 * (smooth - low) / (high - low).clamp_min(1e-6)


def make_samples(prototypes: torch.Tensor, n: int, noise: float, generator: torch.Generator,
                 chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy uint8 copies of random prototypes and their labels (built in chunks)."""
    labels = torch.randint(0, len(prototypes), (n,), generator=generator)
    images = torch.empty((n, *prototypes.shape[1:]), dtype=torch.uint8)
    for start in range(0, n, chunk):
        part = labels[start : start + chunk]
        pixels = prototypes[part] + noise * torch.randn((len(part), *prototypes.shape[1:]),
                                                        generator=generator)
        images[start : start + chunk] = pixels.round_().clamp_(0, 255).to(torch.uint8)
    return images, labels


class SyntheticImages(ImageDataModule):
    """``n_train`` + ``n_test`` generated images of shape ``[in_channels, image_size, image_size]``.

    The same ``seed`` gives the same images; ``noise`` (pixel standard deviation, 0-255 scale)
    sets how hard the task is.
    """

    def __init__(self, n_train: int = 10000, n_test: int = 2000, noise: float = 60.0, seed: int = 0,
                 root: str = ".", **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        if n_train < 1 or n_test < 1 or noise < 0:
            raise ConfigError(f"data.n_train={n_train}, data.n_test={n_test}, data.noise={noise}: "
                              f"expected n_train, n_test >= 1 and noise >= 0")
        self.n_train, self.n_test, self.noise, self.seed = int(n_train), int(n_test), float(noise), int(seed)
        self.name = "synthetic"

    def load_raw(self) -> RawSplits:
        generator = torch.Generator().manual_seed(self.seed)
        prototypes = make_prototypes(self.num_classes, self.in_channels, self.image_size, generator)
        train_images, train_targets = make_samples(prototypes, self.n_train, self.noise, generator)
        test_images, test_targets = make_samples(prototypes, self.n_test, self.noise, generator)
        return RawSplits(train_images, train_targets, test_images, test_targets)

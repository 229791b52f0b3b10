"""ConvPoolNet: a wide, shallow VGG-style CNN, the network family of the airbench CIFAR-10 runs.

A stem convolution, then one *group* per entry of ``widths``: ``conv3x3 -> max-pool 2 -> BN ->
act -> conv3x3 -> BN -> act``, so each group halves the resolution (32-16-8-4 on CIFAR); global
average pooling and one linear layer. No skips: at three groups a plain network trains well,
and wide-and-shallow is what runs fastest per unit of accuracy on small images (Jordan 2024,
"94 % on CIFAR-10 in 3.29 seconds on a single GPU"). It shares FlexibleCNN's base class
(:class:`~labkit.models.cnn.PooledConvNet`: ``blocks``, ``forward_features``, ``forward_head``)
so the gradient monitor, distillation and class activation maps work on it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from labkit.models.cnn import PooledConvNet, conv3x3, norm2d
from labkit.models.layers import make_activation


class ConvGroup(nn.Sequential):
    """``conv -> max-pool -> norm -> act -> conv -> norm -> act``: pooling right after the first
    convolution makes the second one (and the norm) 4x cheaper."""

    def __init__(self, in_channels: int, width: int, norm: bool, activation: str) -> None:
        super().__init__(
            conv3x3(in_channels, width, bias=not norm), nn.MaxPool2d(2), norm2d(width, norm),
            make_activation(activation),
            conv3x3(width, width, bias=not norm), norm2d(width, norm), make_activation(activation),
        )


class ConvPoolNet(PooledConvNet):
    """Stem, ``len(widths)`` pooling conv groups, global average pool, linear classifier."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 256, 256),
        stem_width: int = 32,
        norm: bool = True,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths) or stem_width < 1:
            raise ValueError(f"widths must be positive integers and stem_width >= 1, got {widths}, "
                             f"{stem_width}")
        self.stem = nn.Sequential(conv3x3(in_channels, stem_width, bias=not norm),
                                  norm2d(stem_width, norm), make_activation(activation))
        channels = [stem_width, *widths]
        self.blocks = nn.ModuleList(ConvGroup(c_in, c_out, norm, activation)
                                    for c_in, c_out in zip(channels, widths, strict=False))
        self.num_features = widths[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

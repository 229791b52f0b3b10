"""FlexibleCNN: a ResNet-style network of four stages, with skips and BatchNorm as switches.

The block counts per stage, the block type, the width and the two switches a study varies
(``residual``, ``norm``) are constructor arguments; nothing is read from a global config.
All blocks sit in one flat ``blocks`` list in depth order (stage boundaries are where a block
changes stride or width), so per-block measurements index the network the same way as for
FlexibleMLP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from labkit.models.layers import make_activation


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)


def norm2d(channels: int, enabled: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


class _ResidualBlock(nn.Module):
    """What both block types share: an optional skip around ``self.branch``, then activation.

    With ``residual=True`` the block computes ``act(branch(x) + shortcut(x))``, where the
    shortcut is the identity, or a strided 1x1 projection when the shape changes. With
    ``residual=False`` there is no shortcut at all (no projection either), so the plain
    network has exactly the same branch layers and only lacks the skips.
    """

    expansion = 1
    branch: nn.Sequential

    def __init__(self, in_channels: int, out_channels: int, stride: int, residual: bool, norm: bool,
                 activation: str) -> None:
        super().__init__()
        self.residual = residual
        self.shortcut: nn.Module | None = None
        if residual:
            if stride != 1 or in_channels != out_channels:
                self.shortcut = nn.Sequential(
                    conv1x1(in_channels, out_channels, stride, bias=not norm),
                    norm2d(out_channels, norm),
                )
            else:
                self.shortcut = nn.Identity()
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)

    def zero_init_last(self) -> None:
        """Zero the last norm's scale so the block starts as its shortcut (Goyal et al. 2017)."""
        last_norm = [m for m in self.branch if isinstance(m, nn.BatchNorm2d)]
        if last_norm:
            nn.init.zeros_(last_norm[-1].weight)

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34): ``conv-norm-act-conv-norm``, output ``width`` channels."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, residual: bool = True,
                 norm: bool = True, activation: str = "relu") -> None:
        out_channels = width * self.expansion
        super().__init__(in_channels, out_channels, stride, residual, norm, activation)
        self.branch = nn.Sequential(
            conv3x3(in_channels, width, stride, bias=not norm), norm2d(width, norm),
            make_activation(activation),
            conv3x3(width, out_channels, bias=not norm), norm2d(out_channels, norm),
        )


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * width`` channels (ResNet-50 style)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, residual: bool = True,
                 norm: bool = True, activation: str = "relu") -> None:
        out_channels = width * self.expansion
        super().__init__(in_channels, out_channels, stride, residual, norm, activation)
        self.branch = nn.Sequential(
            conv1x1(in_channels, width, bias=not norm), norm2d(width, norm), make_activation(activation),
            conv3x3(width, width, stride, bias=not norm), norm2d(width, norm), make_activation(activation),
            conv1x1(width, out_channels, bias=not norm), norm2d(out_channels, norm),
        )


class PooledConvNet(nn.Module):
    """What every labkit CNN shares: ``stem``, then ``blocks`` in depth order, global average
    pooling and one linear ``head``. The split into ``forward_features`` / ``forward_head`` is
    what the gradient monitor, distillation and class activation maps rely on."""

    stem: nn.Module
    blocks: nn.ModuleList
    pool: nn.Module
    head: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's feature map ``[N, num_features, h, w]``."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the feature map; return the pooled vector (``pre_logits``) or the logits."""
        x = torch.flatten(self.pool(x), 1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- declared feature points (distillation reads them by name; no hooks, no surgery) -------
    def stage_ends(self) -> list[int]:
        """Index in ``blocks`` of each stage's last block (here every block ends a stage)."""
        return list(range(len(self.blocks)))

    def feature_points(self) -> list[str]:
        """The names :meth:`forward_with_features` accepts: ``stem``, ``stage1``.. (each stage's
        output map) and ``pre_logits`` (the pooled vector the head reads)."""
        return ["stem", *(f"stage{i + 1}" for i in range(len(self.stage_ends()))), "pre_logits"]

    def forward_with_features(self, x: torch.Tensor, points: Sequence[str]
                              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits, and the outputs at the named feature points (computed in the same pass)."""
        wanted, features = set(points), {}
        x = self.stem(x)
        if "stem" in wanted:
            features["stem"] = x
        ends = {block: f"stage{i + 1}" for i, block in enumerate(self.stage_ends())}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if ends.get(i) in wanted:
                features[ends[i]] = x
        pooled = self.forward_head(x, pre_logits=True)
        if "pre_logits" in wanted:
            features["pre_logits"] = pooled
        return self.head(pooled), features


BLOCKS: dict[str, type[_ResidualBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_blocks(block: type[_ResidualBlock], layers: Sequence[int], width: int, in_channels: int,
                residual: bool, norm: bool, activation: str) -> list[_ResidualBlock]:
    """All blocks of the four stages in depth order.

    Stage ``i`` has ``layers[i]`` blocks of base width ``width * 2**i``; every stage after the
    first halves the resolution in its first block. A pure function of its arguments (unlike a
    method that mutates the running channel count as it goes).
    """
    blocks: list[_ResidualBlock] = []
    channels = in_channels
    for stage, count in enumerate(layers):
        stage_width = width * 2**stage
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(block(channels, stage_width, stride, residual, norm, activation))
            channels = stage_width * block.expansion
    return blocks


class FlexibleCNN(PooledConvNet):
    """Stem, four stages of residual (or plain) blocks, global average pool, linear classifier.

    The stem is one 3x3 convolution (stride ``stem_stride``, no max-pool), which keeps enough
    resolution for 28x28 grey and 32x32 colour images alike: with stride 1 the stages run at
    28-14-7-4 or 32-16-8-4 pixels. ``layers=[2,2,2,2]`` with basic blocks and ``width=64`` is
    the usual CIFAR ResNet-18.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        layers: Sequence[int] = (2, 2, 2, 2),
        block: str = "basic",
        width: int = 64,
        residual: bool = True,
        norm: bool = True,
        activation: str = "relu",
        stem_stride: int = 1,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        layers = [int(n) for n in layers]
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive block counts, got {layers}")
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose one of {sorted(BLOCKS)}")
        if width < 1 or stem_stride < 1:
            raise ValueError(f"width and stem_stride must be >= 1, got {width}, {stem_stride}")
        block_cls = BLOCKS[block]
        self.layers = layers
        self.stem = nn.Sequential(
            conv3x3(in_channels, width, stem_stride, bias=not norm), norm2d(width, norm),
            make_activation(activation),
        )
        self.blocks = nn.ModuleList(
            make_blocks(block_cls, layers, width, width, residual, norm, activation)
        )
        self.num_features = width * 2**3 * block_cls.expansion
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual and residual:
            for b in self.blocks:
                b.zero_init_last()

    def stage_ends(self) -> list[int]:
        """Index in ``blocks`` of the last block of each of the four stages."""
        return [sum(self.layers[: stage + 1]) - 1 for stage in range(len(self.layers))]

    @property
    def stage_of_block(self) -> list[int]:
        """Stage index (0-3) of each entry of ``blocks``."""
        return [stage for stage, count in enumerate(self.layers) for _ in range(count)]

"""FlexibleMLP: a stack of equal-width hidden blocks with optional skips and normalisation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from labkit.models.layers import make_activation, make_norm_1d


class MLPBlock(nn.Module):
    """One hidden layer: ``Linear -> [Norm] -> Activation -> [Dropout]``.

    The norm and activation come in as layer factories (``norm_layer(features)``,
    ``act_layer()``), the way timm passes layers, so the network states each choice once.

    With ``residual=True`` the block returns ``x + f(x)``: the identity path lets gradients
    reach early layers undiminished, which is the whole point of the depth studies. A skip
    needs equal input and output widths, so the first (input) block never has one.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        residual: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = None,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if residual and in_features != out_features:
            raise ValueError("a residual block needs in_features == out_features")
        self.residual = residual
        norm = norm_layer(out_features) if norm_layer is not None else nn.Identity()
        # BatchNorm subtracts the batch mean, which cancels a bias: the Linear goes without one
        self.linear = nn.Linear(in_features, out_features, bias=not isinstance(norm, nn.BatchNorm1d))
        self.norm = norm
        self.act = act_layer()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.act(self.norm(self.linear(x))))
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class FlexibleMLP(nn.Module):
    """``depth`` hidden blocks of ``width`` units, then a linear classifier.

    Block 0 maps the flattened input to ``width``; blocks 1..depth-1 map width to width and
    carry the skip connection when ``residual`` is on. So ``depth=2, width=512`` is the
    classic 784-512-512-10 network, and ``depth=20, residual=True`` has 19 skips.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        depth: int = 2,
        width: int = 512,
        residual: bool = False,
        norm: bool = False,
        norm_type: str = "batch",
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth} width={width}")
        in_features = math.prod(int(d) for d in input_shape)
        norm_layer = partial(make_norm_1d, norm_type) if norm else None
        act_layer = partial(make_activation, activation)
        self.flatten = nn.Flatten()
        self.blocks = nn.ModuleList(
            MLPBlock(in_features if i == 0 else width, width, residual and i > 0, norm_layer, act_layer,
                     dropout)
            for i in range(depth)
        )
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def feature_points(self) -> list[str]:
        """The names :meth:`forward_with_features` accepts: ``block1``.. (each hidden block's
        output vector) and ``pre_logits`` (the last block's, which the head reads)."""
        return [*(f"block{i + 1}" for i in range(len(self.blocks))), "pre_logits"]

    def forward_with_features(self, x: torch.Tensor, points: Sequence[str]
                              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits, and the outputs at the named feature points (computed in the same pass)."""
        wanted, features = set(points), {}
        x = self.flatten(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if f"block{i + 1}" in wanted:
                features[f"block{i + 1}"] = x
        if "pre_logits" in wanted:
            features["pre_logits"] = x
        return self.head(x), features

"""What every distillation method shares: the outputs it compares, its config checks, its label."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from labkit.errors import ConfigError

# (teacher point, student point) pairs and the shapes (without the batch dimension) at each point
Pairs = list[tuple[str, str]]
Shapes = Mapping[str, Sequence[int]]


@dataclass
class Outputs:
    """One model's logits and its outputs at named feature points, for the same batch."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


def check_number(method: str, key: str, value: Any, low: float = 0.0, high: float = math.inf,
                 low_open: bool = False) -> float:
    """``value`` as a float, or :class:`ConfigError` naming ``distill.<method>.<key>``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        if high != math.inf:
            bound = f"in [{low:g}, {high:g}]"
        raise ConfigError(f"distill.{method}.{key}={value!r} is invalid: expected a number {bound}")
    return float(value)


class DistillMethod(nn.Module):
    """A distillation loss term. Logit methods compare ``Outputs.logits``; feature methods also
    read ``features`` at their ``pairs`` of points and may own trainable modules (connectors),
    which then train with the student."""

    name: ClassVar[str]
    uses_features: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.pairs: Pairs = []

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def progress(self) -> dict[str, Any]:
        """Training-time state that is not a tensor of the model (e.g. a warm-up's step count);
        the engine's checkpoint carries it so that a resumed run continues it."""
        return {}

    def restore_progress(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`progress` returned."""

    def settings(self) -> dict[str, Any]:
        """The hyper-parameters this term was built with (for summaries and labels)."""
        return {}

    def describe(self) -> str:
        """``fitnet (weight=100, stage2)``: the name and settings, for tables and plots."""
        parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.settings().items()]
        if self.pairs:
            parts.append(",".join(t if t == s else f"{t}:{s}" for t, s in self.pairs))
        return f"{self.name} ({', '.join(parts)})" if parts else self.name


def flat(features: torch.Tensor) -> torch.Tensor:
    """``[N, ...]`` -> ``[N, D]`` in fp32 (relations and regressions are computed in fp32)."""
    return features.float().reshape(features.shape[0], -1)

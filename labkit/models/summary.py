"""A short, model-agnostic description of a network for the console, W&B and summary.json."""

from __future__ import annotations

from typing import Any

from torch import nn

from labkit.models.layers import count_parameters


def describe_model(model: nn.Module) -> dict[str, Any]:
    """Class name, parameter count and the switches a study varies (skips, norm layers)."""
    skips = sum(
        1 for name, m in model.named_modules() if name and getattr(m, "residual", None) is True
    )
    norms = sum(
        1 for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm)
    )
    return {
        "model": type(model).__name__,
        "params": count_parameters(model),
        "skip_connections": skips,
        "norm_layers": norms,
    }

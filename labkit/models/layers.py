"""Activation and normalisation factories shared by the model families."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=False),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}

NORMS_1D: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def make_norm_1d(name: str, features: int) -> nn.Module:
    try:
        return NORMS_1D[name](features)
    except KeyError:
        raise ValueError(f"unknown norm_type {name!r}; choose one of {sorted(NORMS_1D)}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, trainable or not (what a checkpoint stores)."""
    return sum(p.numel() for p in model.parameters())

"""Which teacher and student feature points a feature method compares.

Models declare their points (``feature_points()``: FlexibleCNN / ConvPoolNet ``stem``,
``stage1``.., ``pre_logits``; FlexibleMLP ``block1``.., ``pre_logits``) and compute them in the
forward pass (``forward_with_features``). A method names them: ``stage2`` pairs the teacher's
``stage2`` with the student's, ``stage3:stage4`` the teacher's ``stage3`` with the student's
``stage4``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from labkit.distill.methods.base import Pairs, Shapes
from labkit.errors import ConfigError


def declared_points(model: nn.Module) -> list[str]:
    """The model's feature points, or [] when it declares none."""
    points = getattr(model, "feature_points", None)
    return list(points()) if callable(points) else []


@torch.no_grad()
def probe_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Shape (without the batch dimension) of every declared point, from one eval-mode pass on
    ``example`` (eval mode: BatchNorm statistics are not touched)."""
    points = declared_points(model)
    if not points:
        return {}
    was_training = model.training
    model.eval()
    try:
        _, features = model.forward_with_features(example, points)
    finally:
        model.train(was_training)
    return {name: tuple(value.shape[1:]) for name, value in features.items()}


def shared_stages(teacher: Shapes, student: Shapes) -> list[str]:
    """The stages (CNN ``stage<i>``, MLP ``block<i>``) both models declare, in the student's order."""
    return [name for name in student if name.startswith(("stage", "block")) and name in teacher]


def resolve_pairs(method: str, requested: Sequence[str] | None, default: Sequence[str],
                  teacher: Shapes, student: Shapes, teacher_name: str, student_name: str) -> Pairs:
    """``requested`` (or ``default``) as (teacher point, student point) pairs that both models
    declare; a :class:`ConfigError` naming the available points otherwise."""
    for shapes, name in ((teacher, teacher_name), (student, student_name)):
        if not shapes:
            raise ConfigError(f"distill.method={method} cannot apply: {name} declares no feature points "
                              f"(feature_points / forward_with_features)")
    entries = list(requested) if requested else list(default)
    if not entries:
        raise ConfigError(f"distill.method={method}: no feature layers to compare "
                          f"(set distill.{method}.feature_layers)")
    pairs = []
    for entry in entries:
        t_point, _, s_point = str(entry).partition(":")
        s_point = s_point or t_point
        for point, shapes, name in ((t_point, teacher, teacher_name), (s_point, student, student_name)):
            if point not in shapes:
                raise ConfigError(f"distill.feature_layers: {name} has no feature point {point!r}; it "
                                  f"declares {', '.join(shapes)}")
        pairs.append((t_point, s_point))
    return pairs

"""FitNet (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): regress a student feature
map, through a learned connector, onto the teacher's ("hint") at the same point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.distill.methods.base import DistillMethod, Outputs, Pairs, Shapes, check_number
from labkit.distill.methods.points import shared_stages
from labkit.errors import ConfigError


class Connector(nn.Module):
    """Student shape -> teacher shape. Maps: a convolution whose kernel ``1 + h_s - h_t`` makes
    the resolutions match when the student's is larger (Romero et al.'s regressor), a 1x1 one
    followed by bilinear up-sampling when it is smaller; then BatchNorm (as RepDistiller's
    ConvReg). Vectors: a linear layer. Trained with the student, never deployed with it."""

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        super().__init__()
        self.out_size = tuple(teacher_shape[1:])
        if len(student_shape) == 1:
            self.proj: nn.Module = nn.Linear(student_shape[0], teacher_shape[0])
            self.upsample = False
            return
        (c_s, h_s, w_s), (c_t, h_t, w_t) = student_shape, teacher_shape
        self.upsample = h_s < h_t or w_s < w_t
        kernel = (1, 1) if self.upsample else (1 + h_s - h_t, 1 + w_s - w_t)
        self.proj = nn.Sequential(nn.Conv2d(c_s, c_t, kernel, bias=False), nn.BatchNorm2d(c_t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if self.upsample:
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        return x


def fitnet_loss(projected: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the connector's output and the teacher's features (the
    paper's ``1/2 ||u_h - r(v_g)||^2`` as a mean over elements, as its reference code does)."""
    return F.mse_loss(projected.float(), teacher_features.detach().float())


class FitNet(DistillMethod):
    name = "fitnet"
    uses_features = True

    def __init__(self, pairs: Pairs, teacher_shapes: Shapes, student_shapes: Shapes,
                 student_name: str = "student", weight: float = 100.0) -> None:
        super().__init__()
        self.weight = check_number(self.name, "weight", weight)
        self.pairs = list(pairs)
        connectors = {}
        for t_point, s_point in self.pairs:
            t_shape, s_shape = tuple(teacher_shapes[t_point]), tuple(student_shapes[s_point])
            if len(t_shape) != len(s_shape) or len(t_shape) not in (1, 3):
                raise ConfigError(f"distill.method=fitnet cannot pair teacher {t_point} {list(t_shape)} "
                                  f"with {student_name} {s_point} {list(s_shape)}: both must be feature "
                                  f"maps [C, H, W] or both vectors [D]")
            connectors[f"{t_point}__{s_point}"] = Connector(s_shape, t_shape)
        self.connectors = nn.ModuleDict(connectors)

    @staticmethod
    def default_layers(teacher_shapes: Shapes, student_shapes: Shapes) -> list[str]:
        """The middle stage the two models share (the paper's hint is a middle layer)."""
        shared = shared_stages(teacher_shapes, student_shapes)
        return [shared[(len(shared) - 1) // 2]] if shared else []

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor) -> torch.Tensor:
        total = student.logits.new_zeros((), dtype=torch.float32)
        for t_point, s_point in self.pairs:
            projected = self.connectors[f"{t_point}__{s_point}"](student.features[s_point])
            total = total + fitnet_loss(projected, teacher.features[t_point])
        return self.weight * total

    def settings(self) -> dict[str, Any]:
        return {"weight": self.weight}

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
    """Student shape -> teacher shape, as the references' regressor ``ConvReg`` (RepDistiller
    ``models/util.py:131-154``, mdistiller ``mdistiller/distillers/_common.py:6-30``):
    conv -> BatchNorm -> ReLU, the conv chosen by the resolutions: a 3x3 stride-2 conv when the
    student's map is twice the teacher's, a 4x4 stride-2 transposed conv when it is half, a conv
    of kernel ``1 + h_s - h_t`` when it is larger by another amount (Romero et al.'s regressor).
    A student map smaller by a factor other than 2 (the references refuse it) gets a 1x1 conv and
    bilinear up-sampling. Vectors: linear -> ReLU (RepDistiller's ``Regress``, ``util.py:157``).
    The ReLU (``relu=True``, the references' ``use_relu``) matches post-ReLU teacher features;
    turn it off for a teacher whose features can be negative (another activation).
    Trained with the student, never deployed with it."""

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int], relu: bool = True) -> None:
        super().__init__()
        self.out_size = tuple(teacher_shape[1:])
        self.upsample = False
        act = [nn.ReLU()] if relu else []
        if len(student_shape) == 1:
            self.proj: nn.Module = nn.Sequential(nn.Linear(student_shape[0], teacher_shape[0]), *act)
            return
        (c_s, h_s, w_s), (c_t, h_t, w_t) = student_shape, teacher_shape
        if (h_s, w_s) == (2 * h_t, 2 * w_t):
            conv: nn.Module = nn.Conv2d(c_s, c_t, 3, stride=2, padding=1)
        elif (2 * h_s, 2 * w_s) == (h_t, w_t):
            conv = nn.ConvTranspose2d(c_s, c_t, 4, stride=2, padding=1)
        elif h_s >= h_t and w_s >= w_t:
            conv = nn.Conv2d(c_s, c_t, (1 + h_s - h_t, 1 + w_s - w_t))
        else:
            conv, self.upsample = nn.Conv2d(c_s, c_t, 1), True
        self.proj = nn.Sequential(conv, nn.BatchNorm2d(c_t), *act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:  # up-sample before BN and ReLU, so the output keeps their range
            conv, rest = self.proj[0], self.proj[1:]
            x = F.interpolate(conv(x), size=self.out_size, mode="bilinear", align_corners=False)
            return rest(x)
        return self.proj(x)


def fitnet_loss(projected: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the connector's output and the teacher's features, a mean over
    all elements: mdistiller ``mdistiller/distillers/FitNet.py:41`` (``F.mse_loss(f_s, f_t)``) and
    RepDistiller ``distiller_zoo/FitNet.py:10,13`` (``nn.MSELoss()``), times the weight 100."""
    return F.mse_loss(projected.float(), teacher_features.detach().float())


class FitNet(DistillMethod):
    name = "fitnet"
    uses_features = True

    def __init__(self, pairs: Pairs, teacher_shapes: Shapes, student_shapes: Shapes,
                 student_name: str = "student", weight: float = 100.0, connector_relu: bool = True) -> None:
        super().__init__()
        self.weight = check_number(self.name, "weight", weight)
        if not isinstance(connector_relu, bool):
            raise ConfigError(f"distill.fitnet.connector_relu={connector_relu!r} is invalid: expected true "
                              f"or false")
        self.connector_relu = connector_relu
        self.pairs = list(pairs)
        connectors = {}
        for t_point, s_point in self.pairs:
            t_shape, s_shape = tuple(teacher_shapes[t_point]), tuple(student_shapes[s_point])
            if len(t_shape) != len(s_shape) or len(t_shape) not in (1, 3):
                raise ConfigError(f"distill.method=fitnet cannot pair teacher {t_point} {list(t_shape)} "
                                  f"with {student_name} {s_point} {list(s_shape)}: both must be feature "
                                  f"maps [C, H, W] or both vectors [D]")
            connectors[f"{t_point}__{s_point}"] = Connector(s_shape, t_shape, connector_relu)
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
        # the ReLU is the references' default: named only when it is off, to keep labels short
        return {"weight": self.weight, **({} if self.connector_relu else {"connector_relu": False})}

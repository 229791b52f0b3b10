"""AT (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"): match the students'
spatial attention maps (channel mean of squared activations, L2-normalised) to the teacher's."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from labkit.distill.methods.base import DistillMethod, Outputs, Pairs, Shapes, check_number
from labkit.distill.methods.points import shared_stages
from labkit.errors import ConfigError


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, H*W]``: mean over channels of ``A^2``, L2-normalised per sample.
    The channel count drops out, so teacher and student may differ in width. As
    attention-transfer ``utils.py:19`` (``F.normalize(x.pow(2).mean(1).view(x.size(0), -1))``)."""
    return F.normalize(features.float().pow(2).mean(dim=1).flatten(1), dim=1)


def at_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """``sum_j mean((Q_s^j - Q_t^j)^2)`` over the compared points, Q the normalised maps; no 1/2.

    The reference code's arithmetic: attention-transfer ``utils.py:23``
    (``(at(x) - at(y)).pow(2).mean()``) summed over groups and times beta in ``cifar.py:223``
    (``opt.beta * sum(loss_groups)``); mdistiller ``mdistiller/distillers/AT.py:17,21`` and
    RepDistiller ``distiller_zoo/AT.py:26`` do the same. When the maps differ in size, the larger
    *features* are average-pooled to the smaller's size before squaring (``AT.py:12-16`` in
    both)."""
    total = student_maps[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_maps, teacher_maps, strict=True):
        size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
        s = s if tuple(s.shape[-2:]) == size else F.adaptive_avg_pool2d(s.float(), size)
        t = t.detach()
        t = t if tuple(t.shape[-2:]) == size else F.adaptive_avg_pool2d(t.float(), size)
        total = total + (attention_map(s) - attention_map(t)).pow(2).mean()
    return total


class AT(DistillMethod):
    name = "at"
    uses_features = True

    def __init__(self, pairs: Pairs, teacher_shapes: Shapes, student_shapes: Shapes,
                 student_name: str = "student", weight: float = 1000.0) -> None:
        super().__init__()
        self.weight = check_number(self.name, "weight", weight)
        self.pairs = list(pairs)
        for t_point, s_point in self.pairs:
            for point, shape, who in ((t_point, teacher_shapes[t_point], "the teacher"),
                                      (s_point, student_shapes[s_point], student_name)):
                if len(shape) != 3:
                    raise ConfigError(f"distill.method=at cannot apply: {who}'s {point} is a vector "
                                      f"{list(shape)}, not a feature map [C, H, W]; attention transfer "
                                      f"needs spatial maps (use a CNN, or fitnet / rkd)")

    @staticmethod
    def default_layers(teacher_shapes: Shapes, student_shapes: Shapes) -> list[str]:
        """Every stage the two models share (the paper compares each group's output)."""
        return shared_stages(teacher_shapes, student_shapes)

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor) -> torch.Tensor:
        s_maps = [student.features[s] for _, s in self.pairs]
        t_maps = [teacher.features[t] for t, _ in self.pairs]
        return self.weight * at_loss(s_maps, t_maps)

    def settings(self) -> dict[str, Any]:
        return {"weight": self.weight}

"""The distillation loss of Hinton, Vinyals & Dean (2015), with alpha weighing the soft term."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from labkit.distill.methods.kd import kd_soft_loss
from labkit.errors import ConfigError


def check_kd_params(temperature: Any, alpha: Any) -> None:
    """Raise :class:`ConfigError` unless ``temperature > 0`` and ``0 <= alpha <= 1``."""
    numeric = (int, float)
    if isinstance(temperature, bool) or not isinstance(temperature, numeric) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ConfigError(f"distill.temperature={temperature!r} is invalid: expected a number > 0")
    if isinstance(alpha, bool) or not isinstance(alpha, numeric) or not 0 <= alpha <= 1:
        raise ConfigError(f"distill.alpha={alpha!r} is invalid: expected a number in [0, 1]")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    KL uses ``batchmean`` (a sum over classes, a mean over samples: the true KL per sample;
    ``mean`` would also divide by the class count). The soft targets' gradient scales as
    1/T^2, so the T^2 factor keeps the soft term's weight independent of the temperature.
    The teacher's logits carry no gradient. Computed in fp32 even under bf16 autocast.
    ``label_smoothing`` smooths the hard labels of the CE term as ``trainer.label_smoothing``
    does for the baseline, so both students see the same hard targets.
    """
    check_kd_params(temperature, alpha)
    student = student_logits.float()
    soft = kd_soft_loss(student, teacher_logits, temperature) if alpha > 0 else student.new_zeros(())
    hard = (F.cross_entropy(student, targets, label_smoothing=label_smoothing) if alpha < 1
            else student.new_zeros(()))
    return alpha * soft + (1 - alpha) * hard

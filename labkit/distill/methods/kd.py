"""KD (Hinton, Vinyals & Dean 2015): match the teacher's softened class probabilities."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from labkit.distill.methods.base import DistillMethod, Outputs, check_number


def kd_soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, a sum over classes and a mean over samples
    (``batchmean``; ``mean`` would also divide by the class count). T^2 keeps the gradient's
    scale independent of T. The teacher's logits carry no gradient; computed in fp32."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


class KD(DistillMethod):
    """``alpha * T^2 * KL``; the hard-label CE then gets ``1 - alpha`` (the lab's convention,
    see ``distill.ce_weight``)."""

    name = "kd"

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5) -> None:
        super().__init__()
        self.temperature = check_number(self.name, "temperature", temperature, low_open=True)
        self.alpha = check_number(self.name, "alpha", alpha, 0.0, 1.0)

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor) -> torch.Tensor:
        return self.alpha * kd_soft_loss(student.logits, teacher.logits, self.temperature)

    def settings(self) -> dict[str, Any]:
        return {"T": self.temperature, "alpha": self.alpha}

"""The distilled student's training objective: its wrapper that exposes feature points, and the
criterion ``ce_weight * CE + sum of the methods' terms`` the engine calls after each forward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.data.loader import Batch
from labkit.distill.methods import DistillMethod, Outputs
from labkit.distill.teacher import CachedTeacher, LiveTeacher


class DistilledStudent(nn.Module):
    """The student plus the methods' trainable parts (FitNet connectors), trained as one module
    so the optimizer, DDP and checkpoints see both. While training, each forward keeps the
    student's outputs at ``points`` for the criterion; only ``student`` is deployed. Used only
    when a method needs features or has parameters: logit methods train the bare student."""

    def __init__(self, student: nn.Module, methods: Sequence[DistillMethod]) -> None:
        super().__init__()
        self.student = student
        self.methods = nn.ModuleList(methods)
        self.points = sorted({s for m in methods for _, s in m.pairs})
        self.features: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.points and self.training):
            return self.student(x)
        logits, self.features = self.student.forward_with_features(x, self.points)
        return logits

    @staticmethod
    def needed(methods: Sequence[DistillMethod]) -> bool:
        """Whether ``methods`` read student features or own trainable parameters."""
        return any(m.pairs or any(True for _ in m.parameters()) for m in methods)

    def extra_params(self) -> int:
        """Parameters trained with the student but not deployed (connectors)."""
        return sum(p.numel() for p in self.methods.parameters())


class DistillationCriterion:
    """``ce_weight * CE(s, y) + sum_m term_m(student, teacher)``, the teacher's outputs computed
    for (or looked up for) the very batch the student just saw. ``student`` is the
    :class:`DistilledStudent` the engine trains when a method needs features or connectors
    (its forward kept the features), else None and ``methods`` are logit methods. Computed in fp32."""

    def __init__(self, teacher: CachedTeacher | LiveTeacher, methods: Sequence[DistillMethod],
                 ce_weight: float, label_smoothing: float = 0.0,
                 student: DistilledStudent | None = None) -> None:
        self.teacher, self.methods, self.student = teacher, list(methods), student
        self.ce_weight, self.label_smoothing = float(ce_weight), float(label_smoothing or 0.0)

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        teacher = self.teacher(batch)
        student = Outputs(logits, self.student.features if self.student is not None else {})
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight > 0:
            loss = self.ce_weight * F.cross_entropy(logits.float(), batch.targets,
                                                    label_smoothing=self.label_smoothing)
        for method in self.methods:
            loss = loss + method(student, teacher, batch.targets)
        if self.student is not None:
            self.student.features = {}  # do not keep the graph's activations alive
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The methods' training progress, saved in the engine's checkpoint."""
        return {m.name: m.progress() for m in self.methods if m.progress()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for method in self.methods:
            if method.name in state:
                method.restore_progress(state[method.name])

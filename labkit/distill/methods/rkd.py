"""RKD (Park et al. 2019, "Relational Knowledge Distillation"): match the structure of a batch,
pairwise distances (normalised by their mean) and angles of triplets, in the teacher's and the
student's embedding spaces, with the Huber loss. Relations need no connector: the two embeddings
may have any widths."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from labkit.distill.methods.base import DistillMethod, Outputs, Pairs, Shapes, check_number, flat
from labkit.errors import ConfigError


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """``||e_i - e_j|| / mu`` for all pairs, mu the mean over pairs i != j; 0 on the diagonal."""
    n = e.shape[0]
    diff = e[:, None, :] - e[None, :, :]
    off = ~torch.eye(n, dtype=torch.bool, device=e.device)
    dist = torch.zeros(n, n, device=e.device, dtype=e.dtype)
    dist[off] = diff[off].norm(dim=-1)  # no sqrt at 0 on the diagonal (its gradient is undefined)
    return dist / dist[off].mean().clamp_min(1e-12)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """``cos angle(e_i, e_j, e_k) = <unit(e_i - e_j), unit(e_k - e_j)>`` as ``[j, i, k]``."""
    unit = F.normalize(e[None, :, :] - e[:, None, :], dim=-1)  # unit[j, i] = unit(e_i - e_j)
    return unit @ unit.transpose(1, 2)


def rkd_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor,
             distance_weight: float, angle_weight: float) -> torch.Tensor:
    """``w_d * huber(psi_D) + w_a * huber(psi_A)``, each Huber loss a mean over *all* ``n^2``
    pairs and ``n^3`` triplets, as the reference code reduces them (mdistiller
    ``mdistiller/distillers/RKD.py:35,47``, RepDistiller ``distiller_zoo/RKD.py``:
    ``F.smooth_l1_loss`` over the whole matrices): the degenerate entries (i = j, or j equal to
    i or k) are equal for teacher and student and add zeros that count in the mean."""
    s, t = flat(student_embedding), flat(teacher_embedding).detach()
    total = s.new_zeros(())
    if distance_weight:
        with torch.no_grad():
            t_dist = _normalised_distances(t)
        total = total + distance_weight * F.smooth_l1_loss(_normalised_distances(s), t_dist)
    if angle_weight:
        with torch.no_grad():
            t_angle = _angles(t)
        total = total + angle_weight * F.smooth_l1_loss(_angles(s), t_angle)
    return total


class RKD(DistillMethod):
    name = "rkd"
    uses_features = True

    def __init__(self, pairs: Pairs, teacher_shapes: Shapes, student_shapes: Shapes,
                 student_name: str = "student", distance_weight: float = 25.0,
                 angle_weight: float = 50.0, relation_batch: int = 64) -> None:
        super().__init__()
        self.distance_weight = check_number(self.name, "distance_weight", distance_weight)
        self.angle_weight = check_number(self.name, "angle_weight", angle_weight)
        if isinstance(relation_batch, bool) or not isinstance(relation_batch, int) or relation_batch < 3:
            raise ConfigError(f"distill.rkd.relation_batch={relation_batch!r} is invalid: expected an "
                              f"integer >= 3")
        self.relation_batch = relation_batch
        self.pairs = list(pairs)

    @staticmethod
    def default_layers(teacher_shapes: Shapes, student_shapes: Shapes) -> list[str]:
        """The embedding the classifier reads (the paper's final embedding)."""
        return ["pre_logits"]

    def forward(self, student: Outputs, teacher: Outputs, targets: torch.Tensor) -> torch.Tensor:
        """Relations among the first ``relation_batch`` samples of the (shuffled) batch: the angle
        term costs ``n^3`` (at n = 512 it made a CIFAR student step 20x slower), and the references
        relate the 64 samples of their batches (RepDistiller / mdistiller CIFAR batch size 64)."""
        total = student.logits.new_zeros((), dtype=torch.float32)
        n = self.relation_batch
        for t_point, s_point in self.pairs:
            total = total + rkd_loss(student.features[s_point][:n], teacher.features[t_point][:n],
                                     self.distance_weight, self.angle_weight)
        return total

    def settings(self) -> dict[str, Any]:
        return {"distance_weight": self.distance_weight, "angle_weight": self.angle_weight,
                "relation_batch": self.relation_batch}

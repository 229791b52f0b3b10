"""Knowledge distillation: the methods' losses, the teacher's outputs (cached or live), the
three-stage pipeline."""

from labkit.distill.criterion import DistillationCriterion, DistilledStudent
from labkit.distill.loss import check_kd_params, kd_loss
from labkit.distill.pipeline import distill
from labkit.distill.teacher import CachedTeacher, LiveTeacher, teacher_outputs

__all__ = ["CachedTeacher", "DistillationCriterion", "DistilledStudent", "LiveTeacher", "check_kd_params",
           "distill", "kd_loss", "teacher_outputs"]

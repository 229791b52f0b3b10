"""Knowledge distillation: the methods' losses, the teacher's outputs (cached or live), the
three-stage pipeline."""

from labkit.distill.criterion import DistillationCriterion, DistilledStudent
from labkit.distill.pipeline import distill
from labkit.distill.teacher import CachedTeacher, LiveTeacher, teacher_outputs

__all__ = ["CachedTeacher", "DistillationCriterion", "DistilledStudent", "LiveTeacher",
           "distill", "teacher_outputs"]

"""Knowledge distillation: the methods' losses, the teacher's outputs (cached or live), the
three-stage pipeline."""

from typing import Any

from labkit.distill.criterion import DistillationCriterion, DistilledStudent
from labkit.distill.teacher import CachedTeacher, LiveTeacher, teacher_outputs

__all__ = ["CachedTeacher", "DistillationCriterion", "DistilledStudent", "LiveTeacher",
           "distill", "teacher_outputs"]


def __getattr__(name: str) -> Any:
    # the pipeline is imported on first use: it reads the config schema, which reads the method
    # names from labkit.distill.methods (importing it here would be circular)
    if name == "distill":
        from labkit.distill.pipeline import distill

        return distill
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

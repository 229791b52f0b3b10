"""Where the distilled student's soft targets come from: a per-sample cache, or the live teacher.

Both run the teacher in ``eval()`` (dropout off, BatchNorm on its running statistics, which
therefore never change) under ``torch.inference_mode()``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from labkit.config.choices import CACHE_TEACHER
from labkit.data.loader import Batch
from labkit.distill.methods.base import Outputs
from labkit.engine.accel import autocast
from labkit.errors import ConfigError

log = logging.getLogger(__name__)


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Evaluation mode and no gradients: distillation must not change the teacher in any way."""
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


class LiveTeacher:
    """Runs the teacher on the very batch the student sees (needed when inputs are augmented,
    and for feature methods: the teacher's outputs at ``points`` come from the same pass), in
    the teacher's own precision whatever autocast region the student's step is in."""

    cached = False

    def __init__(self, teacher: nn.Module, precision: str = "fp32", points: Sequence[str] = ()) -> None:
        self.teacher = freeze_teacher(teacher)
        self.precision = precision
        self.points = sorted(set(points))

    def __call__(self, batch: Batch) -> Outputs:
        self.teacher.eval()
        with torch.inference_mode(), autocast(batch.inputs.device, self.precision):
            if self.points:
                logits, features = self.teacher.forward_with_features(batch.inputs, self.points)
            else:
                logits, features = self.teacher(batch.inputs), {}
        # normal fp32 tensors (clones made outside inference mode), usable next to autograd
        return Outputs(logits.float().clone(), {k: v.float().clone() for k, v in features.items()})


class CachedTeacher:
    """Teacher logits computed once per training sample, looked up by the batch's sample index.

    The cache is filled by scattering each batch's logits to ``cache[batch.index]``, so it is
    correct whatever order the filling loader visits the samples in, and a shuffled training
    batch finds its own samples' logits. Only valid when the student sees un-augmented inputs.
    """

    cached = True

    def __init__(self, teacher: nn.Module, loader: Iterable[Batch], num_samples: int,
                 precision: str = "fp32") -> None:
        teacher = freeze_teacher(teacher)
        cache: torch.Tensor | None = None
        filled: torch.Tensor | None = None
        with torch.inference_mode():
            for batch in loader:
                with autocast(batch.inputs.device, precision):
                    logits = teacher(batch.inputs).float()
                if cache is None:
                    cache = logits.new_zeros((num_samples, logits.shape[1]))
                    filled = torch.zeros(num_samples, dtype=torch.bool, device=logits.device)
                cache[batch.index] = logits
                filled[batch.index] = True
        if cache is None or not bool(filled.all()):
            raise RuntimeError("the teacher cache loader did not visit every training sample")
        self.logits = cache.clone()  # a normal tensor, outside inference mode

    def __call__(self, batch: Batch) -> Outputs:
        return Outputs(self.logits[batch.index])


def use_teacher_cache(setting: Any, augmented: bool) -> bool:
    """Resolve ``distill.cache_teacher`` (auto | true | false) against the data's augmentation."""
    if not any(type(setting) is type(c) and setting == c for c in CACHE_TEACHER):
        raise ConfigError(f"distill.cache_teacher={setting!r} is invalid: expected auto, true or false")
    if setting == "auto":
        return not augmented
    if setting is True and augmented:
        raise ConfigError(
            "distill.cache_teacher=true is invalid with data augmentation on: cached logits belong "
            "to the un-augmented images; use auto or false (the teacher then sees each augmented batch)"
        )
    return bool(setting)


def teacher_outputs(teacher: nn.Module, datamodule: Any, setting: Any, precision: str = "fp32",
                    points: Sequence[str] = ()) -> CachedTeacher | LiveTeacher:
    """The provider ``distill.cache_teacher`` asks for, for the training split of ``datamodule``;
    the teacher runs in ``precision`` (its fast path's). Feature ``points`` need the live teacher."""
    augmented = getattr(datamodule, "augment", None) is not None
    if points and setting is True:
        raise ConfigError("distill.cache_teacher=true is invalid with a feature method: FitNet, AT and "
                          "RKD compare the teacher's intermediate features, so the teacher runs live on "
                          "each batch; use auto or false")
    if use_teacher_cache(setting, augmented) and not points:
        num_samples = datamodule.split_size("train")
        log.info("caching teacher logits for %d training samples", num_samples)
        loader = datamodule.loader("train")
        # every sample once, in order: no random numbers drawn, no sample dropped
        loader.shuffle, loader.drop_last = False, False
        return CachedTeacher(teacher, loader, num_samples, precision)
    log.info("running the teacher live on every training batch")
    return LiveTeacher(teacher, precision, points)

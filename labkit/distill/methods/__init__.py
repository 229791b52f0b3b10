"""Distillation methods: one loss term per method, over logits and named feature points.

``distill.method`` names one method or a sum (``kd+at``); each term reads its hyper-parameters
from its own node ``distill.<name>``, and the hard-label cross-entropy is added with
``distill.ce_weight``. Adding a method is one module with a :class:`DistillMethod` subclass and
one entry in :data:`METHODS` plus its config node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from labkit.distill.methods.at import AT
from labkit.distill.methods.base import DistillMethod, Outputs, Shapes
from labkit.distill.methods.dist import DIST
from labkit.distill.methods.dkd import DKD
from labkit.distill.methods.fitnet import FitNet
from labkit.distill.methods.kd import KD
from labkit.distill.methods.points import declared_points, probe_shapes, resolve_pairs
from labkit.distill.methods.rkd import RKD
from labkit.errors import ConfigError

METHODS: dict[str, type[DistillMethod]] = {cls.name: cls for cls in (KD, FitNet, AT, RKD, DKD, DIST)}

__all__ = ["METHODS", "DistillMethod", "Outputs", "build_methods", "ce_weight", "declared_points",
           "method_names", "method_label", "needs_features", "probe_shapes"]


def method_names(spec: Any) -> list[str]:
    """``"kd"``, ``"kd+at"`` or ``[kd, at]`` -> ``["kd", "at"]``; unknown or repeated names are a
    :class:`ConfigError`."""
    if isinstance(spec, str):
        names = [part.strip() for part in spec.split("+")]
    elif isinstance(spec, Sequence) and not isinstance(spec, bytes):
        names = [str(part).strip() for part in spec]
    else:
        names = []
    if not names or any(name not in METHODS for name in names) or len(set(names)) != len(names):
        raise ConfigError(f"distill.method={spec!r} is invalid: expected one of {', '.join(METHODS)} "
                          f"or a sum of different ones such as kd+at")
    return names


def method_label(spec: Any) -> str:
    return "+".join(method_names(spec))


def needs_features(spec: Any) -> bool:
    return any(METHODS[name].uses_features for name in method_names(spec))


def ce_weight(distill: Mapping[str, Any]) -> float:
    """Weight of the hard-label cross-entropy: ``distill.ce_weight``, or with ``auto``
    ``1 - kd.alpha`` when kd is in the sum (the lab's KD convention), else 1 (the convention of
    the other methods' papers: CE plus the weighted distillation terms)."""
    value = distill.get("ce_weight", "auto")
    if value == "auto" or value is None:
        names = method_names(distill["method"])
        return 1.0 - float(distill["kd"]["alpha"]) if "kd" in names else 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"distill.ce_weight={value!r} is invalid: expected auto or a number >= 0")
    return float(value)


def _params(distill: Mapping[str, Any], name: str) -> dict[str, Any]:
    node = distill.get(name)
    if not isinstance(node, Mapping):
        raise ConfigError(f"distill.{name} is missing: every method needs its config node")
    return {k: v for k, v in node.items() if k != "feature_layers"}


def build_methods(distill: Mapping[str, Any], teacher_shapes: Shapes | None = None,
                  student_shapes: Shapes | None = None, teacher_name: str = "teacher",
                  student_name: str = "student") -> list[DistillMethod]:
    """The loss terms ``distill.method`` names, built from their nodes. Feature methods get the
    shapes at every declared point of both models (:func:`probe_shapes`) to pair points and size
    connectors; a method that cannot apply to the pair is a :class:`ConfigError`."""
    methods = []
    for name in method_names(distill["method"]):
        cls = METHODS[name]
        try:
            if not cls.uses_features:
                methods.append(cls(**_params(distill, name)))
                continue
            t_shapes, s_shapes = teacher_shapes or {}, student_shapes or {}
            requested = distill.get("feature_layers") or distill[name].get("feature_layers")
            default = cls.default_layers(t_shapes, s_shapes) if t_shapes and s_shapes else []
            pairs = resolve_pairs(name, requested, default, t_shapes, s_shapes, teacher_name, student_name)
            methods.append(cls(pairs, t_shapes, s_shapes, student_name, **_params(distill, name)))
        except TypeError as exc:  # a key the method does not know
            raise ConfigError(f"distill.{name}: {exc}") from exc
    return methods

"""Class activation maps for CNN runs: methods (CAM, Grad-CAM), faithfulness, figures, the run."""

from typing import Any

from labkit.explain.faithfulness import auc, faithfulness, perturbation_curves
from labkit.explain.methods import METHODS, cam, class_map, grad_cam, mass_in, resolve_layer, upsample

__all__ = ["METHODS", "auc", "cam", "class_map", "explain_checkpoints", "faithfulness", "grad_cam",
           "mass_in", "perturbation_curves", "resolve_layer", "upsample"]


def __getattr__(name: str) -> Any:
    # the command is imported on first use: it checks its config against the schema, which reads
    # METHODS / TARGETS / BASELINES from this package (importing it here would be circular)
    if name == "explain_checkpoints":
        from labkit.explain.run import explain_checkpoints

        return explain_checkpoints
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

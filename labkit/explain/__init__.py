"""Class activation maps for CNN runs: methods (CAM, Grad-CAM), faithfulness, figures, the run."""

from labkit.explain.faithfulness import auc, faithfulness, perturbation_curves
from labkit.explain.methods import METHODS, cam, class_map, grad_cam, mass_in, resolve_layer, upsample
from labkit.explain.run import explain_checkpoints

__all__ = ["METHODS", "auc", "cam", "class_map", "explain_checkpoints", "faithfulness", "grad_cam",
           "mass_in", "perturbation_curves", "resolve_layer", "upsample"]

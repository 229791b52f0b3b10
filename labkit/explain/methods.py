"""Class activation maps: CAM written out (a few lines on the head), Grad-CAM from captum.

Both work on a labkit CNN (:class:`~labkit.models.cnn.PooledConvNet`: ``stem``, ``blocks``,
global average pooling, one linear ``head``). A map is ``[N, h, w]`` at the chosen layer's
resolution; :func:`upsample` brings it to the image's.

- **CAM** (Zhou et al. 2016): ``M_c = sum_k w_ck f_k``, the last feature map weighted by the head's
  row for class ``c``. Because the head is linear after average pooling, the class logit is
  exactly ``mean(M_c) + b_c``: CAM is that logit spread over the positions. It is defined at the
  last block only.
- **Grad-CAM** (Selvaraju et al. 2017): ``ReLU(sum_k a_k f_k)`` with ``a_k`` the spatial mean of
  ``d logit_c / d f_k``, at any layer (captum's ``LayerGradCam``). At the last block of such a
  network ``a_k = w_ck / (h w)``, so Grad-CAM there is ``ReLU(CAM) / (h w)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labkit.config.choices import EXPLAIN_METHODS as METHODS
from labkit.errors import ConfigError


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"explain.method={method!r} is invalid: expected one of {', '.join(METHODS)}")
    return method


def require_cnn(model: nn.Module, source: object) -> nn.Module:
    """``model`` if it is a labkit CNN (feature map, pooling, linear head); a one-line error else."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if not (has_conv and hasattr(model, "forward_features")
            and isinstance(getattr(model, "head", None), nn.Linear)
            and isinstance(getattr(model, "blocks", None), nn.ModuleList)):
        what = "has no convolutions" if not has_conv else "is not a pooled CNN (stem, blocks, pool, head)"
        raise ConfigError(f"{source} holds a {type(model).__name__}, which {what}: class activation maps "
                          f"need a CNN (model=cnn or model=convpool)")
    return model


def layer_names(model: nn.Module) -> list[str]:
    """The names ``explain.layer`` takes besides any module name: ``last``, ``stem``, ``blocks.i``."""
    return ["last", "stem", *(f"blocks.{i}" for i in range(len(model.blocks)))]


def resolve_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """``(canonical name, module)`` for ``explain.layer``: ``last`` (the last block), ``stem``,
    ``blocks.i`` or ``i`` (negative counts from the end), or any module name of the model."""
    name = str(name)
    count = len(model.blocks)
    if name == "last":
        name = f"blocks.{count - 1}"
    index = name.removeprefix("blocks.")
    if index.lstrip("-").isdigit() and -count <= int(index) < count:
        name = f"blocks.{int(index) % count}"
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise ConfigError(f"explain.layer={name!r} is invalid: expected {', '.join(layer_names(model))} "
                          f"(or a module name of the model, e.g. blocks.{count - 1}.0)")
    return name, modules[name]


def cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CAM ``[N, h, w]``: the last feature map weighted by the head's weights of class ``target``."""
    with torch.no_grad():
        features = model.forward_features(x).float()
        return torch.einsum("nkhw,nk->nhw", features, model.head.weight[target].float())


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM ``[N, h, w]`` at ``layer`` (captum's ``LayerGradCam``, ReLU applied)."""
    from captum.attr import LayerGradCam  # imported here: only Grad-CAM needs it

    with torch.enable_grad():
        maps = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    return maps.detach().float().sum(1)


def class_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str,
              layer: str = "last") -> torch.Tensor:
    """The map of ``method`` at ``layer`` for class ``target[i]`` of each image ``x[i]``."""
    check_method(method)
    name, module = resolve_layer(model, layer)
    if method == "cam":
        last = f"blocks.{len(model.blocks) - 1}"
        if name != last:
            raise ConfigError(f"explain.layer={layer!r} with explain.method=cam: CAM is defined only at "
                              f"the last block ({last}, whose channels the head weighs); use "
                              f"explain.method=gradcam for other layers")
        return cam(model, x, target)
    return grad_cam(model, module, x, target)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, h, w]`` maps to ``[N, *size]``, bilinear (as the papers draw them)."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Maps for drawing: negative parts cut, each map scaled from its minimum (0) to its maximum
    (1), as Grad-CAM figures usually are (a constant map becomes 0)."""
    maps = maps.clamp_min(0)
    low, high = maps.flatten(1).amin(1)[:, None, None], maps.flatten(1).amax(1)[:, None, None]
    return (maps - low) / (high - low).clamp_min(1e-12)


def mass_in(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per map, the share of its positive mass inside ``mask`` (``[H, W]`` bool, maps ``[N, H, W]``)."""
    positive = maps.clamp_min(0)
    return (positive * mask).flatten(1).sum(1) / positive.flatten(1).sum(1).clamp_min(1e-12)

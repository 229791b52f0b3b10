"""The CUDA fast path: precision choice, channels_last, cudnn autotuning, torch.compile.

Each setting only acts on CUDA, where it pays; on the CPU (and MPS) they are skipped, so one
config runs everywhere. Fused optimizers live in :mod:`labkit.engine.optim` (they help on the
CPU too), bf16 autocast in :meth:`labkit.engine.Engine.autocast`, non-blocking host-to-device
copies in :mod:`labkit.data.transfer`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from labkit.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` and ``bf16`` give bf16 autocast on CUDA GPUs with native bf16 (Ampere and
    newer), fp32 everywhere else: bf16 autocast on the CPU is slower than fp32 for these
    models, and older GPUs emulate it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return "fp32"
    capable = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bf16" if capable else "fp32"


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def accelerate(model: nn.Module, device: torch.device, *, compile: bool = False,
               deterministic: bool = False) -> dict[str, Any]:
    """Apply the CUDA settings that suit ``model`` in place; returns what was switched on.

    - channels_last for convolutional models: cuDNN's tensor-core kernels want NHWC, and the
      layout change otherwise happens inside every convolution;
    - ``cudnn.benchmark`` (unless ``deterministic``): with fixed input shapes, autotuning once
      picks the fastest convolution algorithm for the rest of the run;
    - ``compile``: ``model.compile()`` (in place, so state_dict keys and checkpoints are the
      same as without it).
    """
    applied = {"channels_last": False, "cudnn_benchmark": False, "compiled": False}
    if device.type != "cuda":
        if compile:
            log.info("trainer.compile=true is ignored on %s: compiling pays off on CUDA only", device)
        return applied
    if has_convolutions(model):
        model.to(memory_format=torch.channels_last)
        applied["channels_last"] = True
    if not deterministic:
        torch.backends.cudnn.benchmark = True
        applied["cudnn_benchmark"] = True
    if compile:
        if not hasattr(model, "compile"):
            raise ConfigError(f"trainer.compile=true needs torch >= 2.2 (this is {torch.__version__})")
        model.compile()
        applied["compiled"] = True
    return applied

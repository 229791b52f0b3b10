"""The fast path: which precision, memory format and compiler a model runs with, on any device.

One function, :func:`plan_fast_path`, decides from the device, the model and the trainer
settings; :func:`apply_fast_path` switches it on. Every entry point goes through both (via
:mod:`labkit.run`), so a setting means the same in train.py, distill.py and eval.py.

The rules, and the measurements behind them (README, "Speed"):

- CUDA: bf16 autocast on GPUs with native bf16 (Ampere and newer), channels_last for models
  with convolutions, ``cudnn.benchmark`` unless deterministic, ``torch.compile`` when asked.
- CPU: bf16 autocast and channels_last for models with convolutions, where oneDNN runs bf16
  natively (AVX512-BF16 or AMX on x86, the BF16 extension on Arm): 1.4-3x faster there.
  Models without convolutions stay fp32 (the default MLP trains about 8 % *slower* in bf16),
  CPUs without native bf16 stay fp32 (emulated bf16 is slower), and ``torch.compile`` is
  skipped (on the Fashion CNN it took 45 s to compile and then ran 13 % slower than eager).
- ``trainer.precision=fp32`` turns bf16 off everywhere, and on the CPU channels_last too (the
  behaviour before the CPU fast path); on CUDA the other settings stay as they were.

Fused optimizers live in :mod:`labkit.engine.optim` (they help on the CPU too).
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

import torch
from torch import nn

from labkit.config.choices import PRECISIONS
from labkit.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPath:
    """What a model runs with; ``describe()`` is the model table's ``fast_path`` field."""

    precision: str = "fp32"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compiled: bool = False

    def describe(self) -> str:
        switches = {"bf16_autocast": self.precision == "bf16", "channels_last": self.channels_last,
                    "cudnn_benchmark": self.cudnn_benchmark, "compiled": self.compiled}
        return ", ".join(name for name, on in switches.items() if on) or "off"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast on ``device`` when ``precision`` is bf16; autocast switched *off* otherwise
    (so an fp32 model called inside a bf16 region, e.g. a live teacher, still runs in fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _cpu_flag(name: str) -> bool:
    check = getattr(torch.cpu, name, None)  # private helpers of torch.cpu; absent on old torch
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matrix and convolution work natively on this CPU.

    On x86 that takes AVX512-BF16 or AMX (oneDNN also "supports" bf16 on any AVX512 CPU, but
    by emulation, which is slower than fp32); elsewhere torch's own oneDNN check (Arm BF16).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return _cpu_flag("_is_avx512_bf16_supported") or _cpu_flag("_is_amx_tile_supported")
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively (so bf16 autocast pays instead of costing)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def plan_fast_path(precision: str, device: torch.device, model: nn.Module, *, compile: bool = False,
                   deterministic: bool = False) -> FastPath:
    """Decide the fast path for ``model`` on ``device`` (the rules are in the module docstring)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is invalid: expected {', '.join(PRECISIONS)}")
    convolutional = has_convolutions(model)
    if device.type == "cuda":
        bf16 = precision != "fp32" and native_bf16(device)
        return FastPath(precision="bf16" if bf16 else "fp32", channels_last=convolutional,
                        cudnn_benchmark=not deterministic, compiled=compile)
    if compile:
        log.info("trainer.compile=true is ignored on %s: compiling does not pay off there", device)
    if device.type != "cpu":
        return FastPath()
    wanted = precision == "bf16" or (precision == "auto" and convolutional)
    if not (wanted and native_bf16(device)):
        if precision == "bf16":
            log.info("trainer.precision=bf16: this CPU has no native bf16, running fp32")
        return FastPath()
    return FastPath(precision="bf16", channels_last=convolutional)


def apply_fast_path(model: nn.Module, plan: FastPath) -> nn.Module:
    """Switch ``plan`` on for ``model`` in place (already on its device); returns the model.

    - channels_last: oneDNN's and cuDNN's fast convolution kernels want NHWC, and the layout
      change otherwise happens inside every convolution;
    - ``cudnn.benchmark``: with fixed input shapes, autotuning once picks the fastest
      convolution algorithm for the rest of the run;
    - compile: ``model.compile()`` in place, so state_dict keys and checkpoints are the same.
    """
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    if plan.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if plan.compiled:
        if not hasattr(model, "compile"):
            raise ConfigError(f"trainer.compile=true needs torch >= 2.2 (this is {torch.__version__})")
        model.compile()
    return model

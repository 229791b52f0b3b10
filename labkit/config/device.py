"""``trainer.device``: which devices this machine has, and the ``torch.device`` a name means.

Part of configuration because validation asks it (README: ``trainer.device=cuda`` without CUDA
is one line and exit status 2 before the run folder is written), and the run builder uses the
same function to place the run.
"""

from __future__ import annotations

import torch

from labkit.config.choices import DEVICES
from labkit.errors import ConfigError


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.insert(0, "cuda")
    if _mps_available():
        found.append("mps")
    return found


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit but absent device is an error."""
    base = str(name).split(":")[0]
    if base not in DEVICES:
        raise ConfigError(f"trainer.device={name!r} is not one of {', '.join(DEVICES)}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if base not in available_devices():
        raise ConfigError(
            f"trainer.device={name!r} is not available on this machine; available: "
            f"{', '.join(available_devices())} (or auto)"
        )
    return torch.device(name)

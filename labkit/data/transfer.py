"""Host-to-device copies that do not stall the host."""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy ``tensor`` to ``device``; CPU tensors bound for CUDA go through pinned memory with
    ``non_blocking=True``, so the copy overlaps with whatever the host does next. A tensor
    already on ``device`` is returned as it is."""
    device = torch.device(device)
    if tensor.device == device or (device.index is None and tensor.device.type == device.type):
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)

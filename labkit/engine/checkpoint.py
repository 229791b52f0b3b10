"""Checkpoint files written atomically: a crash leaves the old file or the new one, never half."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it into place."""
    _atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Atomically copy one checkpoint file onto another name (e.g. last.pt -> best.pt)."""
    _atomic_write(Path(dst), lambda tmp: shutil.copyfile(src, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: only tensors and plain containers."""
    return torch.load(path, map_location=map_location, weights_only=True)

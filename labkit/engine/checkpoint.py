"""Checkpoint files written atomically: a crash leaves the old file or the new one, never half."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from labkit.errors import CheckpointError
from labkit.io import atomic_write

#: marks a file as a labkit training checkpoint (checked on load)
CHECKPOINT_FORMAT = "labkit-checkpoint-v1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it into place."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Atomically copy one checkpoint file onto another name (e.g. last.pt -> best.pt)."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", require_format: bool = True
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (only tensors and plain containers).

    Raises :class:`CheckpointError` saying whether the file is missing, truncated / not a torch
    file at all, or a torch file that labkit did not write.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        if zipfile.is_zipfile(path):  # a complete torch file holding pickled Python objects
            raise CheckpointError(
                f"checkpoint {path} is not a labkit checkpoint: it holds objects that weights_only "
                f"loading refuses ({type(exc).__name__})"
            ) from exc
        raise CheckpointError(
            f"checkpoint {path} cannot be read: the file is truncated or not a torch checkpoint"
        ) from exc
    if require_format and (not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT):
        raise CheckpointError(
            f"{path} is a torch file but not a labkit checkpoint (no '{CHECKPOINT_FORMAT}' marker)"
        )
    return state


def evaluated_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights an engine checkpoint's run evaluates: the ``trainer.ema`` average once it has
    started (eval.py, explain.py, a teacher checkpoint and the final test read these), else the
    trained weights. ``model`` itself stays the trained weights, which a resume continues from."""
    average = state.get("ema")
    if isinstance(average, dict) and int(average.get("n_averaged", 0)) > 0:
        return average["weights"]
    return state["model"]


def load_model_weights(model: torch.nn.Module, state_dict: dict[str, Any], source: str | Path) -> None:
    """``model.load_state_dict`` with a message that says the checkpoint is for another architecture."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in state_dict]
    unexpected = [k for k in state_dict if k not in mine]
    wrong = [k for k in mine if k in state_dict and tuple(state_dict[k].shape) != tuple(mine[k].shape)]
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
            if keys
        )
        raise CheckpointError(
            f"checkpoint {source} was built for another architecture than the configured model ({details})"
        )
    model.load_state_dict(state_dict)

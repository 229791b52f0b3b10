"""The one owner of run folders: where a run's files are, what its summary says about how it
ended, and how to get a model's weights out of any checkpoint labkit writes.

train.py, distill.py, eval.py, explain.py and the report all ask here, so a file name, the
meaning of a status or the way a DDP / compiled state dict is read cannot drift between them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from labkit.engine.checkpoint import evaluated_weights, load_checkpoint
from labkit.errors import CheckpointError, RunInterrupted
from labkit.tracking import write_json

# -- where a run's files are -----------------------------------------------------------------
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"

#: a distillation run folder's stages and the model node each is built from (its config has
#: ``teacher`` and ``student``, no ``model``); ``<stage>.pth`` is a finished stage's record
STAGE_ROLES = {"teacher": "teacher", "student_baseline": "student", "student_distill": "student"}


def summary_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SUMMARY


def checkpoint_path(run_dir: str | Path, name: str = "last") -> Path:
    """``checkpoints/last.pt`` or ``checkpoints/best.pt`` of a run (or of a distillation stage)."""
    return Path(run_dir) / CHECKPOINTS / f"{name}.pt"


def run_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint that stands for a run: ``best.pt``, else ``last.pt``, else None."""
    return next((p for p in (checkpoint_path(run_dir, "best"), checkpoint_path(run_dir, "last"))
                 if p.is_file()), None)


def stage_path(run_dir: str | Path, stage: str) -> Path:
    """``<stage>.pth``: a finished distillation stage (its presence means the stage is done)."""
    return Path(run_dir) / f"{stage}.pth"


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder a checkpoint belongs to: the distillation run for a stage's checkpoint or
    stage file, the folder above ``checkpoints/`` for a train.py run, else its own folder."""
    path = Path(checkpoint)
    folder = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
    return folder.parent if folder.name in STAGE_ROLES else folder


def checkpoint_label(checkpoint: str | Path) -> str:
    """A short name for a checkpoint: its run folder's name, or the file's stem outside a run."""
    path = Path(checkpoint)
    return path.parent.parent.name if path.parent.name == CHECKPOINTS else path.stem


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """A run's summary.json, or {} when there is none (or it is being rewritten right now)."""
    path = summary_path(run_dir)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


# -- what a summary's status means -----------------------------------------------------------
COMPLETED, DIVERGED, LOADED = "completed", "diverged", "loaded"
FAILED, INTERRUPTED = "failed", "interrupted"
RUNNING, STOPPED = "running", "stopped"  # no summary.json yet: still writing, or killed
#: statuses of a run whose results stand (a diverged run is a result too, with its warning)
FINISHED = (COMPLETED, DIVERGED)

#: a job without summary.json whose files changed less than this long ago counts as running;
#: older ones were most likely killed and count as stopped.
STALE_AFTER_S = 3600.0


def is_finished(summary: dict[str, Any]) -> bool:
    return summary.get("status") in FINISHED


def failure(exc: BaseException) -> dict[str, Any]:
    """The summary fields of a run that ``exc`` ended: ``interrupted`` for a signal or Ctrl-C
    (it can be resumed), ``failed`` otherwise, and the error as one line."""
    status = INTERRUPTED if isinstance(exc, RunInterrupted | KeyboardInterrupt) else FAILED
    return {"status": status, "error": f"{type(exc).__name__}: {exc}"}


def mark_failed(run_dir: str | Path, exc: BaseException) -> dict[str, Any]:
    """Mark a job's summary.json failed with the error, keeping what the task already wrote (an
    ``interrupted`` or ``failed`` record of the task itself stays as it is)."""
    summary = read_summary(run_dir)
    if summary.get("status") in (None, *FINISHED):
        summary.update(status=FAILED, error=f"{type(exc).__name__}: {exc}")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(summary_path(run_dir), summary)
    return summary


def _newest_mtime(folder: Path) -> float:
    files = [p for p in (folder / METRICS, folder / ".hydra" / "overrides.yaml") if p.exists()]
    files += list(folder.glob("*.log"))
    return max((p.stat().st_mtime for p in files), default=0.0)


def job_status(summary: dict[str, Any], folder: Path, now: float | None = None) -> str:
    """completed / diverged / failed / interrupted from summary.json; running or stopped when it
    is missing (by how recently the job's files changed)."""
    if summary:
        return str(summary.get("status") or (COMPLETED if "test_acc" in summary else FAILED))
    age = (now or time.time()) - _newest_mtime(folder)
    return RUNNING if age < STALE_AFTER_S else STOPPED


# -- a model's weights out of any checkpoint -------------------------------------------------
#: wrappers whose state dicts prefix every key: DistributedDataParallel and torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The state dict of the plain model: ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``)
    dropped from the front of every key that carries them, in any nesting.

    labkit's own checkpoints hold the plain model's keys (compile runs in place, the engine saves
    the module inside DDP), but a state dict saved from a wrapper elsewhere carries the prefixes.
    """
    def plain(key: str) -> str:
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        return key

    return {plain(k): v for k, v in state_dict.items()}


def model_weights(record: Any, source: str | Path) -> dict[str, torch.Tensor]:
    """The plain model's weights in a loaded checkpoint: an engine checkpoint or a distillation
    stage file (their ``model`` entry) or a bare state dict, wrapper prefixes stripped."""
    if isinstance(record, dict) and isinstance(record.get("model"), dict):
        return strip_wrapper_prefixes(evaluated_weights(record))
    if isinstance(record, dict) and record and all(isinstance(v, torch.Tensor) for v in record.values()):
        return strip_wrapper_prefixes(record)
    raise CheckpointError(f"{source} holds no model weights (expected a 'model' entry or a state dict)")


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """:func:`model_weights` of the checkpoint file at ``path`` (``distill.teacher_ckpt``, a stage
    file to explain)."""
    path = Path(path).expanduser()
    return model_weights(load_checkpoint(path, require_format=False), path)

"""Stage files: one ``<stage>.pth`` per finished stage, which is what lets a re-run skip it.

A stage file holds the tested weights, the stage's summary and history, and the settings it
was made with. It is written atomically only after the stage has been tested, so its presence
means "this stage is done"; a crash mid-stage leaves no file and the stage runs again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from labkit.engine.checkpoint import load_checkpoint, save_checkpoint
from labkit.errors import CheckpointError, ConfigError

STAGE_FORMAT = "labkit-distill-stage-v1"
STAGES = ("teacher", "student_baseline", "student_distill")

# Data keys that change where or how fast data is read, not what a model learns from.
_DATA_KEYS_IGNORED = ("root", "download", "eval_batch_size")


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A short fingerprint of a set of weights (names, shapes and bytes), e.g. to prove two
    students started from the same initialisation."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def stage_settings(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The resolved settings a stage's result depends on; a finished stage is reused only when
    they are unchanged."""
    data = {k: v for k, v in (_select(cfg, "data") or {}).items() if k not in _DATA_KEYS_IGNORED}
    training = {
        "data": data,
        "optimizer": _select(cfg, "optimizer"),
        "scheduler": _select(cfg, "scheduler"),
        "trainer.epochs": _select(cfg, "trainer.epochs"),
        "trainer.seed": _select(cfg, "trainer.seed"),
        "trainer.test_on": _select(cfg, "trainer.test_on"),
        "trainer.precision": _select(cfg, "trainer.precision"),
        "trainer.label_smoothing": _select(cfg, "trainer.label_smoothing"),
        "trainer.eval_flip": _select(cfg, "trainer.eval_flip"),
    }
    if stage == "teacher":
        ckpt = _select(cfg, "distill.teacher_ckpt")
        if ckpt:
            return {"teacher": _select(cfg, "teacher"), "distill.teacher_ckpt": str(ckpt), "data": data}
        return {"teacher": _select(cfg, "teacher"), **training, "trainer.seed": teacher_seed(cfg),
                "trainer.epochs": teacher_epochs(cfg)}
    settings = {"student": _select(cfg, "student"), **training}
    if stage == "student_distill":
        from labkit.distill.methods import method_names

        settings.update({
            "teacher": _select(cfg, "teacher"),
            "distill.method": _select(cfg, "distill.method"),
            "distill.ce_weight": _select(cfg, "distill.ce_weight"),
            "distill.feature_layers": _select(cfg, "distill.feature_layers"),
            **{f"distill.{name}": _select(cfg, f"distill.{name}")
               for name in method_names(_select(cfg, "distill.method"))},
        })
    return settings


def teacher_seed(cfg: DictConfig) -> int:
    """``distill.teacher_seed``, else ``trainer.seed``: the seed the teacher is trained with."""
    seed = OmegaConf.select(cfg, "distill.teacher_seed")
    return int(cfg.trainer.seed if seed is None else seed)


def teacher_epochs(cfg: DictConfig) -> int:
    """``distill.teacher_epochs``, else ``trainer.epochs``: how long the teacher trains."""
    epochs = OmegaConf.select(cfg, "distill.teacher_epochs")
    return int(cfg.trainer.epochs if epochs is None else epochs)


def teacher_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``trainer.epochs`` set to the teacher's (schedules that interpolate it, e.g.
    cosine's ``T_max``, follow)."""
    if OmegaConf.select(cfg, "distill.teacher_epochs") is None:
        return cfg
    return OmegaConf.merge(cfg, {"trainer": {"epochs": teacher_epochs(cfg)}})


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of a stage's settings: its file name in a ``distill.stage_store``."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stored_stage_path(store: str | Path, stage: str, settings: dict[str, Any]) -> Path:
    """Where a stage made with ``settings`` is kept in a store shared by several jobs."""
    return Path(store).expanduser() / f"{stage}-{settings_fingerprint(settings)}.pth"


def stage_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / f"{stage}.pth"


def save_stage(run_dir: Path, stage: str, model: torch.nn.Module, summary: dict[str, Any],
               history: list[dict[str, Any]], settings: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``<stage>.pth`` (or ``path``) atomically: the tested weights, summary, history and
    settings."""
    path = path or stage_path(run_dir, stage)
    save_checkpoint({
        "format": STAGE_FORMAT,
        "stage": stage,
        "model": model.state_dict(),
        "summary": summary,
        "history": history,
        "settings": settings,
    }, path)
    return path


def load_stage(run_dir: Path, stage: str, settings: dict[str, Any],
               path: Path | None = None) -> dict[str, Any]:
    """Read a finished stage (``<stage>.pth`` or ``path``); refuse one made with other settings
    (the comparison would lie)."""
    path = path or stage_path(run_dir, stage)
    record = load_checkpoint(path, require_format=False)
    if not isinstance(record, dict) or record.get("format") != STAGE_FORMAT:
        raise CheckpointError(f"{path} is not a distillation stage file (no '{STAGE_FORMAT}' marker)")
    changed = sorted(k for k in set(settings) | set(record["settings"])
                     if settings.get(k) != record["settings"].get(k))
    if changed:
        raise ConfigError(
            f"{path} was made with other settings ({', '.join(changed)} differ); re-run with "
            f"distill.force=true to retrain every stage, or use a new run directory"
        )
    return record


def model_state_from_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a labkit checkpoint (``last.pt`` / ``best.pt``), a stage file, or a bare
    state dict, so ``distill.teacher_ckpt`` accepts a model trained by ``train.py``."""
    state = load_checkpoint(Path(path).expanduser(), require_format=False)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        return state["model"]
    if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise CheckpointError(f"{path} holds no model weights (expected a 'model' entry or a state dict)")

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
from omegaconf import DictConfig, OmegaConf

from labkit.engine.checkpoint import load_checkpoint, save_checkpoint
from labkit.errors import CheckpointError, ConfigError
from labkit.run import IGNORED_KEYS, flatten, under
from labkit.run_folder import STAGE_ROLES, stage_path

STAGE_FORMAT = "labkit-distill-stage-v1"
STAGES = tuple(STAGE_ROLES)

# A stage's settings: its whole resolved config minus labkit.run.IGNORED_KEYS (the keys that
# cannot change a result; resuming a checkpoint uses the same list), so a setting added later is
# covered the day it is added (tests/test_distill_stages.py flips each key of the composed config).

# What each stage reads of the distill node (the distilled student reads all of it).
_TEACHER_DISTILL_KEYS = ("teacher_ckpt",)  # teacher_seed / teacher_epochs enter as trainer.*
# Training-only keys that do not matter when the teacher is loaded from distill.teacher_ckpt.
_TRAINING_ONLY = ("optimizer", "scheduler", "trainer.epochs", "trainer.seed", "trainer.grad_clip",
                  "trainer.label_smoothing", "trainer.deterministic", "trainer.fused_optimizer",
                  "trainer.sync_batchnorm", "trainer.strategy", "trainer.compile", "data.augment",
                  "data.batch_size", "data.drop_last", "data.train_size")


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A short fingerprint of a set of weights (names, shapes and bytes), e.g. to prove two
    students started from the same initialisation."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def stage_settings(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The resolved settings a stage's result depends on, as dotted keys: the whole config minus
    :data:`IGNORED_KEYS` and the parts that belong to other stages (the baseline does not read
    ``teacher`` or ``distill``; the teacher does not read ``student``, and trains with its own seed
    and epochs). A finished stage is reused only when they are unchanged."""
    if stage == "teacher":
        cfg = teacher_config(cfg)  # its epochs, and the schedule that follows them
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    flat = {k: v for k, v in flatten(config).items() if not under(k, IGNORED_KEYS)}
    if stage == "student_distill":
        return flat
    if stage == "student_baseline":
        return {k: v for k, v in flat.items() if not under(k, ("teacher", "distill"))}
    own = tuple(f"distill.{name}" for name in _TEACHER_DISTILL_KEYS)
    flat = {k: v for k, v in flat.items() if not under(k, ("student", "distill")) or under(k, own)}
    flat["trainer.seed"] = teacher_seed(cfg)
    if OmegaConf.select(cfg, "distill.teacher_ckpt"):
        flat = {k: v for k, v in flat.items() if not under(k, _TRAINING_ONLY)}
    return flat


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
    merged = OmegaConf.merge(cfg, {"trainer": {"epochs": teacher_epochs(cfg)}})
    assert isinstance(merged, DictConfig)
    return merged


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of a stage's settings: its file name in a ``distill.stage_store``."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stored_stage_path(store: str | Path, stage: str, settings: dict[str, Any]) -> Path:
    """Where a stage made with ``settings`` is kept in a store shared by several jobs."""
    return Path(store).expanduser() / f"{stage}-{settings_fingerprint(settings)}.pth"


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

"""What `python train.py` does: build everything from the config, fit, test, report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from labkit.analysis.callbacks import analysis_callbacks
from labkit.config.validate import validate_config
from labkit.engine import load_checkpoint, seed_everything
from labkit.run import Runtime, build_model
from labkit.run_folder import checkpoint_path, is_finished, read_summary
from labkit.runner import Resume, RunData, open_stage, run_training
from labkit.tracking import config_tree

log = logging.getLogger(__name__)


def resume_checkpoint_path(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: ``trainer.ckpt_path``, else the run's last.pt if resuming."""
    explicit = OmegaConf.select(cfg, "trainer.ckpt_path")
    if explicit:
        return Path(explicit).expanduser()
    last = checkpoint_path(run_dir, "last")
    if OmegaConf.select(cfg, "trainer.resume", default=False):
        if last.is_file():
            return last
        log.info("trainer.resume=true but %s does not exist: starting from scratch", last)
    return None


def finished_summary(run_dir: Path, state: dict[str, Any], epochs: int) -> dict[str, Any] | None:
    """The stored summary when the checkpoint's run already completed ``epochs`` and was tested."""
    summary = read_summary(run_dir)
    if state.get("partial_epoch") is None and state["epoch"] >= epochs and is_finished(summary):
        return summary
    return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one model as configured; returns the summary (also in summary.json)."""
    validate_config(cfg, "train")
    run_dir = Path(cfg.paths.output_dir)
    rt = Runtime.from_config(cfg.trainer)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    console = Console(quiet=not rt.dist.is_main)  # under torchrun only rank 0 talks
    ckpt_path = resume_checkpoint_path(cfg, run_dir)
    resume = Resume(ckpt_path, load_checkpoint(ckpt_path)) if ckpt_path else None
    if resume is not None:
        done = finished_summary(run_dir, resume.state, cfg.trainer.epochs)
        if done is not None:
            console.print(f"run in {run_dir} already finished ({resume.state['epoch']} epochs): "
                          f"nothing to resume", highlight=False)
            return done
    console.print(config_tree(cfg))

    data = RunData.build(cfg, rt)
    prepared = build_model(cfg.model, rt)
    run = open_stage(cfg, rt, run_dir, console, {**prepared.info(), **data.sizes()})
    callbacks = analysis_callbacks(cfg, data.datamodule, run_dir) if rt.dist.is_main else []
    if resume is not None:
        console.print(f"resuming from {ckpt_path} at epoch {resume.state['epoch']}", highlight=False)
    summary, _ = run_training(cfg, data, prepared, run, seed=int(cfg.trainer.seed), callbacks=callbacks,
                              resume=resume)
    return summary

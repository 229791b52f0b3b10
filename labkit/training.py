"""What `python train.py` does: build everything from the config, fit, test, report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from labkit import __version__
from labkit.analysis.callbacks import analysis_callbacks
from labkit.config.validate import validate_config
from labkit.engine import distributed, load_checkpoint, seed_everything
from labkit.errors import RunInterrupted
from labkit.run import Runtime, build_engine, build_model, build_trackers, fit_and_test
from labkit.tracking import FileTracker, TrackerGroup, config_tree

log = logging.getLogger(__name__)


def resume_checkpoint_path(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: ``trainer.ckpt_path``, else the run's last.pt if resuming."""
    explicit = OmegaConf.select(cfg, "trainer.ckpt_path")
    if explicit:
        return Path(explicit).expanduser()
    last = run_dir / "checkpoints" / "last.pt"
    if OmegaConf.select(cfg, "trainer.resume", default=False):
        if last.is_file():
            return last
        log.info("trainer.resume=true but %s does not exist: starting from scratch", last)
    return None


def finished_summary(run_dir: Path, state: dict[str, Any], epochs: int) -> dict[str, Any] | None:
    """The stored summary when the checkpoint's run already completed ``epochs`` and was tested."""
    summary_path = run_dir / "summary.json"
    if state.get("partial_epoch") is None and state["epoch"] >= epochs and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("status") in ("completed", "diverged"):
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
    resume_state = load_checkpoint(ckpt_path) if ckpt_path else None
    if resume_state is not None:
        done = finished_summary(run_dir, resume_state, cfg.trainer.epochs)
        if done is not None:
            console.print(f"run in {run_dir} already finished ({resume_state['epoch']} epochs): "
                          f"nothing to resume", highlight=False)
            return done
    console.print(config_tree(cfg))

    log.info("building data <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    datamodule.setup(rt.device)
    prepared = build_model(cfg.model, rt)
    info = {
        **prepared.info(),
        "train_size": datamodule.split_size("train"),
        "val_size": datamodule.split_size("val"),
        "test_size": datamodule.split_size("test"),
    }
    is_main = rt.dist.is_main
    shard = {"rank": rt.dist.rank, "world_size": rt.dist.world_size}
    generator = torch.Generator(device=rt.device).manual_seed(int(cfg.trainer.seed))
    train_loader = datamodule.loader(
        "train", generator, augment_generator=distributed.augment_generator(cfg, rt.dist, rt.device), **shard)
    trackers = build_trackers(cfg, run_dir, console) if is_main else TrackerGroup()
    engine = build_engine(
        cfg, prepared, rt, steps_per_epoch=len(train_loader), trackers=trackers,
        checkpoint_dir=run_dir / "checkpoints",
        callbacks=analysis_callbacks(cfg, datamodule, run_dir) if is_main else [],
        extra_state={"config": OmegaConf.to_container(cfg, resolve=True), "labkit_version": __version__},
    )
    if resume_state is not None:
        best_path = ckpt_path.with_name("best.pt")
        best = load_checkpoint(best_path)["model"] if best_path.is_file() else None
        engine.load_state_dict(resume_state, best_model=best)
        console.print(f"resuming from {ckpt_path} at epoch {engine.epoch}", highlight=False)
    val_loader = datamodule.loader("val", **shard) if datamodule.split_size("val") else None
    trackers.start(OmegaConf.to_container(cfg, resolve=True), info)
    if resume_state is not None:  # metrics.jsonl: the checkpoint's epochs, not rows logged after it
        for tracker in trackers.trackers:
            if isinstance(tracker, FileTracker):
                tracker.restart_from(engine.history)
    status = "failed"
    try:
        summary = {**fit_and_test(engine, train_loader, val_loader, datamodule.loader("test", **shard),
                                  cfg.trainer.test_on, datamodule.num_classes), **info}
        trackers.log_summary(summary)
        status = summary["status"]
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, RunInterrupted | KeyboardInterrupt) else "failed"
        trackers.log_summary({
            "status": status,
            "error": f"{type(exc).__name__}: {exc}",
            "epochs_completed": len(engine.history),
            "best_val_acc": engine.best_val_acc if engine.history else None,
            "train_time_s": engine.train_time_s,
            **info,
        })
        raise
    finally:
        trackers.finish(status)
    return summary

"""What `python train.py` does: build everything from the config, fit, test, report."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from labkit.config.validate import validate_config
from labkit.engine import Engine, resolve_device, seed_everything
from labkit.engine.optim import build_optimizer
from labkit.models import describe_model
from labkit.tracking import ConsoleTracker, FileTracker, TrackerGroup, WandbTracker, config_tree

log = logging.getLogger(__name__)


def resolve_precision(precision: str, device: torch.device) -> str:
    """bf16 autocast only where the device runs it well; fp32 everywhere else (e.g. CPU)."""
    if precision == "bf16" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def hydra_job_info() -> dict[str, Any]:
    """Override string and sweep folder of the current Hydra job (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return {}
    return {
        "overrides": hc.job.override_dirname or "defaults",
        "sweep_dir": Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None,
    }


def build_trackers(cfg: DictConfig, run_dir: Path, console: Console) -> TrackerGroup:
    """Console and run-directory files always; W&B when a ``logger.wandb`` node exists."""
    trackers = [ConsoleTracker(console), FileTracker(run_dir)]
    wandb_cfg = OmegaConf.select(cfg, "logger.wandb")
    if wandb_cfg is not None:
        job = hydra_job_info()
        trackers.append(WandbTracker(
            run_dir,
            project=wandb_cfg.project,
            entity=wandb_cfg.entity,
            group=wandb_cfg.group or job.get("sweep_dir"),
            name=wandb_cfg.name or job.get("overrides"),
            job_type=wandb_cfg.job_type,
            tags=list(wandb_cfg.tags or []),
            mode=wandb_cfg.mode,
        ))
    return TrackerGroup(trackers)


def build_optimization(cfg: DictConfig, model: torch.nn.Module):
    """Optimizer and (optional) scheduler from their partial configs."""
    optimizer = build_optimizer(instantiate(cfg.optimizer), model, cfg.trainer.fused_optimizer)
    scheduler_cfg = OmegaConf.select(cfg, "scheduler")
    scheduler = instantiate(scheduler_cfg)(optimizer=optimizer) if scheduler_cfg else None
    return optimizer, scheduler


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one model as configured; returns the summary (also in summary.json)."""
    validate_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    console = Console()
    console.print(config_tree(cfg))

    log.info("building data <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    datamodule.setup(device)
    log.info("building model <%s>", cfg.model._target_)
    model = instantiate(cfg.model).to(device)
    optimizer, scheduler = build_optimization(cfg, model)

    info = {
        **describe_model(model),
        "device": str(device),
        "precision": precision,
        "train_size": datamodule.split_size("train"),
        "val_size": datamodule.split_size("val"),
        "test_size": datamodule.split_size("test"),
    }
    trackers = build_trackers(cfg, run_dir, console)
    generator = torch.Generator(device=device).manual_seed(int(cfg.trainer.seed))
    engine = Engine(
        model,
        optimizer,
        scheduler,
        device=device,
        epochs=cfg.trainer.epochs,
        trackers=trackers,
        checkpoint_dir=run_dir / "checkpoints" if cfg.trainer.checkpoint else None,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        precision=precision,
        grad_clip=cfg.trainer.grad_clip,
        extra_state={"config": OmegaConf.to_container(cfg, resolve=True)},
    )
    val_loader = datamodule.loader("val") if datamodule.split_size("val") else None
    trackers.start(OmegaConf.to_container(cfg, resolve=True), info)
    status = "failed"
    try:
        start = time.perf_counter()
        engine.fit(datamodule.loader("train", generator), val_loader)
        if cfg.trainer.test_on == "best":
            engine.load_best()
        test = engine.evaluate(datamodule.loader("test"))
        summary = {
            "status": "completed",
            "test_acc": test["acc"],
            "test_loss": test["loss"],
            "best_val_acc": engine.best_val_acc,
            "best_epoch": engine.best_epoch,
            "final_val_acc": engine.history[-1].get("val_acc"),
            "final_train_loss": engine.history[-1]["train_loss"],
            "epochs_completed": engine.epoch,
            "train_time_s": engine.train_time_s,
            "train_images_per_s": engine.throughput,
            "total_time_s": time.perf_counter() - start,
            "test_on": cfg.trainer.test_on,
            **info,
        }
        trackers.log_summary(summary)
        status = "completed"
    finally:
        trackers.finish(status)
    return summary

"""What `python train.py` does: build everything from the config, fit, test, report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from labkit import __version__
from labkit.analysis.callbacks import analysis_callbacks
from labkit.config.validate import validate_config
from labkit.engine import Engine, distributed, load_checkpoint, resolve_device, seed_everything
from labkit.engine.accel import accelerate, resolve_precision  # resolve_precision: re-exported
from labkit.engine.optim import build_optimizer
from labkit.errors import RunInterrupted
from labkit.models import describe_model
from labkit.tracking import ConsoleTracker, FileTracker, TrackerGroup, WandbTracker, config_tree

log = logging.getLogger(__name__)


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


def build_trackers(
    cfg: DictConfig, run_dir: Path, console: Console, *, job_type: str | None = None,
    group: str | None = None, name: str | None = None,
) -> TrackerGroup:
    """Console and run-directory files always; W&B when a ``logger.wandb`` node exists.

    ``job_type`` / ``group`` / ``name`` override the config, for entry points that log several
    W&B runs per job (distill.py: one per stage, all in one group).
    """
    trackers = [ConsoleTracker(console), FileTracker(run_dir)]
    wandb_cfg = OmegaConf.select(cfg, "logger.wandb")
    if wandb_cfg is not None:
        job = hydra_job_info()
        trackers.append(WandbTracker(
            run_dir,
            project=wandb_cfg.project,
            entity=wandb_cfg.entity,
            group=group or wandb_cfg.group or job.get("sweep_dir"),
            name=name or wandb_cfg.name or job.get("overrides"),
            job_type=job_type or wandb_cfg.job_type,
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
        if summary.get("status") == "completed":
            return summary
    return None


def fit_and_test(engine: Engine, train_loader, val_loader, test_loader, test_on: str) -> dict[str, Any]:
    """Fit, put back the weights to test (``best`` or ``last``), test: the summary's core fields."""
    start = time.perf_counter()
    engine.fit(train_loader, val_loader)
    if test_on == "best":
        engine.load_best()
    test = engine.evaluate(test_loader)
    return {
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
        "test_on": test_on,
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one model as configured; returns the summary (also in summary.json)."""
    validate_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ctx = distributed.context(OmegaConf.select(cfg, "trainer.strategy", default="auto"))
    device = distributed.rank_device(resolve_device(cfg.trainer.device), ctx)
    precision = resolve_precision(cfg.trainer.precision, device)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    console = Console(quiet=not ctx.is_main)  # under torchrun only rank 0 talks
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
    datamodule.setup(device)
    log.info("building model <%s>", cfg.model._target_)
    model = distributed.prepare_model(instantiate(cfg.model), ctx, cfg.trainer.get("sync_batchnorm", False))
    model = model.to(device)
    compile_model = bool(OmegaConf.select(cfg, "trainer.compile", default=False))
    fast_path = accelerate(model, device, compile=compile_model, deterministic=cfg.trainer.deterministic)
    optimizer, scheduler = build_optimization(cfg, model)

    info = {
        **describe_model(model),
        "device": str(device),
        "precision": precision,
        "fast_path": ", ".join(name for name, on in fast_path.items() if on) or "off",
        "train_size": datamodule.split_size("train"),
        "val_size": datamodule.split_size("val"),
        "test_size": datamodule.split_size("test"),
    }
    trackers = build_trackers(cfg, run_dir, console) if ctx.is_main else TrackerGroup()
    generator = torch.Generator(device=device).manual_seed(int(cfg.trainer.seed))
    shard = {"rank": ctx.rank, "world_size": ctx.world_size}
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
        callbacks=analysis_callbacks(cfg, datamodule, run_dir) if ctx.is_main else [],
        dist=ctx,
        extra_state={"config": OmegaConf.to_container(cfg, resolve=True),
                     "labkit_version": __version__},
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
        train_loader = datamodule.loader(
            "train", generator, augment_generator=distributed.augment_generator(cfg, ctx, device), **shard)
        summary = {**fit_and_test(engine, train_loader, val_loader, datamodule.loader("test", **shard),
                                  cfg.trainer.test_on), **info}
        trackers.log_summary(summary)
        status = "completed"
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

"""What `python distill.py` does: teacher, baseline student, distilled student, comparison.

All three stages go through the same :class:`~labkit.engine.Engine`; only the criterion
differs. Both students start from one fresh initialisation (the same weights, verified by
fingerprint) and see the same batches in the same order, so the only difference between them
is the soft-target term.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from labkit.config.validate import validate_config
from labkit.distill.loss import check_kd_params, kd_loss
from labkit.distill.report import write_comparison
from labkit.distill.stages import (
    load_stage,
    model_state_from_checkpoint,
    save_stage,
    stage_path,
    stage_settings,
    weights_sha256,
)
from labkit.distill.teacher import CachedTeacher, LiveTeacher, teacher_outputs
from labkit.engine import distributed, seed_everything
from labkit.engine.checkpoint import load_model_weights
from labkit.engine.engine import Criterion
from labkit.errors import ConfigError
from labkit.run import PreparedModel, Runtime, build_engine, build_model, build_trackers, fit_and_test
from labkit.tracking import TrackerGroup, config_tree, write_json

log = logging.getLogger(__name__)


class DistillationCriterion:
    """The engine criterion of the distilled student: :func:`kd_loss` against the teacher's
    logits for the same samples."""

    def __init__(self, teacher: CachedTeacher | LiveTeacher, temperature: float, alpha: float,
                 label_smoothing: float = 0.0) -> None:
        check_kd_params(temperature, alpha)
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)
        self.label_smoothing = float(label_smoothing or 0.0)

    def __call__(self, logits: torch.Tensor, batch) -> torch.Tensor:
        return kd_loss(logits, self.teacher(batch), batch.targets, self.temperature, self.alpha,
                       self.label_smoothing)


def validate_distill_config(cfg: DictConfig) -> None:
    """The distill.py schema (``teacher`` and ``student`` are model configs, ``distill.*``)."""
    for role in ("teacher", "student"):
        if OmegaConf.select(cfg, role) is None:
            raise ConfigError(f"{role} is missing: choose a model config with model@{role}=NAME")
    validate_config(cfg, "distill")


@dataclass
class Context:
    """What every stage shares: config, run directory, runtime (device, fast path), data."""

    cfg: DictConfig
    run_dir: Path
    rt: Runtime
    datamodule: Any
    console: Console
    wandb_group: str
    ran: list[str] = field(default_factory=list)

    def loader(self, split: str, generator: torch.Generator | None = None):
        """This rank's loader over ``split`` (the whole split in a single process)."""
        dist, device = self.rt.dist, self.rt.device
        aug = distributed.augment_generator(self.cfg, dist, device) if split == "train" else None
        return self.datamodule.loader(split, generator, rank=dist.rank, world_size=dist.world_size,
                                      augment_generator=aug)

    def trackers(self, stage: str):
        """Console, files and W&B for ``stage`` on rank 0; nothing on the other ranks."""
        if not self.rt.dist.is_main:
            return TrackerGroup()
        return build_trackers(self.cfg, self.run_dir / stage, self.console, job_type=stage,
                              group=self.wandb_group, name=f"{self.wandb_group}/{stage}")

    @property
    def seed(self) -> int:
        return int(self.cfg.trainer.seed)


def build_role(ctx: Context, role: str) -> PreparedModel:
    """The ``teacher`` or ``student`` model, on the device with the run's fast path."""
    return build_model(ctx.cfg[role], ctx.rt, role)


def stage_info(ctx: Context, stage: str, model: PreparedModel) -> dict[str, Any]:
    """The stage's model table: the same fields as a train.py run's, plus the stage name."""
    return {
        "stage": stage,
        **model.info(),
        "train_size": ctx.datamodule.split_size("train"),
        "val_size": ctx.datamodule.split_size("val"),
        "test_size": ctx.datamodule.split_size("test"),
    }


def _val_loader(ctx: Context):
    return ctx.loader("val") if ctx.datamodule.split_size("val") else None


def train_stage(ctx: Context, stage: str, model: PreparedModel, criterion: Criterion | None = None,
                extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit ``model`` with ``criterion`` through the engine, test it, log it as W&B job ``stage``."""
    cfg, stage_dir = ctx.cfg, ctx.run_dir / stage
    (stage_dir / "metrics.jsonl").unlink(missing_ok=True)  # rows of an interrupted attempt
    info = {**stage_info(ctx, stage, model), **(extra or {})}
    trackers = ctx.trackers(stage)
    # the same random stream for every stage: identical batch order and dropout masks
    seed_everything(ctx.seed, cfg.trainer.deterministic)
    generator = torch.Generator(device=ctx.rt.device).manual_seed(ctx.seed)
    train_loader = ctx.loader("train", generator)
    engine = build_engine(cfg, model, ctx.rt, steps_per_epoch=len(train_loader), criterion=criterion,
                          trackers=trackers,
                          checkpoint_dir=stage_dir / "checkpoints",
                          extra_state={"config": OmegaConf.to_container(cfg, resolve=True), "stage": stage})
    ctx.console.rule(f"[bold]{stage}")
    trackers.start(OmegaConf.to_container(cfg, resolve=True), info)
    status = "failed"
    try:
        summary = {**fit_and_test(engine, train_loader, _val_loader(ctx), ctx.loader("test"),
                                  cfg.trainer.test_on, ctx.datamodule.num_classes), **info}
        trackers.log_summary(summary)
        status = summary["status"]
    finally:
        trackers.finish(status)
    return summary, engine.history


def evaluate_stage(ctx: Context, stage: str, model: PreparedModel, source: str) -> dict[str, Any]:
    """Test a model that was loaded, not trained (the teacher from ``distill.teacher_ckpt``)."""
    engine = build_engine(ctx.cfg, model, ctx.rt, train=False)
    info = {**stage_info(ctx, stage, model), "source": source}
    trackers = ctx.trackers(stage)
    ctx.console.rule(f"[bold]{stage} (loaded from {source})")
    trackers.start(OmegaConf.to_container(ctx.cfg, resolve=True), info)
    status = "failed"
    try:
        val_loader = _val_loader(ctx)
        val = engine.evaluate(val_loader) if val_loader is not None else {"acc": None}
        test = engine.evaluate(ctx.loader("test"))
        summary = {"status": "loaded", "test_acc": test["acc"], "test_loss": test["loss"],
                   "best_val_acc": val["acc"], "epochs_completed": 0, **info}
        trackers.log_summary(summary)
        status = "completed"
    finally:
        trackers.finish(status)
    return summary


def run_teacher(ctx: Context) -> dict[str, Any]:
    """Stage 1: train the teacher, or load ``distill.teacher_ckpt`` and evaluate it."""
    settings = stage_settings(ctx.cfg, "teacher")
    if stage_path(ctx.run_dir, "teacher").is_file() and not ctx.cfg.distill.force:
        return skip(ctx, "teacher", settings)
    seed_everything(ctx.seed, ctx.cfg.trainer.deterministic)
    teacher = build_role(ctx, "teacher")
    ckpt = ctx.cfg.distill.teacher_ckpt
    if ckpt:
        load_model_weights(teacher.module, model_state_from_checkpoint(ckpt), ckpt)
        summary, history = evaluate_stage(ctx, "teacher", teacher, str(ckpt)), []
    else:
        summary, history = train_stage(ctx, "teacher", teacher)
    summary["weights_sha256"] = weights_sha256(teacher.module.state_dict())
    if ctx.rt.dist.is_main:
        save_stage(ctx.run_dir, "teacher", teacher.module, summary, history, settings)
    ctx.ran.append("teacher")
    return {"summary": summary, "history": history, "model": teacher.module.state_dict()}


def fresh_student_state(ctx: Context) -> dict[str, torch.Tensor]:
    """The one initialisation both students start from (seeded, built once, copied)."""
    seed_everything(ctx.seed, ctx.cfg.trainer.deterministic)
    return copy.deepcopy(instantiate(ctx.cfg.student).state_dict())


def run_student(ctx: Context, stage: str, init_state: dict[str, torch.Tensor],
                teacher_record: dict[str, Any]) -> dict[str, Any]:
    """Stage 2 (``student_baseline``: hard labels) or 3 (``student_distill``: + soft targets)."""
    cfg = ctx.cfg
    settings = stage_settings(cfg, stage)
    init_sha = weights_sha256(init_state)
    teacher_sha = teacher_record["summary"]["weights_sha256"]
    if stage_path(ctx.run_dir, stage).is_file() and not cfg.distill.force:
        record = skip(ctx, stage, settings)
        stale = record["summary"].get("initial_weights_sha256") != init_sha or (
            stage == "student_distill" and record["summary"].get("teacher_sha256") != teacher_sha)
        if not stale:
            return record
        ctx.console.print(f"{stage}: its teacher or initial weights changed since it ran; training "
                          f"it again", highlight=False)
    student = build_role(ctx, "student")
    student.module.load_state_dict(init_state)
    extra: dict[str, Any] = {"initial_weights_sha256": init_sha}
    criterion = None  # the run's hard-label loss (criterion_for the config)
    if stage == "student_distill":
        teacher = build_role(ctx, "teacher")
        teacher.module.load_state_dict(teacher_record["model"])
        outputs = teacher_outputs(teacher.module, ctx.datamodule, cfg.distill.cache_teacher,
                                  teacher.fast_path.precision)
        criterion = DistillationCriterion(outputs, cfg.distill.temperature, cfg.distill.alpha,
                                          OmegaConf.select(cfg, "trainer.label_smoothing", default=0.0))
        extra.update({"temperature": float(cfg.distill.temperature), "alpha": float(cfg.distill.alpha),
                      "teacher_outputs": "cached" if outputs.cached else "live",
                      "teacher_sha256": teacher_sha})
    summary, history = train_stage(ctx, stage, student, criterion, extra)
    if ctx.rt.dist.is_main:
        save_stage(ctx.run_dir, stage, student.module, summary, history, settings)
    ctx.ran.append(stage)
    return {"summary": summary, "history": history}


def skip(ctx: Context, stage: str, settings: dict[str, Any]) -> dict[str, Any]:
    path = stage_path(ctx.run_dir, stage)
    record = load_stage(ctx.run_dir, stage, settings)
    ctx.console.print(f"{stage}: {path} exists, not training it again (distill.force=true retrains)",
                      highlight=False)
    return record


def wandb_group_name(cfg: DictConfig, run_dir: Path) -> str:
    """One W&B group per distillation job: the configured group, else the run directory."""
    group = OmegaConf.select(cfg, "logger.wandb.group")
    if group:
        return str(group)
    try:
        return str(run_dir.resolve().relative_to(Path(cfg.paths.log_dir).resolve()))
    except ValueError:
        return run_dir.name


def distill(cfg: DictConfig) -> dict[str, Any]:
    """Run the three stages (skipping finished ones), write the comparison; returns the summary."""
    validate_distill_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rt = Runtime.from_config(cfg.trainer)
    console = Console(quiet=not rt.dist.is_main)  # under torchrun only rank 0 talks
    console.print(config_tree(cfg))
    log.info("building data <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    datamodule.setup(rt.device)
    ctx = Context(cfg, run_dir, rt, datamodule, console, wandb_group_name(cfg, run_dir))

    teacher = run_teacher(ctx)
    init_state = fresh_student_state(ctx)
    results = {
        "teacher": teacher,
        "student_baseline": run_student(ctx, "student_baseline", init_state, teacher),
        "student_distill": run_student(ctx, "student_distill", init_state, teacher),
    }
    summary = combined_summary(results, ctx.ran)
    if not rt.dist.is_main:
        return summary
    write_json(run_dir / "summary.json", summary)
    write_comparison(run_dir, {k: v["summary"] for k, v in results.items()},
                     {k: v["history"] for k, v in results.items()}, console)
    return summary


def combined_summary(results: dict[str, dict[str, Any]], ran: list[str]) -> dict[str, Any]:
    """The job's summary.json: each stage's headline figures, prefixed by the stage name."""
    from labkit.distill.report import gap_closed

    diverged = [stage for stage, record in results.items() if record["summary"].get("status") == "diverged"]
    summary: dict[str, Any] = {"status": "diverged" if diverged else "completed", "stages_run": list(ran)}
    if diverged:
        summary["warning"] = f"the training loss diverged in {', '.join(diverged)}"
    for stage, record in results.items():
        for key in ("test_acc", "test_loss", "best_val_acc", "params", "train_time_s"):
            summary[f"{stage}_{key}"] = record["summary"].get(key)
    distilled = results["student_distill"]["summary"]
    summary.update({
        "temperature": distilled.get("temperature"),
        "alpha": distilled.get("alpha"),
        "teacher_outputs": distilled.get("teacher_outputs"),
        "distill_gain_pp": 100 * (distilled["test_acc"] - results["student_baseline"]["summary"]["test_acc"]),
        "gap_closed_pct": gap_closed(results["teacher"]["summary"]["test_acc"],
                                     results["student_baseline"]["summary"]["test_acc"],
                                     distilled["test_acc"]),
        "same_initial_weights": results["student_baseline"]["summary"].get("initial_weights_sha256")
        == distilled.get("initial_weights_sha256"),
    })
    return summary

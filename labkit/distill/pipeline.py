"""What `python distill.py` does: teacher, baseline student, distilled student, comparison.

All three stages go through the one stage runner (:mod:`labkit.runner`) and the same
:class:`~labkit.engine.Engine`; only the criterion differs. Both students start from one fresh
initialisation (the same weights, verified by fingerprint) and see the same batches in the same
order, so the only difference between them is the distillation term (``distill.method``: KD's
soft targets, FitNet's hints, ...). A stage whose ``<stage>.pth`` exists is reused, not rerun.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from labkit.config.validate import validate_config
from labkit.distill.criterion import DistillationCriterion, DistilledStudent
from labkit.distill.methods import (
    DistillMethod,
    build_methods,
    ce_weight,
    method_label,
    method_names,
    needs_features,
    probe_shapes,
)
from labkit.distill.report import gap_closed, write_comparison
from labkit.distill.stages import (
    load_stage,
    save_stage,
    stage_settings,
    stored_stage_path,
    teacher_config,
    teacher_seed,
    weights_sha256,
)
from labkit.distill.teacher import teacher_outputs
from labkit.engine import seed_everything
from labkit.engine.checkpoint import load_model_weights
from labkit.engine.engine import Criterion
from labkit.run import PreparedModel, Runtime, build_model
from labkit.run_folder import COMPLETED, DIVERGED, load_model_state, stage_path
from labkit.runner import RunData, StageRun, open_stage, run_evaluation, run_training
from labkit.tracking import config_tree, write_json

log = logging.getLogger(__name__)


def distill(cfg: DictConfig) -> dict[str, Any]:
    """Run the three stages (skipping finished ones), write the comparison; returns the summary."""
    validate_config(cfg, "distill")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rt = Runtime.from_config(cfg.trainer)
    console = Console(quiet=not rt.dist.is_main)  # under torchrun only rank 0 talks
    console.print(config_tree(cfg))
    ctx = Context(cfg, run_dir, RunData.build(cfg, rt), console, wandb_group_name(cfg, run_dir))
    check_methods_apply(ctx)

    teacher = run_teacher(ctx)
    init_state = fresh_student_state(ctx)
    outcomes = {
        "teacher": teacher,
        "student_baseline": run_student(ctx, "student_baseline", init_state, teacher.record),
        "student_distill": run_student(ctx, "student_distill", init_state, teacher.record),
    }
    summary = combined_summary(outcomes)
    if not rt.dist.is_main:
        return summary
    write_json(run_dir / "summary.json", summary)
    write_comparison(run_dir, {k: v.record["summary"] for k, v in outcomes.items()},
                     {k: v.record["history"] for k, v in outcomes.items()}, console)
    return summary


@dataclass
class Context:
    """What every stage shares: config, run directory, data (on the job's runtime), console."""

    cfg: DictConfig
    run_dir: Path
    data: RunData
    console: Console
    wandb_group: str

    @property
    def rt(self) -> Runtime:
        return self.data.rt

    @property
    def seed(self) -> int:
        return int(self.cfg.trainer.seed)

    def stage_run(self, stage: str, info: dict[str, Any]) -> StageRun:
        """``<run>/<stage>/``, logged as W&B job ``stage`` in the job's group."""
        return open_stage(self.cfg, self.rt, self.run_dir / stage, self.console, info, job_type=stage,
                          group=self.wandb_group, name=f"{self.wandb_group}/{stage}")


@dataclass
class Outcome:
    """A stage's record (``summary``, ``history``; the teacher's also its ``model`` weights) and
    whether this job ran it (False: reused from the run folder or from a stage store)."""

    record: dict[str, Any]
    ran: bool = False


def run_teacher(ctx: Context) -> Outcome:
    """Stage 1: train the teacher, or load ``distill.teacher_ckpt`` and evaluate it, or reuse the
    one a ``distill.stage_store`` holds for the same settings."""
    settings = stage_settings(ctx.cfg, "teacher")
    if stage_path(ctx.run_dir, "teacher").is_file() and not ctx.cfg.distill.force:
        return Outcome(skip(ctx, "teacher", settings))
    ckpt = ctx.cfg.distill.teacher_ckpt
    stored = from_store(ctx, "teacher", settings) if not ckpt else None
    if stored is not None:
        return Outcome(stored)
    seed = teacher_seed(ctx.cfg)
    seed_everything(seed, ctx.cfg.trainer.deterministic)
    teacher = build_role(ctx, "teacher")
    if ckpt:  # any labkit checkpoint or state dict, DDP / compile prefixes stripped
        load_model_weights(teacher.module, load_model_state(ckpt), ckpt)
        summary, history = evaluate_stage(ctx, "teacher", teacher, str(ckpt)), []
    else:  # with its own seed and number of epochs (distill.teacher_seed / teacher_epochs)
        summary, history = train_stage(replace(ctx, cfg=teacher_config(ctx.cfg)), "teacher", teacher,
                                       extra={"seed": seed}, seed=seed)
    summary["weights_sha256"] = weights_sha256(teacher.module.state_dict())
    save(ctx, "teacher", teacher.module, summary, history, settings, to_store=not ckpt)
    return Outcome({"summary": summary, "history": history, "model": teacher.module.state_dict()}, ran=True)


def run_student(ctx: Context, stage: str, init_state: dict[str, torch.Tensor],
                teacher_record: dict[str, Any]) -> Outcome:
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
            return Outcome(record)
        ctx.console.print(f"{stage}: its teacher or initial weights changed since it ran; training "
                          f"it again", highlight=False)
    if stage == "student_baseline":
        stored = from_store(ctx, stage, settings)
        if stored is not None and stored["summary"].get("initial_weights_sha256") == init_sha:
            return Outcome(stored)
    student = build_role(ctx, "student")
    student.module.load_state_dict(init_state)
    extra: dict[str, Any] = {"initial_weights_sha256": init_sha, "seed": ctx.seed}
    criterion = None  # the run's hard-label loss (criterion_for the config)
    trained = student
    if stage == "student_distill":
        teacher = build_role(ctx, "teacher")
        teacher.module.load_state_dict(teacher_record["model"])
        trained, criterion, info = distillation_setup(ctx, teacher, student)
        extra.update({**info, "teacher_sha256": teacher_sha})
    summary, history = train_stage(ctx, stage, trained, criterion, extra)
    save(ctx, stage, student.module, summary, history, settings, to_store=stage == "student_baseline")
    return Outcome({"summary": summary, "history": history}, ran=True)


def fresh_student_state(ctx: Context) -> dict[str, torch.Tensor]:
    """The one initialisation both students start from (seeded, built once, copied)."""
    seed_everything(ctx.seed, ctx.cfg.trainer.deterministic)
    return copy.deepcopy(instantiate(ctx.cfg.student).state_dict())


def combined_summary(outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """The job's summary.json: each stage's headline figures, prefixed by the stage name."""
    results = {stage: outcome.record for stage, outcome in outcomes.items()}
    diverged = [stage for stage, record in results.items() if record["summary"].get("status") == DIVERGED]
    ran = [stage for stage, outcome in outcomes.items() if outcome.ran]
    summary: dict[str, Any] = {"status": DIVERGED if diverged else COMPLETED, "stages_run": ran}
    if diverged:
        summary["warning"] = f"the training loss diverged in {', '.join(diverged)}"
    for stage, record in results.items():
        for key in ("test_acc", "test_loss", "best_val_acc", "params", "train_time_s"):
            summary[f"{stage}_{key}"] = record["summary"].get(key)
    distilled = results["student_distill"]["summary"]
    summary.update({
        "seed": results["student_baseline"]["summary"].get("seed"),
        "data_fingerprint": results["student_baseline"]["summary"].get("data_fingerprint"),
        "method": distilled.get("method"),
        "method_label": distilled.get("method_label"),
        "method_settings": distilled.get("method_settings"),
        "temperature": distilled.get("temperature"),
        "alpha": distilled.get("alpha"),
        "teacher_outputs": distilled.get("teacher_outputs"),
        "distill_gain_pp": 100 * (distilled["test_acc"] - results["student_baseline"]["summary"]["test_acc"]),
        "gap_closed_pct": gap_closed(results["teacher"]["summary"]["test_acc"],
                                     results["student_baseline"]["summary"]["test_acc"],
                                     distilled["test_acc"]),
        "student_distill_training_params": distilled.get("training_params", distilled.get("params")),
        "same_initial_weights": results["student_baseline"]["summary"].get("initial_weights_sha256")
        == distilled.get("initial_weights_sha256"),
    })
    return summary


def build_role(ctx: Context, role: str) -> PreparedModel:
    """The ``teacher`` or ``student`` model, on the device with the run's fast path."""
    return build_model(ctx.cfg[role], ctx.rt, role)


def stage_info(ctx: Context, stage: str, model: PreparedModel) -> dict[str, Any]:
    """The stage's model table: the same fields as a train.py run's, plus the stage name. For a
    distilled student, the deployed student's (connectors are counted in ``training_params``)."""
    if isinstance(model.module, DistilledStudent):
        model = PreparedModel(model.module.student, model.fast_path, model.device)
    return {"stage": stage, **model.info(), **ctx.data.sizes()}


def train_stage(ctx: Context, stage: str, model: PreparedModel, criterion: Criterion | None = None,
                extra: dict[str, Any] | None = None, seed: int | None = None
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit and test ``model`` with ``criterion`` through the stage runner, in ``<run>/<stage>/``
    (``seed``: default ``trainer.seed``)."""
    seed = ctx.seed if seed is None else seed
    run = ctx.stage_run(stage, {**stage_info(ctx, stage, model), **(extra or {})})
    ctx.console.rule(f"[bold]{stage}")
    # the same random stream for every stage: identical batch order and dropout masks
    seed_everything(seed, ctx.cfg.trainer.deterministic)
    return run_training(ctx.cfg, ctx.data, model, run, seed=seed, criterion=criterion,
                        extra_state={"stage": stage})


def evaluate_stage(ctx: Context, stage: str, model: PreparedModel, source: str) -> dict[str, Any]:
    """Test a model that was loaded, not trained (the teacher from ``distill.teacher_ckpt``)."""
    run = ctx.stage_run(stage, {**stage_info(ctx, stage, model), "source": source})
    ctx.console.rule(f"[bold]{stage} (loaded from {source})")
    return run_evaluation(ctx.cfg, ctx.data, model, run)


def skip(ctx: Context, stage: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The record of a stage this run folder already finished (refused if made with other settings)."""
    record = load_stage(ctx.run_dir, stage, settings)
    ctx.console.print(f"{stage}: {stage_path(ctx.run_dir, stage)} exists, not training it again "
                      f"(distill.force=true retrains)", highlight=False)
    return record


def from_store(ctx: Context, stage: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record ``distill.stage_store`` keeps for ``stage`` made with ``settings``, if any."""
    store = ctx.cfg.distill.stage_store
    path = stored_stage_path(store, stage, settings) if store else None
    if path is None or not path.is_file() or ctx.cfg.distill.force:
        return None
    record = load_stage(ctx.run_dir, stage, settings, path=path)
    record["summary"] = {**record["summary"], "reused_from": str(path)}
    ctx.console.print(f"{stage}: reusing {path} (same settings; trained by an earlier job)", highlight=False)
    return record


def save(ctx: Context, stage: str, model: nn.Module, summary: dict[str, Any],
         history: list[dict[str, Any]], settings: dict[str, Any], to_store: bool = False) -> None:
    """Write ``<stage>.pth`` (rank 0), and a copy into ``distill.stage_store`` when asked."""
    if not ctx.rt.dist.is_main:
        return
    save_stage(ctx.run_dir, stage, model, summary, history, settings)
    store = ctx.cfg.distill.stage_store
    if to_store and store:
        save_stage(ctx.run_dir, stage, model, summary, history, settings,
                   path=stored_stage_path(store, stage, settings))


def check_methods_apply(ctx: Context) -> None:
    """Fail before any training when a feature method cannot apply to the configured pair."""
    if needs_features(ctx.cfg.distill.method):
        example = example_inputs(ctx).cpu().float()
        distillation_terms(ctx.cfg, instantiate(ctx.cfg.teacher), instantiate(ctx.cfg.student), example)


def distillation_setup(ctx: Context, teacher: PreparedModel, student: PreparedModel
                       ) -> tuple[PreparedModel, Criterion, dict[str, Any]]:
    """The module the engine trains (the student with the methods' connectors), its criterion,
    and the summary fields that name the method and its settings."""
    cfg = ctx.cfg
    seed_everything(ctx.seed, cfg.trainer.deterministic)  # connectors: the same initial weights every run
    was_training = student.module.training
    methods = distillation_terms(cfg, teacher.module, student.module, example_inputs(ctx))
    student.module.train(was_training)
    wrapper = None
    if DistilledStudent.needed(methods):
        wrapper = DistilledStudent(student.module, methods).to(ctx.rt.device)
        if student.fast_path.channels_last:
            wrapper.methods.to(memory_format=torch.channels_last)
    total_steps = int(cfg.trainer.epochs) * len(ctx.data.loader("train"))
    for method in methods:
        if hasattr(method, "set_total_steps"):
            method.set_total_steps(total_steps)
    points = sorted({t for m in methods for t, _ in m.pairs})
    outputs = teacher_outputs(teacher.module, ctx.data.datamodule, cfg.distill.cache_teacher,
                              teacher.fast_path.precision, points)
    weight = ce_weight(OmegaConf.to_container(cfg.distill, resolve=True))
    criterion = DistillationCriterion(outputs, methods, weight,
                                      OmegaConf.select(cfg, "trainer.label_smoothing", default=0.0), wrapper)
    connector_params = wrapper.extra_params() if wrapper is not None else 0
    info: dict[str, Any] = {
        "method": method_label(cfg.distill.method),
        "method_label": " + ".join(m.describe() for m in methods) + f"; CE x {weight:g}",
        "method_settings": {m.name: {**m.settings(), "feature_layers": [f"{t}:{s}" for t, s in m.pairs]}
                            if m.pairs else m.settings() for m in methods},
        "ce_weight": weight,
        "teacher_outputs": "cached" if outputs.cached else "live",
        "connector_params": connector_params,
        "training_params": student.info()["params"] + connector_params,
    }
    if "kd" in method_names(cfg.distill.method):  # the lab's KD fields, as before
        info.update({"temperature": float(cfg.distill.kd.temperature), "alpha": float(cfg.distill.kd.alpha)})
    trained = PreparedModel(wrapper, student.fast_path, student.device) if wrapper is not None else student
    return trained, criterion, info


def distillation_terms(cfg: DictConfig, teacher: nn.Module, student: nn.Module,
                       example: torch.Tensor) -> list[DistillMethod]:
    """The loss terms ``distill.method`` names for this pair; feature methods read the shapes at
    the models' declared points from one eval-mode pass over ``example``."""
    distill = OmegaConf.to_container(cfg.distill, resolve=True)
    shapes: tuple[dict, dict] = ({}, {})
    if needs_features(distill["method"]):
        shapes = probe_shapes(teacher, example), probe_shapes(student, example)
    return build_methods(distill, *shapes, teacher_name=f"the teacher ({type(teacher).__name__})",
                         student_name=f"the student ({type(student).__name__})")


def example_inputs(ctx: Context) -> torch.Tensor:
    """Two test images (the test loader draws no random numbers), to probe feature shapes."""
    return next(iter(ctx.data.datamodule.loader("test"))).inputs[:2]


def wandb_group_name(cfg: DictConfig, run_dir: Path) -> str:
    """One W&B group per distillation job: the configured group, else the run directory."""
    group = OmegaConf.select(cfg, "logger.wandb.group")
    if group:
        return str(group)
    try:
        return str(run_dir.resolve().relative_to(Path(cfg.paths.log_dir).resolve()))
    except ValueError:
        return run_dir.name

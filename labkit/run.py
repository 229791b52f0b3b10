"""One way to build and fit a model, shared by every entry point (train, distill, eval, ...).

Device, process group, fast path, model, optimizer, engine and trackers are built here and
nowhere else, so ``trainer.precision``, ``trainer.compile``, ``trainer.sync_batchnorm`` and the
rest mean the same in every command, and every run reports the same ``precision`` /
``fast_path`` fields.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from labkit.config.device import resolve_device
from labkit.engine import Callback, Engine, cross_entropy, distributed
from labkit.engine.accel import FastPath, apply_fast_path, plan_fast_path
from labkit.engine.engine import Criterion, SmoothedCrossEntropy
from labkit.engine.optim import build_optimizer
from labkit.errors import ConfigError
from labkit.models import describe_model
from labkit.tracking import ConsoleTracker, FileTracker, TensorBoardTracker, TrackerGroup, WandbTracker

log = logging.getLogger(__name__)

#: a run whose last training loss is this many times its starting loss has diverged (a finite
#: blow-up, e.g. optimizer.lr=1e9: 2.7e30), even though no NaN stopped it
DIVERGED_FACTOR = 10.0


# Keys that provably cannot change what a run learns or how it tests: where things are read or
# written, what is logged and how often, the evaluation batch size (evaluation runs in eval mode,
# sample by sample), and the bookkeeping of resuming and of distillation. Every other key of the
# resolved config is a result setting: a distillation stage is reused (labkit.distill.stages) and a
# checkpoint is resumed (labkit.training) only when all of them are unchanged, so a setting added
# later is covered the day it is added.
IGNORED_KEYS = (
    "task_name", "tags", "optimized_metric", "logger", "paths",
    "data.root", "data.download", "data.cache_dir", "data.eval_batch_size", "data.num_workers",
    "data.prefetch_factor",
    "trainer.log_every_n_steps", "trainer.checkpoint", "trainer.resume", "trainer.ckpt_path",
    "distill.stage_store", "distill.force",
)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and empty nodes stay values."""
    if not isinstance(node, dict) or (prefix and not node):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def under(key: str, prefixes: Sequence[str]) -> bool:
    """``key`` is one of ``prefixes`` or lies below one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


#: stands for a key that one of two compared configs does not have
ABSENT = object()


def setting_differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (recorded value, current value) for every setting that differs between two
    resolved configs (``hydra`` left out; an empty node, e.g. ``logger=none``, counts as no keys). A
    node only one side has is named once, at its top (``teacher``, not each of its keys), with
    :data:`ABSENT` on the other side."""
    sides = [{k: v for k, v in flatten({k: v for k, v in config.items() if k != "hydra"}).items() if v != {}}
             for config in (recorded, current)]
    differences: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(sides[0]) | set(sides[1])):
        values = tuple(side.get(key, ABSENT) for side in sides)
        if values[0] is ABSENT or values[1] is ABSENT:
            other = sides[1] if values[1] is ABSENT else sides[0]
            name = _top_absent(key, other)  # a whole node: {} stands for its values
            differences[name] = values if name == key else (*(ABSENT if v is ABSENT else {} for v in values),)
        elif values[0] != values[1]:
            differences[key] = values
    return differences


def _top_absent(key: str, other: dict[str, Any]) -> str:
    """The shortest prefix of ``key`` that no key of ``other`` lies under."""
    parts = key.split(".")
    for n in range(1, len(parts)):
        prefix = ".".join(parts[:n])
        if not any(under(k, (prefix,)) for k in other):
            return prefix
    return key


@dataclass(frozen=True)
class Runtime:
    """Where and how every model of one job runs: device, process group and trainer settings."""

    device: torch.device
    dist: distributed.DistContext
    precision: str = "auto"
    compile: bool = False
    deterministic: bool = False
    sync_batchnorm: bool = False

    @classmethod
    def from_config(cls, trainer: DictConfig, device: str | None = None,
                    single_process: bool = False) -> Runtime:
        """The runtime ``trainer`` (a ``trainer`` config node) asks for; ``device`` overrides
        ``trainer.device``; ``single_process`` ignores ``trainer.strategy`` (evaluation)."""
        strategy = "auto" if single_process else OmegaConf.select(trainer, "strategy", default="auto")
        dist = distributed.context(strategy)
        chosen = resolve_device(device or OmegaConf.select(trainer, "device", default="auto"))
        return cls(
            device=distributed.rank_device(chosen, dist),
            dist=dist,
            precision=str(OmegaConf.select(trainer, "precision", default="auto")),
            compile=bool(OmegaConf.select(trainer, "compile", default=False)),
            deterministic=bool(OmegaConf.select(trainer, "deterministic", default=False)),
            sync_batchnorm=bool(OmegaConf.select(trainer, "sync_batchnorm", default=False)),
        )


@dataclass
class PreparedModel:
    """A model on its device with its fast path switched on."""

    module: nn.Module
    fast_path: FastPath
    device: torch.device

    def info(self) -> dict[str, Any]:
        """The model table's fields: architecture, parameters, device, precision, fast path."""
        return {**describe_model(self.module), "device": str(self.device),
                "precision": self.fast_path.precision, "fast_path": self.fast_path.describe()}


def prepare_model(model: nn.Module, rt: Runtime) -> PreparedModel:
    """SyncBatchNorm under DDP when asked, move to the device, switch the fast path on."""
    model = distributed.prepare_model(model, rt.dist, rt.sync_batchnorm).to(rt.device)
    plan = plan_fast_path(rt.precision, rt.device, model, compile=rt.compile,
                          deterministic=rt.deterministic)
    return PreparedModel(apply_fast_path(model, plan), plan, rt.device)


def build_model(node: DictConfig, rt: Runtime, role: str = "model") -> PreparedModel:
    """Instantiate a model config node (``model``, ``teacher``, ``student``) and prepare it."""
    log.info("building %s <%s>", role, node._target_)
    return prepare_model(instantiate(node), rt)


def scheduler_interval(cfg: DictConfig) -> str:
    """``epoch`` (the default) or ``step``: how often the engine steps the LR schedule."""
    return str(OmegaConf.select(cfg, "scheduler.interval", default="epoch"))


def build_optimization(cfg: DictConfig, model: nn.Module, steps_per_epoch: int | None = None):
    """Optimizer and (optional) scheduler from their partial configs.

    A schedule with ``interval: step`` is stepped after every batch and gets its length as
    ``total_steps`` (epochs x ``steps_per_epoch``), e.g. torch's ``OneCycleLR``. ``max_lr: null``
    peaks each parameter group at its own lr (``optimizer=muon``: Muon's and the auxiliary's).
    """
    optimizer = build_optimizer(instantiate(cfg.optimizer), model, cfg.trainer.fused_optimizer)
    scheduler_cfg = OmegaConf.select(cfg, "scheduler")
    if not scheduler_cfg:
        return optimizer, None
    node = {k: v for k, v in OmegaConf.to_container(scheduler_cfg, resolve=True).items() if k != "interval"}
    if "max_lr" in node and node["max_lr"] is None:  # a plain list, not instantiate's ListConfig
        factory = functools.partial(instantiate({k: v for k, v in node.items() if k != "max_lr"}),
                                    max_lr=[group["lr"] for group in optimizer.param_groups])
    else:
        factory = instantiate(node)
    if scheduler_interval(cfg) == "step":
        if not steps_per_epoch:
            raise ValueError("a per-step schedule needs the number of steps per epoch")
        total_steps = int(cfg.trainer.epochs) * steps_per_epoch
        warmup_steps = float(node.get("pct_start", 0.0)) * total_steps
        if "pct_start" in node and warmup_steps <= 1:
            # OneCycleLR divides by (warm-up steps - 1): a warm-up of one step crashes it
            raise ConfigError(f"scheduler: a {total_steps}-step run gives a one-cycle warm-up of "
                              f"{warmup_steps:.1f} steps (pct_start={node['pct_start']}); it needs more than "
                              "one: train for more epochs, use a smaller batch, or raise scheduler.pct_start")
        return optimizer, factory(optimizer=optimizer, total_steps=total_steps)
    return optimizer, factory(optimizer=optimizer)


def ema_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """``trainer.ema`` as the engine's weight-average settings; None when its decay is null (off)."""
    node = OmegaConf.select(cfg, "trainer.ema")
    if node is None or node.get("decay") is None:
        return None
    return {"decay": float(node.decay), "start_step": int(node.start_step), "every": int(node.every)}


def criterion_for(cfg: DictConfig) -> Criterion:
    """The hard-label loss: cross-entropy, with ``trainer.label_smoothing`` when it is > 0."""
    smoothing = float(OmegaConf.select(cfg, "trainer.label_smoothing", default=0.0) or 0.0)
    return SmoothedCrossEntropy(smoothing) if smoothing > 0 else cross_entropy


def build_engine(cfg: DictConfig, prepared: PreparedModel, rt: Runtime, *, train: bool = True,
                 steps_per_epoch: int | None = None, criterion: Criterion | None = None,
                 trackers: TrackerGroup | None = None, checkpoint_dir: Path | None = None,
                 callbacks: list[Callback] | None = None,
                 extra_state: dict[str, Any] | None = None) -> Engine:
    """The engine for ``prepared``: with its optimizer and schedule (``train``; ``steps_per_epoch``
    is the training loader's length) or evaluation only. ``criterion`` defaults to
    :func:`criterion_for` the config."""
    optimizer, scheduler = (build_optimization(cfg, prepared.module, steps_per_epoch) if train
                            else (None, None))
    trainer = cfg.trainer
    return Engine(
        prepared.module, optimizer, scheduler,
        device=rt.device,
        epochs=trainer.epochs if train else 1,
        criterion=criterion or criterion_for(cfg),
        scheduler_interval=scheduler_interval(cfg),
        eval_flip=bool(OmegaConf.select(trainer, "eval_flip", default=False)),
        eval_translate=int(OmegaConf.select(trainer, "eval_translate", default=0)),
        ema=ema_settings(cfg) if train else None,
        trackers=trackers or TrackerGroup(),
        callbacks=callbacks or [],
        checkpoint_dir=checkpoint_dir if train and trainer.checkpoint else None,
        log_every_n_steps=trainer.log_every_n_steps,
        precision=prepared.fast_path.precision,
        grad_clip=trainer.grad_clip,
        extra_state=extra_state,
        dist=rt.dist,
    )


def hydra_job_info() -> dict[str, Any]:
    """Override string and list, group choices and sweep folder of the current Hydra job (empty
    outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return {}
    return {
        "overrides": hc.job.override_dirname or "defaults",
        "override_list": list(hc.overrides.task),
        "choices": dict(hc.runtime.choices),
        # mode is None in a config composed by the compose API (tests, notebooks)
        "sweep_dir": Path(hc.sweep.dir).name if getattr(hc.mode, "name", None) == "MULTIRUN" else None,
    }


#: overrides that say where results go, not what the run does: not hyper-parameters
NOT_HPARAMS = ("logger", "paths", "hydra")


def job_hparams(cfg: DictConfig, overrides: list[str], choices: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """The job's command-line overrides as hyper-parameters (TensorBoard's HParams tab).

    A config group maps to its chosen option (``model=cnn`` -> ``"cnn"``), a key to its value
    in the composed config (typed: ``model.depth=20`` -> ``20``); ``logger``, ``paths`` and
    ``hydra`` overrides and deletions (``~key``) are left out.
    """
    choices = choices or {}
    params: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        group = override.key_or_group
        key = f"{group}@{override.package}" if override.package else group  # model@teacher=cnn
        if override.is_delete() or group.split(".", 1)[0].split("/", 1)[0] in NOT_HPARAMS:
            continue
        if key in choices:
            params[key] = choices[key]
            continue
        value = OmegaConf.select(cfg, key, default=None)
        params[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return params


def build_trackers(
    cfg: DictConfig, run_dir: Path, console: Console, *, job_type: str | None = None,
    group: str | None = None, name: str | None = None,
) -> TrackerGroup:
    """Console and run-directory files always; then one tracker per node of ``logger``.

    ``logger=[wandb,tensorboard]`` composes both nodes (``logger.wandb``, ``logger.tensorboard``)
    and each builds its tracker; ``logger=none`` leaves ``logger`` empty. ``job_type`` / ``group`` /
    ``name`` override the config, for entry points that log several runs per job (distill.py: one
    per stage; ``job_type`` is the stage, which TensorBoard records as a hyper-parameter).
    """
    trackers = [ConsoleTracker(console), FileTracker(run_dir)]
    job = hydra_job_info()
    wandb_cfg = OmegaConf.select(cfg, "logger.wandb")
    if wandb_cfg is not None:
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
    tensorboard_cfg = OmegaConf.select(cfg, "logger.tensorboard")
    if tensorboard_cfg is not None:
        hparams = job_hparams(cfg, job.get("override_list", []), job.get("choices"))
        if job_type is not None:
            hparams["stage"] = job_type
        trackers.append(TensorBoardTracker(run_dir / "tensorboard", hparams=hparams,
                                           flush_secs=tensorboard_cfg.flush_secs))
    return TrackerGroup(trackers)


def divergence(history: list[dict[str, Any]], num_classes: int | None = None) -> str | None:
    """Why the run counts as diverged, or None.

    The start is the loss of an untrained classifier, ln(``num_classes``) (uniform predictions),
    or the first epoch's mean when the class count is unknown; the end is the last epoch's mean.
    """
    if not history:
        return None
    final = history[-1].get("train_loss")
    start = math.log(num_classes) if num_classes and num_classes > 1 else history[0].get("train_loss")
    if not isinstance(final, int | float) or not isinstance(start, int | float) or start <= 0:
        return None
    if math.isfinite(final) and final > DIVERGED_FACTOR * start:
        return (f"the training loss ended at {final:.4g}, more than {DIVERGED_FACTOR:g}x "
                f"where it started ({start:.4g}); lower optimizer.lr or set trainer.grad_clip")
    return None


def fit_and_test(engine: Engine, train_loader, val_loader, test_loader, test_on: str,
                 num_classes: int | None = None) -> dict[str, Any]:
    """Fit, put back the weights to test (``best`` or ``last``), test: the summary's core fields.

    ``status`` is ``completed``, or ``diverged`` (with a ``warning``) when :func:`divergence` says
    so: a finite blow-up must not read as a finished experiment.
    """
    if test_on == "best" and val_loader is None:  # validate_config refuses it; programs may not ask
        raise ConfigError("trainer.test_on=best needs validation data: set data.val_size > 0 or "
                          "trainer.test_on=last")
    start = time.perf_counter()
    engine.fit(train_loader, val_loader)
    engine.keep_weights(test_on)
    test = engine.evaluate(test_loader)
    diverged = divergence(engine.history, num_classes)
    return {
        "status": "diverged" if diverged else "completed",
        **({"warning": diverged} if diverged else {}),
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

"""The one stage runner: one model's loaders, trackers, fit, test, summary and failure record.

``train.py`` runs one stage; ``distill.py`` runs three (and evaluates a teacher it loads). Both go
through :func:`run_training` / :func:`run_evaluation`, so every stage folder holds the same files,
and a stage that raises leaves a ``failed`` (or ``interrupted``) summary.json behind, whichever
command ran it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from labkit import __version__, provenance
from labkit.engine import Callback, Engine, distributed, load_checkpoint
from labkit.engine.checkpoint import evaluated_weights
from labkit.engine.engine import Criterion
from labkit.run import PreparedModel, Runtime, build_engine, build_trackers, fit_and_test
from labkit.run_folder import CHECKPOINTS, COMPLETED, FAILED, LOADED, failure
from labkit.tracking import FileTracker, TrackerGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunData:
    """A job's data module, set up on its device: this rank's loaders and the split sizes."""

    cfg: DictConfig
    rt: Runtime
    datamodule: Any

    @classmethod
    def build(cls, cfg: DictConfig, rt: Runtime) -> RunData:
        log.info("building data <%s>", cfg.data._target_)
        datamodule = instantiate(cfg.data)
        datamodule.setup(rt.device)
        return cls(cfg, rt, datamodule)

    def loader(self, split: str, generator: torch.Generator | None = None):
        """This rank's loader over ``split`` (the whole split in a single process); under DDP each
        rank augments the training batches with its own stream."""
        dist, device = self.rt.dist, self.rt.device
        augment = distributed.augment_generator(self.cfg, dist, device) if split == "train" else None
        return self.datamodule.loader(split, generator, rank=dist.rank, world_size=dist.world_size,
                                      augment_generator=augment)

    def val_loader(self):
        """The validation loader, or None with ``data.val_size=0``."""
        return self.loader("val") if self.datamodule.split_size("val") else None

    def sizes(self) -> dict[str, int]:
        """The split sizes every summary reports."""
        sizes = {f"{split}_size": self.datamodule.split_size(split) for split in ("train", "val", "test")}
        return {**sizes, "data_fingerprint": self.datamodule.fingerprint}

    @property
    def num_classes(self) -> int:
        return self.datamodule.num_classes


@dataclass
class StageRun:
    """Where and how one stage reports: its folder (summary.json, metrics.jsonl, checkpoints/), its
    trackers, the summary's model-table fields, and the resolved config it logs and checkpoints."""

    folder: Path
    trackers: TrackerGroup
    info: dict[str, Any]
    config: dict[str, Any]


def open_stage(cfg: DictConfig, rt: Runtime, folder: Path, console: Console, info: dict[str, Any],
               **wandb: str | None) -> StageRun:
    """The stage's trackers on rank 0 (none on the other ranks); ``wandb``: W&B ``job_type`` /
    ``group`` / ``name`` for commands that log several runs per job."""
    trackers = build_trackers(cfg, folder, console, **wandb) if rt.dist.is_main else TrackerGroup()
    return StageRun(folder, trackers, info, OmegaConf.to_container(cfg, resolve=True))


@dataclass(frozen=True)
class Resume:
    """A checkpoint to continue from, and the best weights of its run (for the final test)."""

    path: Path
    state: dict[str, Any]

    def best_model(self) -> dict[str, Any] | None:
        best = self.path.with_name("best.pt")
        return evaluated_weights(load_checkpoint(best)) if best.is_file() else None


def run_training(cfg: DictConfig, data: RunData, model: PreparedModel, run: StageRun, *, seed: int,
                 criterion: Criterion | None = None, callbacks: Sequence[Callback] = (),
                extra_state: dict[str, Any] | None = None,
                resume: Resume | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit ``model`` (batch order drawn from ``seed``), test it, write the stage's files; returns
    the summary and the per-epoch history."""
    generator = torch.Generator(device=data.rt.device).manual_seed(seed)
    train_loader = data.loader("train", generator)
    stored = {"config": run.config, "labkit_version": __version__, **(extra_state or {})}
    engine = build_engine(cfg, model, data.rt, steps_per_epoch=len(train_loader), criterion=criterion,
                          trackers=run.trackers, checkpoint_dir=run.folder / CHECKPOINTS,
                          callbacks=list(callbacks), extra_state=stored)
    if resume is not None:
        engine.load_state_dict(resume.state, best_model=resume.best_model())

    def fit() -> dict[str, Any]:
        loaders = (train_loader, data.val_loader(), data.loader("test"))
        summary = fit_and_test(engine, *loaders, cfg.trainer.test_on, data.num_classes)
        return {**summary, **skipped_images(loaders)}

    return recorded(run, fit, engine), engine.history


def skipped_images(loaders: Sequence[Any]) -> dict[str, int]:
    """``skipped_images``: the unreadable files a streamed folder left out (``data.skip_bad_images``)
    in this process, for the summary; nothing for loaders that cannot skip."""
    counts = [loader.skipped for loader in loaders if hasattr(loader, "skipped")]
    return {"skipped_images": sum(counts)} if counts else {}


def run_evaluation(cfg: DictConfig, data: RunData, model: PreparedModel, run: StageRun) -> dict[str, Any]:
    """Test a model that was loaded, not trained (status ``loaded``; its validation accuracy is
    reported as ``best_val_acc``, there being one set of weights)."""
    engine = build_engine(cfg, model, data.rt, train=False)

    def test() -> dict[str, Any]:
        val_loader = data.val_loader()
        val = engine.evaluate(val_loader) if val_loader is not None else {"acc": None}
        test = engine.evaluate(data.loader("test"))
        return {"status": LOADED, "test_acc": test["acc"], "test_loss": test["loss"],
                "best_val_acc": val["acc"], "epochs_completed": 0}

    return recorded(run, test, engine)


def recorded(run: StageRun, body: Callable[[], dict[str, Any]], engine: Engine) -> dict[str, Any]:
    """Start the trackers, run ``body`` (fit and test, or test), log its summary. When it raises,
    log a ``failed`` / ``interrupted`` summary with the progress so far, then raise again."""
    record = provenance.start(run.folder) if run.trackers.trackers else {}  # rank 0 only
    run.trackers.start(run.config, run.info)
    for tracker in run.trackers.trackers:  # metrics.jsonl: the engine's epochs, not an earlier attempt's
        if isinstance(tracker, FileTracker):
            tracker.restart_from(engine.history)
    status = FAILED
    try:
        summary = {**body(), **run.info}
        run.trackers.log_summary(summary)
        status = summary["status"]
    except BaseException as exc:
        record = failure(exc)
        status = record["status"]
        run.trackers.log_summary({**record, "epochs_completed": len(engine.history),
                                  "best_val_acc": engine.best_val_acc, "train_time_s": engine.train_time_s,
                                  **run.info})
        raise
    finally:
        run.trackers.finish(COMPLETED if status == LOADED else status)
        if record:
            provenance.finish(run.folder, record, run.info.get("data_fingerprint"))
    return summary

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
from labkit.errors import ConfigError
from labkit.run import ABSENT, IGNORED_KEYS, Runtime, build_model, setting_differences, under
from labkit.run_folder import checkpoint_path, is_finished, read_summary
from labkit.runner import Resume, RunData, open_stage, run_training
from labkit.tracking import config_tree

log = logging.getLogger(__name__)

#: the switches that ask for the resume: they differ from the checkpoint's config by design
RESUME_SWITCHES = ("trainer.resume", "trainer.ckpt_path")


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


def _show(value: Any) -> str:
    """A config value spelled as on the command line; ``{...}`` for a node, ``(absent)`` for none."""
    if value is ABSENT:
        return "(absent)"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return "{...}" if isinstance(value, dict) else str(value)


def describe_differences(differences: dict[str, tuple[Any, Any]]) -> str:
    """``trainer.epochs 30 -> 15, ...``: each key with the checkpoint's value and today's."""
    return ", ".join(f"{key} {_show(recorded)} -> {_show(current)}"
                     for key, (recorded, current) in differences.items())


def check_resume(cfg: DictConfig, resume: Resume) -> str:
    """Continue the recorded run exactly, or refuse: returns the line that says it continues.

    A checkpoint holds its optimizer, schedule and loader state as its run made them, so a changed
    result setting cannot take effect as the printed config says (a cosine ``T_max`` stays the
    old ``trainer.epochs``, a one-cycle schedule runs out of steps, a finished run trains nothing).
    Any difference outside :data:`~labkit.run.IGNORED_KEYS` from the checkpoint's resolved config
    is therefore a :class:`ConfigError` naming the keys and how to start fresh; the keys of that
    list may differ and are named in the returned line, so none is ignored silently.
    """
    recorded = resume.state.get("config")
    fresh = ("start fresh without trainer.ckpt_path" if OmegaConf.select(cfg, "trainer.ckpt_path")
             else "start fresh in a new run folder (another hydra.run.dir, without trainer.resume=true)")
    if not isinstance(recorded, dict):
        raise ConfigError(f"cannot resume {resume.path}: it holds no config (written by an older "
                          f"labkit), so it cannot be checked against this run's settings; {fresh}")
    differences = setting_differences(recorded, OmegaConf.to_container(cfg, resolve=True))
    refused = {k: v for k, v in differences.items() if not under(k, IGNORED_KEYS)}
    if refused:
        raise ConfigError(f"cannot resume {resume.path}: its run had other settings (checkpoint -> now: "
                          f"{describe_differences(refused)}); a resumed run continues the recorded "
                          f"one exactly, so resume with the checkpoint's settings, or {fresh}")
    noted = {k: v for k, v in differences.items() if not under(k, RESUME_SWITCHES)}
    line = f"resuming from {resume.path} at epoch {resume.state['epoch']}: the recorded run goes on unchanged"
    if noted:
        line += (f"; settings that differ and cannot change its result (checkpoint -> now): "
                 f"{describe_differences(noted)}")
    return line


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
        resuming = check_resume(cfg, resume)
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
        console.print(resuming, highlight=False, soft_wrap=True)  # one line, as grep finds it
    summary, _ = run_training(cfg, data, prepared, run, seed=int(cfg.trainer.seed), callbacks=callbacks,
                              resume=resume)
    return summary

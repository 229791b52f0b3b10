"""Engine callbacks asked for by the ``analysis`` config group; none at all when it is off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from labkit.analysis.grad_monitor import GradientMonitor
from labkit.analysis.wandb_watch import WandbWatch
from labkit.data.loader import Batch, EpochLoader
from labkit.engine.engine import Callback


def probe_batch(datamodule: Any, size: int) -> Batch:
    """The first ``size`` training images, unaugmented: the same fixed batch in every probe.

    Taking images by index draws no random numbers, so the probe leaves the shuffling of the
    training run untouched (a streamed folder decodes just these files). Loaders of other
    kinds give their first (unshuffled) validation batch instead.
    """
    loader = datamodule.loader("train")
    if isinstance(loader, EpochLoader):
        index = torch.arange(min(int(size), loader.num_samples), device=loader.device)
        return Batch(loader.normalise(loader.images_at(index)), loader.targets[index], index)
    batch = next(iter(datamodule.loader("val")))
    return Batch(*(t[:size] for t in batch))


def analysis_callbacks(cfg: DictConfig, datamodule: Any, run_dir: Path) -> list[Callback]:
    """GradientMonitor with ``analysis.grad_norms``, WandbWatch with ``analysis.wandb_watch``."""
    analysis = OmegaConf.select(cfg, "analysis", default=None) or {}
    callbacks: list[Callback] = []
    if analysis.get("grad_norms", False):
        batch = probe_batch(datamodule, analysis.get("probe_size", 512))
        callbacks.append(GradientMonitor(probe_batch=batch, run_dir=run_dir))
    if analysis.get("wandb_watch", False):
        callbacks.append(WandbWatch(log_freq=analysis.get("watch_log_freq", 100)))
    return callbacks

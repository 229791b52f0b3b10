"""Entry-point plumbing shared by train.py and later scripts."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from labkit import provenance
from labkit.errors import LabkitError, RunInterrupted, exit_on
from labkit.run_folder import is_finished, mark_failed, read_summary

log = logging.getLogger(__name__)


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``, a sweep file, a search)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _output_dir(cfg: DictConfig) -> Path:
    output_dir = OmegaConf.select(cfg, "paths.output_dir", default=None)
    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    return Path(output_dir)


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``task`` and return the swept metric (``optimized_metric`` of its summary).

    A single run turns a user error into one line on stderr and a non-zero exit status
    (``HYDRA_FULL_ERROR=1`` shows the traceback instead). In a multirun a failing job must not
    take the rest of the sweep with it: any exception is recorded in the job's summary.json
    (``status: failed`` and the error), logged, and the job returns NaN, which Optuna marks as a
    failed trial. Interrupts (SIGTERM, SIGINT) still stop the whole sweep.
    """
    metric = cfg.get("optimized_metric")
    run_dir = _output_dir(cfg)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 keeps the records
    record = provenance.start(run_dir) if main_rank else {}
    try:
        summary = task(cfg)
    except Exception as exc:
        # a record for every failure, but a finished run's summary in the same folder (a refused
        # resume) is what the user produced: it stays
        if main_rank and not isinstance(exc, RunInterrupted) and (
                in_multirun() or not is_finished(read_summary(run_dir))):
            mark_failed(run_dir, exc)
        if main_rank:  # the folder's latest record: a stage may have added the data it read
            provenance.finish(run_dir, provenance.read(run_dir) or record)
        if in_multirun() and not isinstance(exc, RunInterrupted):
            log.error("job failed, the sweep goes on: %s: %s", type(exc).__name__, exc,
                      exc_info=not isinstance(exc, LabkitError))
            return math.nan if metric else None
        exit_on(exc)
    if main_rank:
        provenance.finish(run_dir, record, summary.get("data_fingerprint"))
    value = summary.get(metric) if metric else None
    return float(value) if isinstance(value, int | float) else None

"""Entry-point plumbing shared by train.py and later scripts."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from labkit.errors import LabkitError


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``task`` and return the swept metric; user errors become one line and an exit code.

    ``HYDRA_FULL_ERROR=1`` shows the traceback instead, as it does for Hydra's own errors.
    """
    try:
        summary = task(cfg)
    except LabkitError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    metric = cfg.get("optimized_metric")
    value = summary.get(metric) if metric else None
    return float(value) if isinstance(value, int | float) else None

"""Weights & Biases through the real ``wandb`` library, offline when there is no account.

Mode ``auto`` goes online only when credentials exist (``WANDB_API_KEY`` or a netrc entry);
otherwise runs are written offline under the run directory and ``wandb sync`` uploads them
later. A ``WANDB_MODE`` environment variable always wins. Any W&B failure is reported once
and the run carries on without it.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from labkit.tracking.base import Tracker


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str | None) -> str:
    """The W&B mode to run in: the env var, else the config, with ``auto`` decided by credentials."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if mode in (None, "auto"):
        return "online" if _has_credentials() else "offline"
    return str(mode)


class WandbTracker(Tracker):
    def __init__(
        self,
        run_dir: str | Path,
        project: str = "labkit",
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        mode: str = "auto",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.kwargs = dict(project=project, entity=entity, group=group, name=name,
                           job_type=job_type, tags=list(tags or []) or None)
        self.mode = resolve_mode(mode)
        self.run = None

    def start(self, config: dict[str, Any], info: dict[str, Any]) -> None:
        if self.mode == "disabled":
            return
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            dir=str(self.run_dir),
            config=config,
            mode=self.mode,
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off", init_timeout=60),
            **self.kwargs,
        )
        self.run.summary.update(info)

    def log_epoch(self, metrics):
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if k != "epoch"},
                         step=int(metrics["epoch"]))

    def log_summary(self, summary):
        if self.run is not None:
            self.run.summary.update(summary)

    def finish(self, status):
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=0 if status == "completed" else 1)

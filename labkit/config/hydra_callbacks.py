"""Hydra callbacks: check that the output folder can be written before Hydra tries to.

Hydra creates the run directory before the task starts, and a failure there surfaces as a
traceback; this callback runs first and turns it into one line and exit status 2.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def check_writable(folder: Path) -> str | None:
    """None when files can be created in ``folder`` (made if needed), else the reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".labkit-write-test-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


class OutputDirCheck(Callback):
    def _check(self, target: str, key: str) -> None:
        parent = Path(target).expanduser().parent
        reason = check_writable(parent)
        if reason is not None:
            print(f"error: cannot write the output folder {parent} ({reason}); choose another with "
                  f"paths.log_dir=DIR or {key}=DIR", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir + "/x", "hydra.sweep.dir")

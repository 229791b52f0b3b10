"""A Hydra callback that writes the report when a multirun ends (conf/hydra/default.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class MultirunReport(Callback):
    """After the last job: the table on the console, report.md/.csv and figures in the sweep folder.

    A report failure is logged and never fails the sweep whose results it summarises.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir)
        try:
            from labkit.report.report import build_report

            build_report(folder)
        except Exception as exc:
            log.warning("no report for %s (%s: %s); try labkit-report %s",
                        folder, type(exc).__name__, exc, folder)

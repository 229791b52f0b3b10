"""Hydra callbacks that write reports when a multirun ends: the job table and figures
(conf/hydra/default.yaml, every multirun) and the methods table (the distillation methods sweeps).

Hydra loads this module for every run, single runs included, so the report modules (SciPy,
matplotlib) are imported only when a multirun ends, inside the ``try`` that keeps a report
failure, an import error included, from failing the sweep it summarises.
"""

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


class MethodsReport(Callback):
    """After a distillation multirun: methods.md in the sweep folder, and the table on the console
    (``labkit-report distill <folder>`` prints it again)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir)
        try:
            from labkit.report.distill import find_distill_jobs, write_methods_report
            from labkit.report.origins import mismatch_warning

            jobs = find_distill_jobs([folder])
            if jobs:
                path = write_methods_report(folder, [job.summary for job in jobs], mismatch_warning(jobs))
                print(path.read_text(), flush=True)
        except Exception as exc:
            log.warning("no methods table for %s (%s: %s)", folder, type(exc).__name__, exc)

"""Hydra callbacks: check the config and the output folder before Hydra writes anything.

Hydra creates the run directory (and its ``.hydra/`` files) before the task starts: a bad value
caught only by the task would already have overwritten the config record of an existing run
folder, and an unwritable folder surfaces as a traceback. These callbacks run first and turn
both into one line and exit status 2.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

from labkit.config.schema import ENTRY_POINTS
from labkit.config.validate import validate_config, writable_folder_problem
from labkit.errors import ConfigError, exit_on

log = logging.getLogger(__name__)


class OutputDirCheck(Callback):
    def _check(self, target: str, key: str) -> None:
        parent = Path(target).expanduser().parent
        reason = writable_folder_problem(parent)
        if reason is not None:
            exit_on(ConfigError(f"cannot write the output folder {parent} ({reason}); choose another "
                                f"with paths.log_dir=DIR or {key}=DIR"))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir + "/x", "hydra.sweep.dir")


class ConfigCheck(Callback):
    """Validate a single run's config (:func:`~labkit.config.validate.validate_config`) before its
    run folder is touched. Multirun jobs are checked by their task, which records a bad value as
    that job's failure and lets the sweep go on."""

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        if config_name not in ENTRY_POINTS:  # tests/test_config_errors.py asks every script for one
            log.warning("no schema for %s.yaml in labkit/config/schema.py: its keys are not checked",
                        config_name)
            return
        cfg = copy.deepcopy(config)
        with open_dict(cfg):  # paths.output_dir reads ${hydra:runtime.output_dir}, set later by Hydra
            cfg.hydra.runtime.output_dir = str(Path(cfg.hydra.run.dir).expanduser().absolute())
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            validate_config(cfg, config_name)
        except ConfigError as exc:
            exit_on(exc)

"""The tracker interface: every sink (console, files, W&B) receives plain dicts of numbers."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


class Tracker:
    """No-op base; a tracker overrides what it cares about."""

    #: when False, an exception in this tracker is reported once and the tracker is dropped
    #: instead of stopping the run (W&B and console must never crash training).
    essential = False

    def start(self, config: dict[str, Any], info: dict[str, Any]) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...

    def step(self, epoch: int, step: int, stats: dict[str, float]) -> None: ...

    def log_epoch(self, metrics: dict[str, Any]) -> None: ...

    def log_summary(self, summary: dict[str, Any]) -> None: ...

    def finish(self, status: str) -> None: ...


class TrackerGroup(Tracker):
    """Fan calls out to several trackers, isolating the failures of non-essential ones."""

    def __init__(self, trackers: Iterable[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def _call(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:
                if tracker.essential:
                    raise
                log.warning("%s failed in %s (%s); it is switched off for the rest of the run",
                            type(tracker).__name__, method, exc)
                self.trackers.remove(tracker)

    def start(self, config, info):
        self._call("start", config, info)

    def epoch_start(self, epoch, epochs, steps):
        self._call("epoch_start", epoch, epochs, steps)

    def step(self, epoch, step, stats):
        self._call("step", epoch, step, stats)

    def log_epoch(self, metrics):
        self._call("log_epoch", metrics)

    def log_summary(self, summary):
        self._call("log_summary", summary)

    def finish(self, status):
        # finish must reach every tracker even if one fails, so each gets its own try.
        self._call("finish", status)

"""Optional ``wandb.watch`` gradient histograms, switched on by ``analysis.wandb_watch=true``.

Histograms need hooks on every parameter and a device-to-host copy every ``log_freq`` steps,
so they are off by default; the per-block norms of :class:`GradientMonitor` are the cheap view.
"""

from __future__ import annotations

import logging

from labkit.engine.engine import Callback, Engine

log = logging.getLogger(__name__)


class WandbWatch(Callback):
    """Attach ``wandb.watch`` to the model for the length of ``fit`` when a W&B run is active."""

    def __init__(self, log_freq: int = 100) -> None:
        self.log_freq = int(log_freq)
        self.run = None

    def on_fit_start(self, engine: Engine) -> None:
        runs = [t.run for t in engine.trackers.trackers if getattr(t, "run", None) is not None]
        if not runs:
            log.info("analysis.wandb_watch is on but no W&B run is active; nothing to watch")
            return
        try:
            runs[0].watch(engine.model, log="gradients", log_freq=self.log_freq)
            self.run = runs[0]
        except Exception as exc:  # W&B must never stop training
            log.warning("wandb.watch failed (%s); training goes on without histograms", exc)

    def on_fit_end(self, engine: Engine) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            try:
                run.unwatch(engine.model)
            except Exception as exc:
                log.warning("wandb unwatch failed (%s)", exc)

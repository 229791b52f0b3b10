"""The run directory's own record: metrics.jsonl, summary.json and curves.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from labkit.io import atomic_write_text
from labkit.tracking.base import Tracker
from labkit.tracking.curves import plot_curves


def _plain(value: Any) -> Any:
    """JSON-safe value: NaN/inf become null, tensors and numpy scalars become numbers."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically, so readers (the report of a running sweep) never see half a file."""
    atomic_write_text(path, json.dumps(_plain(data), indent=2) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read metrics.jsonl back; a torn last line (killed writer) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class FileTracker(Tracker):
    """Appends one JSON line per epoch, writes the summary, and draws the learning curves."""

    essential = True

    def __init__(self, run_dir: str | Path, plot: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.summary_path = self.run_dir / "summary.json"
        self.plot = plot
        self.history: list[dict[str, Any]] = []

    def start(self, config, info):
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def restart_from(self, history: list[dict[str, Any]]) -> None:
        """Make metrics.jsonl hold exactly ``history``: the checkpoint's epochs on resume (rows logged
        after it are dropped), none on a fresh start (rows of an earlier attempt are dropped)."""
        self.history = [dict(row) for row in history]
        if not history:
            self.metrics_path.unlink(missing_ok=True)
            return
        atomic_write_text(self.metrics_path, "".join(json.dumps(_plain(row)) + "\n" for row in history))

    def log_epoch(self, metrics):
        self.history.append(dict(metrics))
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(_plain(metrics)) + "\n")

    def log_summary(self, summary):
        write_json(self.summary_path, summary)

    def finish(self, status):
        if self.plot and self.history:
            plot_curves(self.history, self.run_dir / "curves.png")

"""Where results go: console (rich), the run directory's files and figures, and W&B."""

from labkit.tracking.base import Tracker, TrackerGroup
from labkit.tracking.console import ConsoleTracker, config_tree
from labkit.tracking.files import FileTracker, read_metrics, write_json
from labkit.tracking.wandb_tracker import WandbTracker

__all__ = ["ConsoleTracker", "FileTracker", "Tracker", "TrackerGroup", "WandbTracker",
           "config_tree", "read_metrics", "write_json"]

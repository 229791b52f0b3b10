"""Where results go: console (rich), the run directory's files and figures, W&B and TensorBoard."""

from labkit.tracking.base import Tracker, TrackerGroup
from labkit.tracking.console import ConsoleTracker, config_tree
from labkit.tracking.files import FileTracker, read_metrics, write_json
from labkit.tracking.tensorboard_tracker import TensorBoardTracker
from labkit.tracking.wandb_tracker import WandbTracker

__all__ = ["ConsoleTracker", "FileTracker", "TensorBoardTracker", "Tracker", "TrackerGroup", "WandbTracker",
           "config_tree", "read_metrics", "write_json"]

"""The shared training engine, device handling and checkpoint files."""

from labkit.engine import distributed
from labkit.engine.checkpoint import load_checkpoint, save_checkpoint
from labkit.engine.device import resolve_device, seed_everything
from labkit.engine.engine import Callback, Engine, cross_entropy

__all__ = ["Callback", "distributed", "Engine", "cross_entropy", "load_checkpoint", "resolve_device",
           "save_checkpoint", "seed_everything"]

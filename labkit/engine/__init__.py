"""The shared training engine, seeding and checkpoint files (devices: :mod:`labkit.config.device`)."""

from labkit.engine import distributed
from labkit.engine.checkpoint import load_checkpoint, save_checkpoint
from labkit.engine.engine import Callback, Engine, cross_entropy
from labkit.engine.rng import seed_everything

__all__ = ["Callback", "distributed", "Engine", "cross_entropy", "load_checkpoint", "save_checkpoint",
           "seed_everything"]

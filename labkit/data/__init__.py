"""Datasets as device-resident uint8 tensors and the loader that batches them."""

from labkit.data.base import ImageDataModule, RawSplits
from labkit.data.loader import Batch, TensorLoader
from labkit.data.mnist import MNISTFamily

__all__ = ["Batch", "ImageDataModule", "MNISTFamily", "RawSplits", "TensorLoader"]

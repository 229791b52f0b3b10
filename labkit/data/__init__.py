"""Datasets as device-resident uint8 tensors and the loader that batches them."""

from labkit.data.augment import CropFlip, build_augment
from labkit.data.base import ImageDataModule, RawSplits
from labkit.data.cifar import CIFAR
from labkit.data.imagefolder import ImageFolder
from labkit.data.loader import Batch, TensorLoader
from labkit.data.mnist import MNISTFamily
from labkit.data.synthetic import SyntheticImages

__all__ = ["CIFAR", "Batch", "CropFlip", "ImageDataModule", "ImageFolder", "MNISTFamily", "RawSplits",
           "SyntheticImages", "TensorLoader", "build_augment"]

"""Batch loaders over one split: the device-resident :class:`TensorLoader` and the shared
epoch logic (order, sharding, augmentation, normalisation, resumable position) that the
streaming loader (:mod:`labkit.data.stream`) reuses, so both paths give the same batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch


class Batch(NamedTuple):
    """One batch: normalised float inputs, integer targets and the dataset indices they came from."""

    inputs: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class EpochLoader:
    """What every labkit loader shares: each epoch's order (one permutation drawn from
    ``generator`` on ``device``), each rank's part of every global batch, batched augmentation
    and normalisation on the device, and the position in the epoch (:meth:`state_dict` /
    :meth:`load_state_dict`), so an interrupted run resumes at the very batch it stopped before.
    A subclass says how a batch of indices becomes uint8 images (:meth:`iter_from`)."""

    def __init__(
        self,
        num_samples: int,
        channels: int,
        device: torch.device | str,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        augment_generator: torch.Generator | None = None,
    ) -> None:
        self._num_samples = int(num_samples)
        self._device = torch.device(device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.generator = generator
        # Data-parallel sharding: every rank draws the same permutation (same generator seed)
        # and keeps its own contiguous slice of each global batch. Augmentation then needs a
        # generator of its own per rank, or the shared one would drift apart between ranks.
        self.rank, self.world_size = rank, world_size
        self.augment_generator = augment_generator or generator
        mean_t = torch.as_tensor(mean, dtype=torch.float32, device=self._device)
        std_t = torch.as_tensor(std, dtype=torch.float32, device=self._device)
        if mean_t.numel() not in (1, channels) or std_t.numel() not in (1, channels):
            raise ValueError(f"mean/std need 1 or {channels} values")
        # (x / 255 - mean) / std  ==  x * scale + shift, one multiply-add per element.
        self._scale = (1.0 / (255.0 * std_t)).reshape(1, -1, 1, 1)
        self._shift = (-mean_t / std_t).reshape(1, -1, 1, 1)
        # position in the epoch (see state_dict): batches handed out, where to resume
        self._position = 0
        self._epoch_start: torch.Tensor | None = None
        self._resume: tuple[int, torch.Tensor | None] = (0, None)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def num_samples(self) -> int:
        return self._num_samples

    def __len__(self) -> int:
        n = self.num_samples / self.batch_size
        return int(n) if self.drop_last else math.ceil(n)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Turn a uint8 batch into the float inputs the model sees."""
        scale, shift = self._scale, self._shift
        if images.dim() != 4:  # e.g. [N, C, L]: broadcast over whatever follows the channels
            scale, shift = (t.reshape((1, -1) + (1,) * (images.dim() - 2)) for t in (scale, shift))
        return torch.addcmul(shift, images.to(torch.float32), scale)

    def finish(self, images: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> Batch:
        """A gathered uint8 batch on the device, augmented (training) and normalised."""
        if self.augment is not None:
            images = self.augment(images, self.augment_generator)
        return Batch(self.normalise(images), targets, index)

    def epoch_batches(self, start_batch: int,
                      generator_state: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """This rank's sample indices of batches ``start_batch``, ``start_batch + 1``, ...

        The order is drawn from the generator first (so it must hold the state it had at the
        start of the epoch); ``generator_state`` then replaces the generator's state, so
        augmentation continues with the random numbers the interrupted epoch would have used.
        """
        n = self.num_samples
        if self.shuffle:
            order = torch.randperm(n, device=self.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.device)
        if generator_state is not None and self.generator is not None:
            self.generator.set_state(generator_state)
        for start in range(start_batch * self.batch_size, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            if self.world_size > 1:
                index = index.tensor_split(self.world_size)[self.rank]
            yield index

    def iter_from(self, start_batch: int, generator_state: torch.Tensor | None = None) -> Iterator[Batch]:
        """Batches ``start_batch``, ``start_batch + 1``, ... of the epoch (see :meth:`epoch_batches`)."""
        raise NotImplementedError

    def images_at(self, index: torch.Tensor) -> torch.Tensor:
        """The split's uint8 images at ``index``, not augmented (explain.py's chosen images)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        """One epoch, or the rest of the one :meth:`load_state_dict` restored."""
        start, generator_state = self._resume
        self._resume = (0, None)
        self._epoch_start = self.generator.get_state() if self.generator is not None else None
        self._position = start
        for batch in self.iter_from(start, generator_state):
            self._position += 1
            yield batch
        self._position = 0

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands, the way torchdata's StatefulDataLoader reports it: the batches
        already handed out in this epoch, the generator's state when the epoch began (it redraws
        the epoch's order) and its state now (augmentation goes on with the same numbers)."""
        mid_epoch = 0 < self._position < len(self)
        return {
            "batches_done": self._position if mid_epoch else 0,
            "epoch_generator": self._epoch_start if mid_epoch else None,
            "generator": self.generator.get_state() if self.generator is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next iteration resumes at its batch."""
        if self.generator is not None and state["generator"] is not None:
            start_of_epoch = state["epoch_generator"] if state["batches_done"] else state["generator"]
            self.generator.set_state(start_of_epoch)
        self._resume = (int(state["batches_done"]), state["generator"] if state["batches_done"] else None)


class TensorLoader(EpochLoader):
    """Iterate over an in-memory uint8 image tensor in (optionally shuffled) batches.

    Each epoch draws one permutation on the device; a batch is gathered by indexing, augmented
    as a whole (if an ``augment`` function is given) and normalised with one fused affine op.
    There is no per-sample Python and no worker process, which is why it is fast.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
                 mean: Sequence[float], std: Sequence[float], **kwargs: Any) -> None:
        if images.dtype != torch.uint8:
            raise TypeError(f"TensorLoader expects uint8 images, got {images.dtype}")
        if len(images) != len(targets):
            raise ValueError("images and targets differ in length")
        super().__init__(len(images), images.shape[1], images.device, batch_size, mean, std, **kwargs)
        self.images = images
        self.targets = targets

    @property
    def num_samples(self) -> int:
        """The images it holds now (the benchmarks cut ``images`` / ``targets`` of a made loader)."""
        return len(self.images)

    def iter_from(self, start_batch: int, generator_state: torch.Tensor | None = None) -> Iterator[Batch]:
        for index in self.epoch_batches(start_batch, generator_state):
            yield self.finish(self.images[index], self.targets[index], index)

    def images_at(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]

"""Running loss and accuracy of an epoch, kept on the device and read back rarely."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from labkit.engine.distributed import all_reduce_sum


class Totals(NamedTuple):
    """The sums as the host sees them; ``bad_step`` is the first non-finite step (-1: none)."""

    loss_sum: float
    correct: int
    seen: int
    bad_step: int

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def acc(self) -> float:
        return self.correct / max(self.seen, 1)


class RunningMetrics:
    """Loss sum, correct count, sample count and first non-finite step in one device tensor.

    Updating it never waits for the device; :meth:`read` is one device-to-host copy (once per
    log interval) and :meth:`all_reduce` one collective (once per epoch), where separate
    tensors would cost one of each per tensor. ``resumed`` (an interrupted epoch's
    :meth:`state_dict`, already summed over ranks) seeds the sums where ``count_resumed``.
    """

    def __init__(self, device: torch.device, resumed: dict[str, Any] | None = None,
                 count_resumed: bool = True) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.totals = torch.tensor([0.0, 0.0, 0.0, -1.0], device=device, dtype=dtype)
        self._loss, self._correct, self._seen, self._bad = self.totals.unbind()  # views
        self.resumed_seen = int(resumed["seen"]) if resumed else 0
        if resumed and count_resumed:
            self.totals[:3] = torch.tensor([resumed["loss_sum"], resumed["correct"], resumed["seen"]])

    def add(self, loss_sum: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
            step: int | None = None) -> None:
        """One batch: its summed loss, its predictions; ``step`` records a non-finite loss."""
        self._loss += loss_sum.detach()
        self._correct += (logits.detach().argmax(1) == targets).sum()
        self._seen += targets.shape[0]
        if step is not None:
            first_bad = (self._bad < 0) & ~torch.isfinite(loss_sum.detach())
            self._bad.copy_(torch.where(first_bad, step, self._bad))

    def read(self) -> Totals:
        """The sums on the host: one transfer."""
        loss_sum, correct, seen, bad = self.totals.tolist()
        return Totals(loss_sum, int(correct), int(seen), int(bad))

    def all_reduce(self) -> Totals:
        """Sum over every rank (one collective; a no-op in a single process), then :meth:`read`."""
        all_reduce_sum(self.totals[:3])
        return self.read()

    @staticmethod
    def state_dict(totals: Totals) -> dict[str, Any]:
        """What an interrupted epoch's checkpoint keeps of ``totals`` (plain numbers)."""
        return {"loss_sum": totals.loss_sum, "correct": totals.correct, "seen": totals.seen}

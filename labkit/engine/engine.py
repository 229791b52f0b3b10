"""The one training engine every entry point uses: train, validate, checkpoint, test."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.data.loader import Batch
from labkit.engine.checkpoint import copy_checkpoint, save_checkpoint
from labkit.tracking.base import Tracker, TrackerGroup

Criterion = Callable[[torch.Tensor, Batch], torch.Tensor]


def cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The default criterion: plain cross-entropy against the hard labels."""
    return F.cross_entropy(logits, batch.targets)


class Callback:
    """Engine hooks for measurements that need the model mid-step (e.g. gradient norms)."""

    def on_fit_start(self, engine: Engine) -> None: ...

    def on_after_backward(self, engine: Engine) -> None: ...

    def on_epoch_end(self, engine: Engine, metrics: dict[str, Any]) -> None: ...

    def on_fit_end(self, engine: Engine) -> None: ...


class Engine:
    """Runs epochs of training and validation, keeps running metrics on the device.

    Loss sums and correct counts accumulate as device tensors; the host reads them only every
    ``log_every_n_steps`` steps and at the end of an epoch, so CUDA never waits on Python.
    After each epoch ``last.pt`` is written atomically and copied to ``best.pt`` when the
    validation accuracy improves; the best weights are also kept in memory for the test.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None = None,
        *,
        device: torch.device | str = "cpu",
        epochs: int = 1,
        criterion: Criterion = cross_entropy,
        trackers: Iterable[Tracker] = (),
        callbacks: Iterable[Callback] = (),
        checkpoint_dir: str | Path | None = None,
        log_every_n_steps: int = 50,
        precision: str = "fp32",
        grad_clip: float | None = None,
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.epochs = int(epochs)
        self.criterion = criterion
        self.trackers = trackers if isinstance(trackers, TrackerGroup) else TrackerGroup(trackers)
        self.callbacks = list(callbacks)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.precision = precision
        self.grad_clip = grad_clip
        self.extra_state = extra_state or {}
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_val_acc = float("-inf")
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.train_time_s = 0.0
        self.train_samples = 0

    # -- helpers -----------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when asked for (a no-op context in fp32)."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- one epoch of training ---------------------------------------------------------------
    def train_epoch(self, loader: Iterable[Batch], steps: int) -> dict[str, float]:
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        self.trackers.epoch_start(self.epoch, self.epochs, steps)
        self._sync()
        start = time.perf_counter()
        for step, batch in enumerate(loader, start=1):
            # forward and loss
            with self.autocast():
                logits = self.model(batch.inputs)
                loss = self.criterion(logits, batch)
            # backward, optional clipping, step
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for callback in self.callbacks:
                callback.on_after_backward(self)
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            # running metrics stay on the device
            n = batch.targets.shape[0]
            loss_sum += loss.detach() * n
            correct += (logits.detach().argmax(1) == batch.targets).sum()
            seen += n
            if step % self.log_every_n_steps == 0:
                elapsed = time.perf_counter() - start
                self.trackers.step(self.epoch, step, {
                    "loss": loss_sum.item() / seen,
                    "acc": correct.item() / seen,
                    "img/s": seen / max(elapsed, 1e-9),
                })
        self._sync()
        elapsed = time.perf_counter() - start
        self.train_time_s += elapsed
        self.train_samples += seen
        return {
            "train_loss": loss_sum.item() / max(seen, 1),
            "train_acc": correct.item() / max(seen, 1),
            "train_time_s": elapsed,
            "images_per_s": seen / max(elapsed, 1e-9),
        }

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Batch], model: nn.Module | None = None) -> dict[str, float]:
        """Mean cross-entropy and accuracy of ``model`` (default: the trained one) on ``loader``."""
        model = model or self.model
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for batch in loader:
            with self.autocast():
                logits = model(batch.inputs)
            loss_sum += F.cross_entropy(logits.float(), batch.targets, reduction="sum")
            correct += (logits.argmax(1) == batch.targets).sum()
            seen += batch.targets.shape[0]
        model.train(was_training)
        return {"loss": loss_sum.item() / max(seen, 1), "acc": correct.item() / max(seen, 1)}

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, train_loader: Iterable[Batch], val_loader: Iterable[Batch] | None) -> list[dict]:
        """Train for the configured epochs; returns the per-epoch metric rows."""
        for callback in self.callbacks:
            callback.on_fit_start(self)
        steps = len(train_loader)  # type: ignore[arg-type]
        while self.epoch < self.epochs:
            self.epoch += 1
            lr = self.current_lr()
            epoch_start = time.perf_counter()
            row: dict[str, Any] = {"epoch": self.epoch, **self.train_epoch(train_loader, steps)}
            if val_loader is not None:
                val = self.evaluate(val_loader)
                row["val_loss"], row["val_acc"] = val["loss"], val["acc"]
            row["lr"] = lr
            if self.scheduler is not None:
                self.scheduler.step()
            row["epoch_time_s"] = time.perf_counter() - epoch_start
            for callback in self.callbacks:
                callback.on_epoch_end(self, row)
            improved = self._track_best(row)
            self.history.append(row)
            self.trackers.log_epoch(row)
            self.save(improved)
        for callback in self.callbacks:
            callback.on_fit_end(self)
        return self.history

    def _track_best(self, row: dict[str, Any]) -> bool:
        score = row.get("val_acc", row["train_acc"])
        if score > self.best_val_acc:
            self.best_val_acc, self.best_epoch = score, self.epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
            return True
        return False

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "history": self.history,
            **self.extra_state,
        }

    def save(self, is_best: bool) -> None:
        if self.checkpoint_dir is None:
            return
        last = self.checkpoint_dir / "last.pt"
        save_checkpoint(self.state_dict(), last)
        if is_best:
            copy_checkpoint(last, self.checkpoint_dir / "best.pt")

    def load_best(self) -> None:
        """Put the best validation weights back into the model (used before testing)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    @property
    def throughput(self) -> float:
        return self.train_samples / max(self.train_time_s, 1e-9)

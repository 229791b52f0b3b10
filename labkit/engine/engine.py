"""The one training engine every entry point uses: train, validate, checkpoint, test."""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.data.loader import Batch
from labkit.engine.accel import autocast
from labkit.engine.checkpoint import CHECKPOINT_FORMAT, copy_checkpoint, load_model_weights, save_checkpoint
from labkit.engine.distributed import DistContext, any_rank
from labkit.engine.ema import WeightAverage
from labkit.engine.metrics import RunningMetrics, Totals
from labkit.engine.rng import capture_rng_state, restore_rng_state
from labkit.engine.signals import StopRequest
from labkit.errors import CheckpointError, NonFiniteLossError, OutputError, RunInterrupted
from labkit.tracking.base import Tracker, TrackerGroup

log = logging.getLogger(__name__)

Criterion = Callable[[torch.Tensor, Batch], torch.Tensor]


def cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The default criterion: plain cross-entropy against the hard labels."""
    return F.cross_entropy(logits, batch.targets)


class SmoothedCrossEntropy:
    """Cross-entropy against labels smoothed by ``label_smoothing`` (Szegedy et al. 2016): the
    target puts ``1 - eps`` on the class and spreads ``eps`` over all classes."""

    def __init__(self, label_smoothing: float) -> None:
        self.label_smoothing = float(label_smoothing)

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits, batch.targets, label_smoothing=self.label_smoothing)


class Callback:
    """Engine hooks for measurements that need the model mid-step (e.g. gradient norms)."""

    def on_fit_start(self, engine: Engine) -> None: ...

    def on_after_backward(self, engine: Engine) -> None: ...

    def on_epoch_end(self, engine: Engine, metrics: dict[str, Any]) -> None: ...

    def on_fit_end(self, engine: Engine) -> None: ...


class Engine:
    """Runs epochs of training and validation, keeps running metrics on the device.

    Loss sums and correct counts accumulate on the device (:class:`RunningMetrics`); the host
    reads them only every ``log_every_n_steps`` steps and at the end of an epoch, so CUDA never
    waits on Python. After each epoch ``last.pt`` is written atomically and copied to
    ``best.pt`` when the validation accuracy improves; the best weights are also kept on the
    CPU for the test. Without validation data there is no best epoch: ``best_val_acc`` stays None
    (training accuracy is never reported under a validation name). The position inside an epoch
    lives in the (stateful) training loader. With ``optimizer=None`` it only evaluates (eval.py,
    a loaded teacher). With ``ema`` (``trainer.ema``) an average of the weights follows every
    step, and validation, the best weights and the test use the average (:attr:`eval_model`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
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
        dist: DistContext | None = None,
        scheduler_interval: str = "epoch",
        eval_flip: bool = False,
        eval_translate: int = 0,
        ema: dict[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        # Under DDP the wrapped module runs the training steps (it synchronises gradients);
        # self.model stays the plain module for evaluation and state_dict keys.
        self.dist = dist or DistContext()
        self.train_module = self._training_module()
        self.optimizer, self.scheduler = optimizer, scheduler
        # trainer.ema: {decay, start_step, every}; the average is built on the training device
        self.ema = WeightAverage(self.model, **ema) if ema and optimizer is not None else None
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be epoch or step, got {scheduler_interval!r}")
        self.step_scheduler_per_batch = scheduler is not None and scheduler_interval == "step"
        self.eval_flip = eval_flip
        if int(eval_translate) < 0:
            raise ValueError(f"eval_translate must be >= 0 pixels, got {eval_translate}")
        self.eval_translate = int(eval_translate)
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
        self.best_val_acc: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.train_time_s = 0.0
        self.train_samples = 0
        self.stop = StopRequest()
        self.train_loader: Iterable[Batch] | None = None
        # an interrupted epoch: its last step and sums (the loader keeps its own position)
        self._partial: dict[str, Any] | None = None
        self._loader_state: dict[str, Any] | None = None  # from load_state_dict, applied by fit

    # -- helpers -----------------------------------------------------------------------------
    def _training_module(self) -> nn.Module:
        """The model itself, or under DDP its wrapper, which synchronises the gradients."""
        if not self.dist.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def autocast(self) -> torch.autocast:
        """bf16 autocast when the run is bf16 (autocast switched off in fp32)."""
        return autocast(self.device, self.precision)

    def logits(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """``model``'s logits as evaluation computes them, under the run's autocast. Test-time
        augmentation: ``eval_flip`` averages them with the mirror images'; ``eval_translate = p``
        then averages that half and half with the mean over two copies shifted by ``p`` pixels
        (up-left and down-right, reflect-padded), airbench's ``infer_mirror_translate``
        (KellerJordan/cifar10-airbench, airbench94.py)."""
        with self.autocast():
            out = self._mirrored(model, inputs)
            if self.eval_translate:
                p, (h, w) = self.eval_translate, inputs.shape[-2:]
                padded = F.pad(inputs, (p, p, p, p), mode="reflect")
                shifted = (padded[..., :h, :w], padded[..., 2 * p :, 2 * p :])
                out = (out + sum(self._mirrored(model, x) for x in shifted) / 2) / 2
        return out

    def _mirrored(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        out = model(inputs)
        return (out + model(inputs.flip(-1))) / 2 if self.eval_flip else out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def eval_model(self) -> nn.Module:
        """The network validation and the test evaluate: the weight average once it has started
        (``trainer.ema``), else the trained model."""
        return self.ema.module if self.ema is not None and self.ema.started else self.model

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- one step, one epoch -----------------------------------------------------------------
    def train_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward, clip, update: one optimizer step; returns the loss and logits."""
        # forward and loss, under the run's autocast
        with self.autocast():
            logits = self.train_module(batch.inputs)
            loss = self.criterion(logits, batch)
        # backward; callbacks read the fresh gradients (gradient-norm probes)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for callback in self.callbacks:
            callback.on_after_backward(self)
        # clip, step the weights, step a per-batch schedule
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.step_scheduler_per_batch:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach(), logits.detach()

    def train_epoch(self, loader: Iterable[Batch], steps: int) -> dict[str, float] | None:
        """One epoch (or the rest of an interrupted one); returns its metrics, or None when a stop
        request cut it short (the position is then in ``_partial`` and the loader's state)."""
        self.model.train()
        resumed, self._partial = self._partial, None
        # an interrupted epoch's sums are totals over ranks: one rank carries them on
        metrics = RunningMetrics(self.device, resumed, count_resumed=self.dist.is_main)
        self.trackers.epoch_start(self.epoch, self.epochs, steps)
        self._sync()
        start = time.perf_counter()
        for step, batch in enumerate(loader, start=resumed["step"] + 1 if resumed else 1):
            loss, logits = self.train_step(batch)
            metrics.add(loss * batch.targets.shape[0], logits, batch.targets, step)
            # log: one read of the device per interval
            if step % self.log_every_n_steps == 0 or step == steps:
                self._log_step(step, metrics, time.perf_counter() - start)
            # stop on a signal, at a step every rank agrees on
            if step < steps and self._stop_at(step):
                self._check_finite(metrics.read())
                self._partial = {"step": step, **RunningMetrics.state_dict(metrics.all_reduce())}
                break
        self._sync()
        elapsed = time.perf_counter() - start
        self.train_time_s += elapsed
        if self._partial is not None:
            self.train_samples += self._partial["seen"] - metrics.resumed_seen
            return None
        totals = self._check_finite(metrics.all_reduce())  # one collective per epoch
        self.train_samples += totals.seen - metrics.resumed_seen
        return {"train_loss": totals.loss, "train_acc": totals.acc, "train_time_s": elapsed,
                "images_per_s": (totals.seen - metrics.resumed_seen) / max(elapsed, 1e-9)}

    def _log_step(self, step: int, metrics: RunningMetrics, elapsed: float) -> None:
        now = self._check_finite(metrics.read())
        speed = (now.seen - metrics.resumed_seen) / max(elapsed, 1e-9)
        self.trackers.step(self.epoch, step, {"loss": now.loss, "acc": now.acc, "img/s": speed,
                                              "lr": self.current_lr()})

    def _stop_at(self, step: int) -> bool:
        """A stop was requested; under DDP all ranks agree on it at log intervals only."""
        if not self.dist.enabled:
            return self.stop.requested
        return step % self.log_every_n_steps == 0 and any_rank(self.stop.requested, self.device)

    def _check_finite(self, totals: Totals) -> Totals:
        if totals.bad_step >= 0:
            raise NonFiniteLossError(
                f"training loss became non-finite at epoch {self.epoch}, step {totals.bad_step}; the "
                f"run stops here and keeps its last good checkpoint (try a lower optimizer.lr or "
                f"trainer.grad_clip)"
            )
        return totals

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Batch], model: nn.Module | None = None) -> dict[str, float]:
        """Mean cross-entropy and accuracy of ``model`` (default: :attr:`eval_model`) on ``loader``.

        The logits are :meth:`logits`' (so ``eval_flip`` applies); under DDP every rank
        evaluates its shard and gets the total.
        """
        model = model or self.eval_model
        was_training = model.training
        model.eval()
        metrics = RunningMetrics(self.device)
        for batch in loader:
            logits = self.logits(model, batch.inputs)
            loss_sum = F.cross_entropy(logits.float(), batch.targets, reduction="sum")
            metrics.add(loss_sum, logits, batch.targets)
        model.train(was_training)
        totals = metrics.all_reduce()
        return {"loss": totals.loss, "acc": totals.acc}

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, train_loader: Iterable[Batch], val_loader: Iterable[Batch] | None) -> list[dict]:
        """Train until the configured epoch; returns the per-epoch metric rows.

        Raises :class:`RunInterrupted` after writing a resumable checkpoint when SIGTERM or
        SIGINT arrives, and :class:`NonFiniteLossError` when the loss diverges. ``on_fit_end``
        runs either way (a final gradient probe, W&B unhooked).
        """
        self.train_loader = train_loader
        if self._loader_state is not None:  # set by load_state_dict
            train_loader.load_state_dict(self._loader_state)  # type: ignore[attr-defined]
            self._loader_state = None
        steps = len(train_loader)  # type: ignore[arg-type]
        for callback in self.callbacks:
            callback.on_fit_start(self)
        ended = False
        try:
            with self.stop:
                while self.epoch < self.epochs or self._partial is not None:
                    self._fit_epoch(train_loader, val_loader, steps)
            ended = True
        finally:
            self._fit_end(raising=not ended)
        return self.history

    def _fit_epoch(self, train_loader: Iterable[Batch], val_loader: Iterable[Batch] | None,
                   steps: int) -> None:
        """Train, validate, step the schedule, log, checkpoint; stop here on a signal."""
        if self._partial is None:
            self.epoch += 1
        # the epoch's row reports the lr it started with, also when it is resumed mid-way
        lr = self._partial["lr"] if self._partial and "lr" in self._partial else self.current_lr()
        epoch_start = time.perf_counter()
        train = self.train_epoch(train_loader, steps)
        if train is None:
            self._partial["lr"] = lr
            self.save(is_best=False)
            where = (f"a checkpoint was written to {self.checkpoint_dir}; re-run the same "
                     f"command with trainer.resume=true to continue" if self.checkpoint_dir
                     else "no checkpoint was written (trainer.checkpoint=false)")
            raise RunInterrupted(f"stopped by signal {self.stop.signum} at epoch {self.epoch}; "
                                 f"{where}", self.stop.signum or signal.SIGTERM)
        row: dict[str, Any] = {"epoch": self.epoch, **train}
        if val_loader is not None:
            val = self.evaluate(val_loader)
            row["val_loss"], row["val_acc"] = val["loss"], val["acc"]
        row["lr"] = lr
        if self.scheduler is not None and not self.step_scheduler_per_batch:
            self.scheduler.step()
        row["epoch_time_s"] = time.perf_counter() - epoch_start
        for callback in self.callbacks:
            callback.on_epoch_end(self, row)
        improved = self._track_best(row)
        self.history.append(row)
        self.trackers.log_epoch(row)
        self.save(improved)
        if any_rank(self.stop.requested, self.device) and self.epoch < self.epochs:
            raise RunInterrupted(
                f"stopped by signal {self.stop.signum} after epoch {self.epoch}; re-run the "
                f"same command with trainer.resume=true to continue",
                self.stop.signum or signal.SIGTERM,
            )

    def _fit_end(self, raising: bool) -> None:
        """Every callback's ``on_fit_end``; while an error propagates, a callback's own failure is
        logged rather than raised, so it cannot hide the error that ended the fit."""
        for callback in self.callbacks:
            try:
                callback.on_fit_end(self)
            except Exception:
                if not raising:
                    raise
                log.exception("%s.on_fit_end failed after the fit failed", type(callback).__name__)

    def _track_best(self, row: dict[str, Any]) -> bool:
        """Keep the weights of the best validation accuracy so far; no validation, no best."""
        score = row.get("val_acc")
        if score is not None and (self.best_val_acc is None or score > self.best_val_acc):
            self.best_val_acc, self.best_epoch = score, self.epoch
            # on the CPU: a second copy of the weights must not take training-device memory
            weights = self.eval_model.state_dict()
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
            return True
        return False

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the run stands (weights_only-loadable)."""
        loader = getattr(self.train_loader, "state_dict", None)
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "train_time_s": self.train_time_s,
            "train_samples": self.train_samples,
            "rng": capture_rng_state(),
            "loader": loader() if loader is not None else None,
            "partial_epoch": self._partial,
            "criterion": self.criterion.state_dict() if hasattr(self.criterion, "state_dict") else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            **self.extra_state,
        }

    def load_state_dict(self, state: dict[str, Any], best_model: dict[str, Any] | None = None) -> None:
        """Restore a :meth:`state_dict`; ``best_model`` restores the best weights for the final test.
        The training loader's position is restored when :meth:`fit` receives the loader."""
        if state.get("partial_epoch") is not None and state.get("loader") is None:
            raise CheckpointError("this checkpoint stopped inside an epoch but holds no loader "
                                  "position (written by an older labkit): resume from an epoch's end")
        if (self.ema is None) != (state.get("ema") is None):
            raise CheckpointError("the checkpoint was written with trainer.ema "
                                  f"{'on' if state.get('ema') is not None else 'off'} and this run has it "
                                  f"{'on' if self.ema is not None else 'off'}: resume with the same setting")
        load_model_weights(self.model, state["model"], "resume state")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if state.get("criterion") and hasattr(self.criterion, "load_state_dict"):
            self.criterion.load_state_dict(state["criterion"])  # e.g. a loss term's warm-up position
        self.epoch = int(state["epoch"])
        self.best_val_acc, self.best_epoch = _best_of(state)
        self.history = list(state["history"])
        self.train_time_s = float(state.get("train_time_s", 0.0))
        self.train_samples = int(state.get("train_samples", 0))
        self.best_state = best_model
        self._partial = state.get("partial_epoch")
        self._loader_state = state.get("loader")
        restore_rng_state(state["rng"])

    def save(self, is_best: bool) -> None:
        if self.checkpoint_dir is None or not self.dist.is_main:
            return
        last = self.checkpoint_dir / "last.pt"
        try:
            save_checkpoint(self.state_dict(), last)
            if is_best:
                copy_checkpoint(last, self.checkpoint_dir / "best.pt")
        except OSError as exc:
            raise OutputError(
                f"could not write a checkpoint in {self.checkpoint_dir} ({exc.strerror or exc}); "
                f"the previous checkpoint files are intact"
            ) from exc

    def keep_weights(self, which: str) -> None:
        """After the fit, put the weights the run reports into :attr:`model`: ``best`` (the best
        validation epoch's) or ``last`` (the average when ``trainer.ema`` is on). The test, the
        saved stage and a distillation teacher then all use them; the average's work is done."""
        if which == "best":
            if self.best_state is not None:
                self.model.load_state_dict(self.best_state)
        elif self.ema is not None and self.ema.started:
            self.model.load_state_dict(self.ema.module.state_dict())
        self.ema = None

    @property
    def throughput(self) -> float:
        return self.train_samples / max(self.train_time_s, 1e-9)


def _best_of(state: dict[str, Any]) -> tuple[float | None, int | None]:
    """A checkpoint's best validation accuracy and epoch; None for a run without validation (older
    checkpoints stored -inf, or the training accuracy, which is not a validation figure)."""
    history = state.get("history") or []
    acc = state.get("best_val_acc")
    if acc is None or not math.isfinite(acc) or not any("val_acc" in row for row in history):
        return None, None
    return float(acc), int(state["best_epoch"])

"""TensorBoard event files in the run folder, written by torch's ``SummaryWriter``.

TensorBoard needs no account and no network: ``tensorboard --logdir <run or sweep folder>``.
Every series shares one x-axis, the global training step (an epoch's row sits at the step that
ends the epoch), so per-step and per-epoch curves overlay, and a resumed run can tell TensorBoard
to drop the steps it redoes (``purge_step``). A job with hyper-parameters writes them as an
HParams session (start info, and end info when it completed); no experiment summary is written,
so TensorBoard builds the HParams table from all sessions under ``--logdir``: a sweep's jobs
side by side, with every hyper-parameter any of them has.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from labkit.tracking.base import Tracker

#: engine step statistics whose tag is not their own name ("/" would open a sub-group)
STEP_NAMES = {"img/s": "images_per_s"}
#: metric-row keys that do not say their section themselves
EPOCH_TAGS = {"lr": "train/lr", "images_per_s": "train/images_per_s", "epoch_time_s": "epoch/time_s"}
#: summary.json keys of the test set's scores (``test_size`` is the model table's)
TEST_TAGS = {"test_acc": "test/acc", "test_loss": "test/loss"}
#: run statuses that end an HParams session as a success
SUCCESS = ("completed",)


def epoch_tag(key: str) -> str:
    """The tag of a metric-row key: ``train_loss`` -> ``train/loss``, ``val_acc`` -> ``val/acc``,
    ``lr`` -> ``train/lr``, any other key ``epoch/<key>`` (a nested record such as ``grad_norms``
    is its own section: :meth:`TensorBoardTracker.log_epoch`)."""
    section, _, rest = key.partition("_")
    if section in ("train", "val") and rest:
        return f"{section}/{rest}"
    return EPOCH_TAGS.get(key, f"epoch/{key}")


def numbers(tag: str, value: Any) -> Iterator[tuple[str, float]]:
    """``(tag, number)`` pairs of a value: nested mappings (the grad monitor's ``grad_norms``)
    extend the tag with their keys; strings, booleans and None are not scalars and are skipped."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from numbers(f"{tag}/{key}", item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield tag, float(value)
    elif hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        yield tag, float(value.item())  # a 0-d tensor or numpy scalar


def hparam_value(value: Any) -> float | str:
    """What the HParams plugin can hold: numbers stay numbers, anything else becomes its config
    spelling (``true``, ``null``, ``[2, 2]``), so a boolean is not shown as 1.0."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(info: Mapping[str, Any]) -> str:
    """The model table (parameters, device, precision, ...) as Markdown for the Text tab."""
    rows = "".join(f"| {key} | {value} |\n" for key, value in info.items())
    return f"| field | value |\n|---|---|\n{rows}"


class TensorBoardTracker(Tracker):
    """Scalars, the config and model table as text, and the job's hyper-parameters in ``log_dir``.

    ``hparams`` (key -> value; empty for none) are the job's command-line overrides, written as
    an HParams session whose metrics are the run's scalars (``test/acc``, ``summary/...``).
    """

    def __init__(self, log_dir: str | Path, hparams: Mapping[str, Any] | None = None,
                 flush_secs: int = 30) -> None:
        self.log_dir = Path(log_dir)
        self.hparams = {str(k): hparam_value(v) for k, v in (hparams or {}).items()}
        self.flush_secs = int(flush_secs)
        self.writer = None
        self.session_end = None  # the HParams session's end, written when the run completed
        self.config: dict[str, Any] | None = None
        self.info: dict[str, Any] = {}
        self.steps_per_epoch = 1
        self.global_step = 0

    # -- the writer opens at the first value, so a resumed run purges what it will redo -------
    def _writer(self, step: int):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # loads tensorboard: only when used

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.log_dir), purge_step=step, flush_secs=self.flush_secs)
            if self.config is not None:
                text = OmegaConf.to_yaml(OmegaConf.create(self.config))
                self.writer.add_text("config", f"```yaml\n{text}```", step)
            if self.info:
                self.writer.add_text("model", markdown_table(self.info), step)
            if self.hparams:
                from torch.utils.tensorboard.summary import hparams

                _, session_start, self.session_end = hparams(self.hparams, {})
                self.writer.file_writer.add_summary(session_start, step)
        return self.writer

    def _scalars(self, pairs: Iterable[tuple[str, float]], step: int) -> None:
        self.global_step = max(self.global_step, step)
        writer = self._writer(step)
        for tag, value in pairs:
            writer.add_scalar(tag, value, step)

    # -- tracker hooks ------------------------------------------------------------------------
    def start(self, config, info):
        self.config, self.info = dict(config), dict(info)

    def epoch_start(self, epoch, epochs, steps):
        self.steps_per_epoch = max(1, int(steps))

    def step(self, epoch, step, stats):
        at = (epoch - 1) * self.steps_per_epoch + step
        self._scalars([pair for key, value in stats.items()
                       for pair in numbers(f"train_step/{STEP_NAMES.get(key, key)}", value)], at)

    def log_epoch(self, metrics):
        epoch = int(metrics["epoch"])
        pairs = [("epoch", float(epoch))]
        for key, value in metrics.items():
            if key != "epoch":  # a nested record (grad_norms) is its own section
                pairs += numbers(key if isinstance(value, Mapping) else epoch_tag(key), value)
        self._scalars(pairs, epoch * self.steps_per_epoch)

    def log_summary(self, summary):
        """The test scores and the run's final figures; the model table's keys are text already."""
        self._scalars([pair for key, value in summary.items() if key not in self.info
                       for pair in numbers(TEST_TAGS.get(key, f"summary/{key}"), value)], self.global_step)

    def finish(self, status):
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        if self.session_end is not None and status in SUCCESS:
            writer.file_writer.add_summary(self.session_end, self.global_step)
        writer.close()

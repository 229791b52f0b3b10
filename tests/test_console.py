"""The console fits: at 80, 120 and 200 columns the live bar keeps its description and counts
whole, and every metric of the epoch line is shown (wrapped, not squeezed into the bar)."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from labkit.tracking.console import ConsoleTracker, packed_lines

#: an epoch as the engine reports it, plus more numbers than fit on 80 columns
EPOCH = {"epoch": 43, "train_loss": 0.2871, "train_acc": 0.9012, "train_time_s": 12.4,
         "images_per_s": 23456.7, "val_loss": 0.3012, "val_acc": 0.8953, "lr": 0.00125, "epoch_time_s": 13.1,
         "distill_kd_loss": 0.812, "distill_feature_loss": 0.0421, "grad_norms": {"block1": {"mean": 1.0}}}
STEP = {"loss": 0.2871, "acc": 0.9012, "img/s": 23456.7}


def run_epochs(width: int, live: bool) -> tuple[ConsoleTracker, str, str]:
    """One epoch through the tracker: what the console recorded, and the live area as the
    terminal shows it just before the epoch ends (rendered on its own, line by line)."""
    console = Console(width=width, record=True, file=io.StringIO(), force_terminal=live,
                      color_system=None)
    tracker = ConsoleTracker(console)
    assert tracker.live is live
    tracker.epoch_start(43, 100, 4300)
    for step in (1, 2150, 4300):
        tracker.step(43, step, STEP)
    area = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    if live:
        area.print(tracker.progress.get_renderable())
    tracker.log_epoch(EPOCH)
    tracker.finish("completed")
    return tracker, console.export_text(), area.export_text()


NAMES = [*(k for k in EPOCH if k not in ("epoch", "grad_norms")), *STEP]


@pytest.mark.parametrize("width", [80, 120, 200])
def test_live_bar_and_epoch_line_fit_the_terminal(width):
    tracker, text, area = run_epochs(width, live=True)
    for shown in (text, area):
        assert "…" not in shown  # nothing cut short: not the description, the counts nor a metric
    assert "epoch 43/100" in text and "2150/4300" in text and "4300/4300" in text
    for name in NAMES:
        assert name in text, name
    bar, *numbers = [line for line in area.splitlines() if line.strip()]
    assert bar.startswith("epoch 43/100 ") and re.search(r" 4300/4300 \d+:\d\d:\d\d$", bar.rstrip())
    assert " ".join(numbers).split() == "loss 0.2871 acc 0.9012 img/s 23,457".split()
    assert all(len(line) <= width for line in area.splitlines())
    assert not tracker.progress  # finished: the live area is gone


@pytest.mark.parametrize("width", [80, 120, 200])
def test_a_log_file_gets_the_same_wrapped_epoch_line(width):
    tracker, text, _ = run_epochs(width, live=False)
    assert tracker.progress is None and "…" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].startswith("epoch 43/100: train_loss 0.2871  train_acc 0.9012")
    assert all(len(line) <= width for line in lines) and all(line.startswith("  ") for line in lines[1:])
    assert len(lines) == {80: 3, 120: 2, 200: 2}[width]
    for name in NAMES[:-len(STEP)]:
        assert name in text, name
    assert "grad_norms" not in text  # not a number: summary.json has it, the console does not


def test_packing_never_splits_a_metric():
    cells = [f"metric_{i} 0.{i}000" for i in range(12)]
    lines = packed_lines("epoch 1/2:", cells, 40)
    assert all(len(line) <= 40 for line in lines)
    assert " ".join(lines).split() == ["epoch", "1/2:", *" ".join(cells).split()]
    assert all(line.startswith("  metric_") for line in lines[1:])

"""Forest plots: one row per arm, its paired difference to the baseline with the 95 % CI, a line at 0.

A comparison against a baseline is a difference, not two accuracies: drawn as a forest plot the
question "is it better, and by how much" is read off one axis (which side of zero, how far, how
sure), which an accuracy figure with two overlapping error bars hides.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.report.stats import Comparison, Estimate
from labkit.report.table import short_names
from labkit.tracking.figures import pyplot, save_figure

#: what the x axis of every forest plot measures
DIFFERENCE_LABEL = ("difference in percentage points: mean and 95 % CI over paired seeds\n"
                    "blue: the interval excludes 0; grey: it includes 0; hollow: one seed, no interval")
#: colours of a row whose interval excludes zero, includes it, or is missing (one seed)
SHOWN, NOT_SHOWN = "tab:blue", "0.45"
#: row labels longer than this wrap
WRAP = 46


@dataclass(frozen=True)
class ForestRow:
    """One arm: its label and the paired difference ``arm - baseline`` in percentage points."""

    label: str
    difference: Estimate


def _side_text(d: Estimate) -> str:
    if d.low is None or d.high is None:
        return f"{d.mean:+.2f} (n={d.n}, no CI)"
    return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"


def _wrapped(label: str, width: int = WRAP) -> str:
    """A long label (a method and its settings) on several lines, broken preferably after a
    ``;`` and otherwise after a comma or a space, each line at most ``width`` characters."""
    parts = [p.strip() + ";" for p in label.split(";")]
    parts[-1] = parts[-1][:-1]
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += " " + part
        else:
            lines += textwrap.wrap(part, width, break_on_hyphens=False) or [part]
    return "\n".join(lines)


def draw_forest(ax: Any, rows: Sequence[ForestRow], xlabel: str = DIFFERENCE_LABEL,
                references: Sequence[tuple[str, float]] = ()) -> None:
    """Draw ``rows`` top to bottom on ``ax``: a point and its CI per row (blue when the interval
    excludes zero, grey otherwise, hollow without an interval), the numbers at the right, a
    vertical line at zero and one dotted line per ``(label, x)`` in ``references``."""
    from matplotlib.transforms import blended_transform_factory

    ys = list(range(len(rows)))
    side = blended_transform_factory(ax.transAxes, ax.transData)
    for y, row in zip(ys, rows, strict=True):
        d = row.difference
        has_ci = d.low is not None and d.high is not None
        colour = SHOWN if d.excludes_zero else NOT_SHOWN
        xerr = [[d.mean - d.low], [d.high - d.mean]] if has_ci else None
        ax.errorbar([d.mean], [y], xerr=xerr, fmt="o", color=colour, capsize=4, markersize=7,
                    markerfacecolor=colour if has_ci else "white", linestyle="none")
        ax.text(1.02, y, _side_text(d), transform=side, va="center", fontsize=8, color=colour)
    ax.axvline(0.0, color="black", linewidth=1.0, gid="zero")
    for label, x in references:
        ax.axvline(x, color="0.3", linewidth=1.0, linestyle=":", gid="reference")
        ax.text(x, -0.75, f"{label} ", fontsize=8, color="0.3", va="center", ha="right")
    # every interval, zero and the references inside the frame, with a margin
    xs = [0.0, *(x for _, x in references)]
    xs += [v for row in rows for v in (row.difference.low, row.difference.high, row.difference.mean)
           if v is not None]
    pad = 0.08 * (max(xs) - min(xs) or 1.0)
    ax.set_xlim(min(xs) - pad, max(xs) + pad)
    ax.set_yticks(ys, [_wrapped(row.label) for row in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5 - (0.5 if references else 0.0))  # first row at the top
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def plot_forest(rows: Sequence[ForestRow], out: str | Path, title: str,
                references: Sequence[tuple[str, float]] = ()) -> Path:
    """A forest figure of ``rows`` written to ``out`` (its height grows with the rows)."""
    plt = pyplot()
    labels = [_wrapped(row.label).split("\n") for row in rows]
    longest = max((len(line) for lines in labels for line in lines), default=0)
    height = 1.5 + 0.25 * (len(rows) + bool(references)) + 0.17 * sum(len(lines) for lines in labels)
    fig, ax = plt.subplots(figsize=(min(13.0, 6.2 + 0.08 * longest), height))  # plot + numbers + labels
    draw_forest(ax, rows, references=references)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out, bbox_inches="tight")


def _column_name(key: str) -> str:
    """``student_distill_test_acc`` -> ``distilled student`` (distill.py's paired columns)."""
    stage = key.removesuffix("_test_acc").removeprefix("student_")
    return {"distill": "distilled student", "baseline": "baseline student"}.get(stage, stage)


def comparison_rows(comparisons: Sequence[Comparison]) -> tuple[str, list[ForestRow]]:
    """The title and rows of one key's comparisons: a row per arm and context (``depth=8``);
    the arm is named in the row only when the key has several arms."""
    arms = list(dict.fromkeys((c.arm, c.baseline) for c in comparisons))
    contexts = list(dict.fromkeys(k for c in comparisons for k in c.context))
    names = short_names(contexts)
    columns = all(c.baseline.endswith("_test_acc") for c in comparisons)

    def arm(c: Comparison) -> str:
        return (f"{_column_name(c.arm)} − {_column_name(c.baseline)}" if columns
                else f"{c.arm} − {c.baseline}")

    key_name = short_names([comparisons[0].key, *contexts])[comparisons[0].key]
    rows = []
    for c in comparisons:
        parts = [f"{key_name} {arm(c)}"] if len(arms) > 1 else []
        parts += [f"{names[k]}={v}" for k, v in c.context.items()]
        rows.append(ForestRow(", ".join(parts) or arm(c), c.difference))
    key = comparisons[0].key
    title = arm(comparisons[0]) if columns else (
        f"{key}: {arm(comparisons[0])}" if len(arms) == 1 else f"{key}: each value − {arms[0][1]}")
    return f"{title}, paired by seed", rows

"""The report's figures: test accuracy against each swept value, learning curves, gradient norms."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.report.grads import plot_grad_norm_comparison
from labkit.report.jobs import Job
from labkit.report.stats import RESULT_STATES, estimate, is_replicate_key
from labkit.report.table import accuracy_key, format_value, swept_keys
from labkit.tracking.figures import pyplot, save_figure


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """``model.depth`` -> ``depth`` for legends, unless two keys would end up with one name."""
    tails = [k.split(".")[-1].split("/")[-1] for k in keys]
    return {k: t if tails.count(t) == 1 else k for k, t in zip(keys, tails, strict=True)}


def job_label(job: Job, keys: Sequence[str]) -> str:
    """The job's swept values, e.g. ``depth=8, residual=true`` (its folder name if none)."""
    names = short_names(keys)
    parts = [f"{names[k]}={format_value(job.overrides[k])}" for k in keys if k in job.overrides]
    return ", ".join(parts) or f"job {job.name}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finished(jobs: Sequence[Job]) -> list[Job]:
    key = accuracy_key(jobs)
    return [j for j in jobs if j.status in RESULT_STATES and _is_number(j.summary.get(key))]


def x_axis_keys(jobs: Sequence[Job]) -> list[str]:
    """Swept keys worth an accuracy-vs-value figure: not a flag, not a seed, >= 2 finished values."""
    done = _finished(jobs)
    keys = []
    for key in swept_keys(jobs):
        values = [j.overrides[key] for j in done if key in j.overrides]
        if is_replicate_key(key) or any(isinstance(v, bool) for v in values):
            continue
        if len({format_value(v) for v in values}) >= 2:
            keys.append(key)
    return keys


def _file_part(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


@dataclass
class Series:
    """One line of an accuracy figure: x values with the mean accuracy (%) over seeds and the
    half-width of its 95 % confidence interval (0 for a single seed)."""

    label: str
    xs: list[Any]
    means: list[float]
    errors: list[float]


def accuracy_series(jobs: Sequence[Job], key: str) -> tuple[list[Any], list[Series]]:
    """The x positions and one series per combination of the other swept values (e.g.
    residual x norm); swept seeds are averaged, with their 95 % CI. Non-numeric values (lists,
    names) are categories in the sweep's order."""
    done = [j for j in _finished(jobs) if key in j.overrides]
    y_key = accuracy_key(jobs)
    keys = swept_keys(jobs)
    others = [k for k in keys if k != key and not is_replicate_key(k)]
    numeric = all(_is_number(j.overrides[key]) for j in done)
    order: list[Any] = []
    groups: dict[str, dict[Any, list[float]]] = {}
    for job in done:
        x = job.overrides[key] if numeric else format_value(job.overrides[key])
        if x not in order:
            order.append(x)
        label = job_label(job, others) if others else "all jobs"
        groups.setdefault(label, {}).setdefault(x, []).append(100 * job.summary[y_key])
    positions = sorted(order) if numeric else order
    series = []
    for label, by_x in groups.items():
        xs = [x for x in positions if x in by_x]
        estimates = [estimate(by_x[x]) for x in xs]
        series.append(Series(label, xs, [e.mean for e in estimates], [e.half_width for e in estimates]))
    return positions, series


def plot_accuracy_vs(jobs: Sequence[Job], key: str, out: Path) -> Path:
    """Test accuracy (see ``accuracy_key``) against ``key``, one line per :func:`accuracy_series`."""
    plt = pyplot()
    positions, series = accuracy_series(jobs, key)
    numeric = all(_is_number(x) for x in positions)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for line in series:
        plot_x = line.xs if numeric else [positions.index(x) for x in line.xs]
        if any(e > 0 for e in line.errors):
            ax.errorbar(plot_x, line.means, yerr=line.errors, marker="o", capsize=3, label=line.label)
        else:
            ax.plot(plot_x, line.means, marker="o", label=line.label)
    if numeric and min(positions) > 0 and max(positions) / min(positions) >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(positions, [format_value(x) for x in positions])
        ax.minorticks_off()
    elif not numeric:
        ax.set_xticks(range(len(positions)), positions)
    keys = swept_keys(jobs)
    replicates = [k for k in keys if is_replicate_key(k)]
    others = [k for k in keys if k != key and k not in replicates]
    name = str(accuracy_key(jobs)).replace("_acc", " accuracy").replace("_", " ")
    title = f"{name} vs {key}"
    if replicates:
        title += f"\n(mean and 95 % CI over {', '.join(replicates)})"
    ax.set_title(title)
    ax.set_xlabel(key)
    ax.set_ylabel(f"{name} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=", ".join(short_names(others).values()) or None, title_fontsize=8)
    return save_figure(fig, out)


def plot_learning_curves(jobs: Sequence[Job], out: Path) -> Path | None:
    """Validation accuracy and training loss per epoch, one line per job (dashed: not completed)."""
    with_metrics = [j for j in jobs if j.metrics]
    if not with_metrics:
        return None
    plt = pyplot()
    keys = swept_keys(jobs)
    has_val = any(row.get("val_acc") is not None for j in with_metrics for row in j.metrics)
    acc_key = "val_acc" if has_val else "train_acc"
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    cmap = plt.get_cmap("tab10" if len(with_metrics) <= 10 else "viridis")
    for i, job in enumerate(with_metrics):
        color = cmap(i if len(with_metrics) <= 10 else i / (len(with_metrics) - 1))
        style = "-" if job.status == "completed" else "--"
        label = job_label(job, keys) + ("" if job.status == "completed" else f" ({job.status})")
        epochs = [row["epoch"] for row in job.metrics]
        for ax, metric, scale in ((axes[0], acc_key, 100.0), (axes[1], "train_loss", 1.0)):
            values = [row.get(metric) for row in job.metrics]
            ax.plot(epochs, [math.nan if v is None else scale * v for v in values], style,
                    marker="o", markersize=3, color=color, label=label)
    axes[0].set_title(("validation" if has_val else "training") + " accuracy per epoch")
    axes[0].set_ylabel(("validation" if has_val else "training") + " accuracy (%)")
    axes[1].set_title("training loss per epoch")
    axes[1].set_ylabel("training loss")
    losses = [row["train_loss"] for j in with_metrics for row in j.metrics
              if _is_number(row.get("train_loss")) and row["train_loss"] > 0]
    if losses and max(losses) / min(losses) >= 20:  # log only when it spreads the lines apart
        axes[1].set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if len(with_metrics) <= 4:
        axes[1].legend(fontsize=8)
    else:
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("learning curves of all jobs", fontsize=10)
    return save_figure(fig, out, bbox_inches="tight")


def grad_norm_figure(jobs: Sequence[Job], out: Path) -> Path | None:
    """The jobs' gradient norms on one figure when they recorded them (None otherwise)."""
    keys = swept_keys(jobs)
    return plot_grad_norm_comparison([(job_label(j, keys), j.grad_norms) for j in jobs if j.grad_norms], out)


def make_figures(jobs: Sequence[Job], folder: Path) -> list[Path]:
    """Every figure the jobs allow, written into ``folder``; returns their paths."""
    figures = [plot_accuracy_vs(jobs, key, folder / f"test_acc_vs_{_file_part(key)}.png")
               for key in x_axis_keys(jobs)]
    figures.append(plot_learning_curves(jobs, folder / "learning_curves.png"))
    figures.append(grad_norm_figure(jobs, folder / "grad_norms.png"))
    return [f for f in figures if f is not None]

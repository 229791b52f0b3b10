"""The report's figures: test accuracy and final training loss against each swept value, forest
plots of the paired comparisons, learning curves, gradient norms."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.report.forest import comparison_rows, plot_forest
from labkit.report.grads import plot_grad_norm_comparison
from labkit.report.jobs import Job
from labkit.report.loss_curves import plot_mean_loss_curves
from labkit.report.stats import (
    RESULT_STATES,
    Comparison,
    Estimate,
    estimate,
    geometric_estimate,
    is_replicate_key,
)
from labkit.report.table import accuracy_key, format_value, short_names, swept_keys
from labkit.tracking.figures import pyplot, save_figure


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


def is_categorical(values: Sequence[Any]) -> bool:
    """Names, lists and flags are categories: their order on an axis is arbitrary, so their
    points are never joined by a line (a line would claim there is something in between)."""
    return not all(_is_number(v) for v in values)


def x_axis_keys(jobs: Sequence[Job]) -> list[str]:
    """Swept keys worth an accuracy-vs-value figure: not a seed, >= 2 finished values. A flag is
    the x axis only when no other key is (otherwise flags are the figure's series)."""
    done = _finished(jobs)
    keys: list[str] = []
    flags: list[str] = []
    for key in swept_keys(jobs):
        values = [j.overrides[key] for j in done if key in j.overrides]
        if is_replicate_key(key) or len({format_value(v) for v in values}) < 2:
            continue
        (flags if any(isinstance(v, bool) for v in values) else keys).append(key)
    return keys or flags[:1]


def _file_part(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


@dataclass
class Series:
    """One line of a figure against a swept value: x values with the mean metric over seeds
    (accuracy in %) and the half-width of its 95 % confidence interval (0 for a single seed)."""

    label: str
    xs: list[Any]
    means: list[float]
    errors: list[float]
    bounds: list[tuple[float, float]] | None = None  # an asymmetric interval (a loss's geometric one)


def _series_keys(jobs: Sequence[Job], key: str) -> list[str]:
    """The swept keys that split the jobs into series: all but ``key`` and the seeds."""
    return [k for k in swept_keys(jobs) if k != key and not is_replicate_key(k)]


def _series_label(job: Job, others: Sequence[str]) -> str:
    return job_label(job, others) if others else "all jobs"


#: the final training loss: the figure that shows degradation (a deeper net fitting worse)
TRAIN_LOSS = "final_train_loss"


def accuracy_series(jobs: Sequence[Job], key: str,
                    metric: str | None = None) -> tuple[list[Any], list[Series]]:
    """The x positions and one series per combination of the other swept values (e.g.
    residual x norm); swept seeds are averaged, with their 95 % CI. Non-numeric values (lists,
    names, flags) are categories in the sweep's order. ``metric``: a summary key other than the
    test accuracy (e.g. :data:`TRAIN_LOSS`): its geometric mean and interval over seeds (losses
    span orders of magnitude; accuracy: the arithmetic mean, in %)."""
    done = [j for j in _finished(jobs)
            if key in j.overrides and (metric is None or _is_number(j.summary.get(metric)))]
    y_key = metric or accuracy_key(jobs)
    scale = 100.0 if metric is None else 1.0
    others = _series_keys(jobs, key)
    numeric = not is_categorical([j.overrides[key] for j in done])
    order: list[Any] = []
    groups: dict[str, dict[Any, list[float]]] = {}
    for job in done:
        x = job.overrides[key] if numeric else format_value(job.overrides[key])
        if x not in order:
            order.append(x)
        groups.setdefault(_series_label(job, others), {}).setdefault(x, []).append(scale * job.summary[y_key])
    positions = sorted(order) if numeric else order
    series = []
    for label, by_x in groups.items():
        xs = [x for x in positions if x in by_x]
        if metric is None or any(v <= 0 for x in xs for v in by_x[x]):
            estimates = [estimate(by_x[x]) for x in xs]
            series.append(Series(label, xs, [e.mean for e in estimates], [e.half_width for e in estimates]))
            continue
        estimates = [geometric_estimate(by_x[x]) for x in xs]
        bounds = [(e.mean, e.mean) if e.low is None else (e.low, e.high) for e in estimates]
        series.append(Series(label, xs, [e.mean for e in estimates], [e.half_width for e in estimates],
                             bounds))
    return positions, series


#: distill.py's summary keys drawn as horizontal reference lines in a distillation study's figure
REFERENCE_KEYS = {"teacher_test_acc": "teacher", "student_baseline_test_acc": "baseline student"}


@dataclass
class Reference:
    """A horizontal line of an accuracy figure: the teacher or the baseline student (mean and CI
    over seeds, in %) of one series, or of all series (``series`` None) when they share it."""

    name: str
    series: str | None
    estimate: Estimate


def reference_levels(jobs: Sequence[Job], key: str) -> list[Reference]:
    """The teacher and the baseline student of a distillation study (the figure's y is the
    distilled student), one value per seed (every job of a seed reuses its seed's baseline).
    A reference that changes along ``key`` (e.g. the student's width) is no horizontal line and
    is left out."""
    if accuracy_key(jobs) != "student_distill_test_acc":
        return []
    done = [j for j in _finished(jobs) if key in j.overrides]
    others = _series_keys(jobs, key)
    seeds = [k for k in swept_keys(jobs) if is_replicate_key(k)]
    found = []
    for summary_key, name in REFERENCE_KEYS.items():
        per_series: dict[str, dict[tuple[str, ...], set[float]]] = {}
        for job in done:
            value = job.summary.get(summary_key)
            if _is_number(value):
                seed = tuple(format_value(job.overrides.get(k)) for k in seeds)
                per_series.setdefault(_series_label(job, others), {}).setdefault(seed, set()).add(
                    round(100 * value, 6))
        if not per_series or any(len(v) > 1 for by_seed in per_series.values() for v in by_seed.values()):
            continue  # missing, or not one value per seed: not a level
        levels = {label: estimate([next(iter(v)) for v in by_seed.values()])
                  for label, by_seed in per_series.items()}
        if len({round(e.mean, 6) for e in levels.values()}) == 1:
            found.append(Reference(name, None, next(iter(levels.values()))))
        else:
            found += [Reference(name, label, e) for label, e in levels.items()]
    return found


#: line style of each reference
REFERENCE_STYLE = {"teacher": ("black", "--"), "baseline student": ("tab:red", "-.")}


def draw_accuracy_vs(ax: Any, jobs: Sequence[Job], key: str, metric: str | None = None) -> None:
    """Test accuracy (see ``accuracy_key``; or the summary's ``metric``) against ``key`` on ``ax``:
    numbers on a line per series, categories as points with their CI side by side and no line; a
    distillation study's teacher and baseline student as horizontal lines."""
    positions, series = accuracy_series(jobs, key, metric)
    numeric = not is_categorical(positions)
    colours = {line.label: f"C{i % 10}" for i, line in enumerate(series)}
    references = reference_levels(jobs, key) if metric is None else []
    # one series has no legend entry of its own unless references need telling apart from it
    single = "distilled student" if references else "_nolegend_"
    spread = min(0.5 / max(len(series), 1), 0.15)  # categories: series side by side at each value
    for i, line in enumerate(series):
        errors = line.errors if any(e > 0 for e in line.errors) else None
        if line.bounds is not None and errors is not None:
            errors = [[m - low for m, (low, _) in zip(line.means, line.bounds, strict=True)],
                      [high - m for m, (_, high) in zip(line.means, line.bounds, strict=True)]]
        if numeric:
            ax.errorbar(line.xs, line.means, yerr=errors, marker="o", capsize=3, color=colours[line.label],
                        label=single if line.label == "all jobs" else line.label)
        else:
            shift = (i - (len(series) - 1) / 2) * spread
            ax.errorbar([positions.index(x) + shift for x in line.xs], line.means, yerr=errors, fmt="o",
                        linestyle="none", capsize=4, markersize=7, color=colours[line.label],
                        label=single if line.label == "all jobs" else line.label)
    for ref in references:
        colour, style = REFERENCE_STYLE[ref.name]
        if ref.series is not None:
            colour = colours.get(ref.series, colour)
        where = f", {ref.series}" if ref.series else ""
        ax.axhline(ref.estimate.mean, color=colour, linestyle=style, linewidth=1.2, gid="reference",
                   label=f"{ref.name}{where}: {ref.estimate.mean:.2f} %")
        if ref.series is None and ref.estimate.low is not None and ref.estimate.high > ref.estimate.low:
            ax.axhspan(ref.estimate.low, ref.estimate.high, color=colour, alpha=0.08, linewidth=0)
    if numeric and min(positions) > 0 and max(positions) / min(positions) >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(positions, [format_value(x) for x in positions])
        ax.minorticks_off()
    elif not numeric:
        ax.set_xticks(range(len(positions)), positions)
        ax.set_xlim(-0.5, len(positions) - 0.5)
    ax.set_xlabel(key)
    ax.grid(alpha=0.3)


def plot_accuracy_vs(jobs: Sequence[Job], key: str, out: Path, metric: str | None = None) -> Path:
    """:func:`draw_accuracy_vs` with its title and legend, written to ``out``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    draw_accuracy_vs(ax, jobs, key, metric)
    keys = swept_keys(jobs)
    replicates = [k for k in keys if is_replicate_key(k)]
    name = str(metric or accuracy_key(jobs)).replace("_acc", " accuracy").replace("_", " ")
    title = f"{name} vs {key}"
    if replicates:
        average = "mean" if metric is None else "geometric mean"
        title += f"\n({average} and 95 % CI over {', '.join(replicates)})"
    ax.set_title(title)
    ax.set_ylabel(f"{name} (%)" if metric is None else name)
    values = [m for line in accuracy_series(jobs, key, metric)[1] for m in line.means]
    if metric is not None and values and min(values) > 0 and max(values) / min(values) >= 20:
        ax.set_yscale("log")  # losses from 1e-3 to 2: a linear axis hides all but the largest
    if ax.get_legend_handles_labels()[1]:
        others = _series_keys(jobs, key)
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


def forest_figures(comparisons: Sequence[Comparison], folder: Path) -> list[Path]:
    """One forest plot per compared key (``paired_<key>.png``): the report's paired comparisons."""
    by_key: dict[str, list[Comparison]] = {}
    for comparison in comparisons:
        by_key.setdefault(comparison.key, []).append(comparison)
    figures = []
    for key, found in by_key.items():
        title, rows = comparison_rows(found)
        figures.append(plot_forest(rows, folder / f"paired_{_file_part(key)}.png", title))
    return figures


def make_figures(jobs: Sequence[Job], folder: Path, comparisons: Sequence[Comparison] = ()) -> list[Path]:
    """Every figure the jobs allow, written into ``folder``; returns their paths. ``comparisons``
    (the report's paired differences) are drawn as forest plots."""
    keys = x_axis_keys(jobs)
    figures = [plot_accuracy_vs(jobs, key, folder / f"test_acc_vs_{_file_part(key)}.png") for key in keys]
    if any(_is_number(j.summary.get(TRAIN_LOSS)) for j in _finished(jobs)):
        figures += [plot_accuracy_vs(jobs, key, folder / f"train_loss_vs_{_file_part(key)}.png", TRAIN_LOSS)
                    for key in keys]
    figures += forest_figures(comparisons, folder)
    figures.append(plot_learning_curves(jobs, folder / "learning_curves.png"))
    if keys and any(is_replicate_key(k) for k in swept_keys(jobs)):  # seeds to average over
        name = f"train_loss_curves_by_{_file_part(keys[0])}.png"
        figures.append(plot_mean_loss_curves(jobs, keys[0], folder / name))
    figures.append(grad_norm_figure(jobs, folder / "grad_norms.png"))
    return [f for f in figures if f is not None]

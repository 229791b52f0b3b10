"""Training-loss curves averaged over seeds: one panel per combination of the other swept values
(e.g. residual x norm), one line per value of the key on the x axis (e.g. depth), the 95 % CI over
seeds as a band. With dozens of jobs, one line per job (``learning_curves.png``) cannot be read;
this figure answers "does the deeper network fit worse, in each variant, at every epoch?"."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from labkit.report.jobs import Job
from labkit.report.stats import RESULT_STATES, Estimate, estimate, geometric_estimate, is_replicate_key
from labkit.report.table import format_value, short_names, swept_keys
from labkit.tracking.figures import pyplot, save_figure


def _panels(jobs: Sequence[Job], key: str) -> dict[str, dict[str, list[Job]]]:
    """``{panel label: {line label: jobs}}`` for the finished jobs with metrics."""
    others = [k for k in swept_keys(jobs) if k != key and not is_replicate_key(k)]
    names = short_names(others)
    panels: dict[str, dict[str, list[Job]]] = {}
    for job in jobs:
        if job.status not in RESULT_STATES or not job.metrics or key not in job.overrides:
            continue
        panel = ", ".join(f"{names[k]}={format_value(job.overrides.get(k))}" for k in others) or "all jobs"
        line = format_value(job.overrides[key])
        panels.setdefault(panel, {}).setdefault(line, []).append(job)
    return panels


def mean_curve(jobs: Sequence[Job], metric: str = "train_loss") -> tuple[list[int], list[Estimate]]:
    """Epochs every job reached and, per epoch, the geometric mean of ``metric`` over ``jobs``
    with its 95 % CI (losses span orders of magnitude; an arithmetic interval would reach below
    zero on the log axis); the arithmetic one if a value is not positive."""
    by_epoch = [{row["epoch"]: row.get(metric) for row in job.metrics} for job in jobs]
    epochs = sorted(set.intersection(*(set(e) for e in by_epoch)))
    estimates = []
    for epoch in epochs:
        values = [float(rows[epoch]) for rows in by_epoch if rows[epoch] is not None]
        estimates.append(geometric_estimate(values) if min(values) > 0 else estimate(values))
    return epochs, estimates


def plot_mean_loss_curves(jobs: Sequence[Job], key: str, out: Path) -> Path | None:
    """The figure (see the module docstring); None without jobs to draw."""
    panels = _panels(jobs, key)
    if not panels:
        return None
    plt = pyplot()
    columns = min(len(panels), 2)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.2 * columns, 4.2 * rows), sharey=True, squeeze=False)
    lines = list(dict.fromkeys(line for by_line in panels.values() for line in by_line))
    log_scale = False
    for ax, (panel, by_line) in zip(axes.flat, panels.items(), strict=False):
        for line, members in by_line.items():
            epochs, estimates = mean_curve(members)
            means = [e.mean for e in estimates]
            colour = f"C{lines.index(line) % 10}"
            ax.plot(epochs, means, color=colour, label=f"{short_names([key])[key]}={line} (n={len(members)})")
            ax.fill_between(epochs, [e.mean if e.low is None else e.low for e in estimates],
                            [e.mean if e.high is None else e.high for e in estimates], color=colour,
                            alpha=0.15, linewidth=0)
            log_scale |= bool(means) and min(means) > 0 and max(means) / min(means) >= 20
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("training loss")
        if log_scale:
            ax.set_yscale("log")  # shared y: one call sets every panel
    fig.suptitle(f"training loss per epoch by {key} (geometric mean over seeds, band: 95 % CI)", fontsize=11)
    return save_figure(fig, out, bbox_inches="tight")

"""Gradient norms of several runs: one figure (one line per run, dashed for runs with skip
connections) and a table of first- and last-block norms next to each run's test accuracy.

``labkit-report grads RUN_OR_MULTIRUN_DIR...`` reads each run's ``grad_norms.json`` (written with
``analysis.grad_norms=true``); one run's own figure is :mod:`labkit.analysis.grads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from labkit.analysis.grads import PROBES, probe_values, style_axis
from labkit.tracking.figures import pyplot, save_figure

#: (legend label, grad_norms.json record) of one run
LabelledRecord = tuple[str, dict[str, Any]]


def _run_colors(plt, records: list[dict[str, Any]]) -> list[Any]:
    """One colour per depth when each depth has one plain and/or one residual run, else per run."""
    keys = [(sum(name.startswith("block") for name in r["groups"]), bool(r.get("skip_connections")))
            for r in records]
    by_depth = len(set(keys)) == len(keys) and len({depth for depth, _ in keys}) < len(keys)
    slots = list(dict.fromkeys(depth for depth, _ in keys)) if by_depth else list(range(len(keys)))
    cmap = plt.get_cmap("tab10" if len(slots) <= 10 else "viridis")
    colors = [cmap(i if len(slots) <= 10 else i / max(len(slots) - 1, 1)) for i in range(len(slots))]
    return [colors[slots.index(depth if by_depth else i)] for i, (depth, _) in enumerate(keys)]


def plot_grad_norm_comparison(runs: Sequence[LabelledRecord], out: str | Path) -> Path | None:
    """Several runs on one figure (one line per run, dashed with skips); None without runs."""
    if not runs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for (label, record), color in zip(runs, _run_colors(plt, [rec for _, rec in runs]), strict=True):
        style = "--" if record.get("skip_connections") else "-"
        for ax, (when, _) in zip(axes, PROBES, strict=True):
            if record.get(when):
                ax.plot(record["positions"], probe_values(record, when), style, marker="o", markersize=2.5,
                        color=color, label=label)
    for ax, (_, title) in zip(axes, PROBES, strict=True):
        style_axis(ax, f"gradient norms per block, {title}")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle("solid: plain, dashed: with skip connections", fontsize=9)
    return save_figure(fig, out)


def comparison_rows(runs: Sequence[LabelledRecord],
                    test_accs: Sequence[float | None]) -> list[dict[str, Any]]:
    """Per run: test accuracy and the first and last blocks' probe norms (init and final)."""
    rows = []
    for (label, record), test_acc in zip(runs, test_accs, strict=True):
        names = record["groups"]
        body = [i for i, name in enumerate(names) if name != "head"] or list(range(len(names)))
        first, last = body[0], body[-1]
        row: dict[str, Any] = {"run": label, "skips": record.get("skip_connections", 0), "test_acc": test_acc}
        for when, _ in PROBES:
            values = record.get(when) or []
            if values:
                row[f"first_{when}"] = values[first]
                row[f"last_{when}"] = values[last]
                ok = values[first] is not None and values[last]
                row[f"first/last_{when}"] = values[first] / values[last] if ok else None
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 or abs(value) >= 1000 else f"{value:.4f}"
    return str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rows of :func:`comparison_rows` as a table on the console."""
    table = Table(title="gradient norms per run (probe batch)")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    # piped or redirected: wide, as labkit-report jobs, rather than rich's default of 80 columns
    (Console() if Console().is_terminal else Console(width=200)).print(table)

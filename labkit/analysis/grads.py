"""Gradient-norm figures: one run's ``grad_norms.png`` and a comparison across run directories.

    python -m labkit.analysis.grads RUN_DIR_OR_MULTIRUN_DIR... [-o grad_norms_comparison.png]

Each run directory written with ``analysis.grad_norms=true`` holds ``grad_norms.json``: the
per-block gradient norms on a fixed batch at initialisation and at the end of training (see
:mod:`labkit.analysis.grad_monitor`). The command draws them on one figure, one line per run
(dashed for runs with skip connections), and prints a table of first- and last-block norms
next to each run's test accuracy. A multirun directory stands for all its job directories.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.analysis.figures import pyplot, save_figure
from labkit.errors import ConfigError

RECORD = "grad_norms.json"
PROBES = (("init", "at initialisation"), ("final", "after training"))


# -- reading run directories ------------------------------------------------------------------
def load_grad_norms(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``grad_norms.json`` as a dict, or None when the run did not record one."""
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories from the arguments: a multirun directory stands for its job folders."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / RECORD).is_file() or not path.is_dir():
            runs.append(path)
            continue
        jobs = [d for d in path.iterdir() if d.is_dir() and (d / RECORD).is_file()]
        runs += sorted(jobs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0,
                                            d.name)) or [path]
    return runs


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    return [str(item) for item in OmegaConf.load(path)]


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Name each run by the command-line overrides that set it apart from the others."""
    overrides = [_overrides(d) for d in run_dirs]
    common = set.intersection(*(set(o) for o in overrides)) if len(overrides) > 1 else set()
    labels = []
    for run_dir, items in zip(run_dirs, overrides, strict=True):
        own = [item for item in items if item not in common]
        labels.append(",".join(own) or run_dir.name)
    return labels


def _summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# -- figures ----------------------------------------------------------------------------------

def _values(record: dict[str, Any], when: str) -> list[float]:
    return [float("nan") if v is None else v for v in record.get(when) or []]


def _style_axis(ax, title: str) -> None:
    ax.set_yscale("log")
    ax.set_xlabel("block (depth position: input side left, head right)")
    ax.set_ylabel("L2 norm of weight gradients")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")


def _run_colors(plt, records: list[dict[str, Any]]) -> list[Any]:
    """One colour per depth when each depth has one plain and/or one residual run, else per run."""
    keys = [(sum(name.startswith("block") for name in r["groups"]), bool(r.get("skip_connections")))
            for r in records]
    by_depth = len(set(keys)) == len(keys) and len({depth for depth, _ in keys}) < len(keys)
    slots = list(dict.fromkeys(depth for depth, _ in keys)) if by_depth else list(range(len(keys)))
    cmap = plt.get_cmap("tab10" if len(slots) <= 10 else "viridis")
    colors = [cmap(i if len(slots) <= 10 else i / max(len(slots) - 1, 1)) for i in range(len(slots))]
    return [colors[slots.index(depth if by_depth else i)] for i, (depth, _) in enumerate(keys)]


def plot_grad_norms(record: dict[str, Any], out: str | Path, title: str = "") -> Path:
    """One run: block gradient norm against depth, at initialisation and after training."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for when, label in PROBES:
        if record.get(when):
            ax.plot(record["positions"], _values(record, when), "-o", markersize=3, label=label)
    _style_axis(ax, title or f"gradient norms per block ({record.get('model', 'model')}, "
                             f"{record.get('skip_connections', 0)} skips)")
    ax.legend()
    return save_figure(fig, out)


def plot_grad_norm_comparison(run_dirs: list[Path], out: Path,
                              labels: list[str] | None = None) -> Path | None:
    """Several runs on one figure (one line per run, dashed with skips); None if none recorded."""
    run_dirs = [Path(d) for d in run_dirs]
    labels = list(labels) if labels is not None else run_labels(run_dirs)
    if len(labels) != len(run_dirs):
        raise ConfigError(f"{len(labels)} labels given for {len(run_dirs)} run directories")
    runs = [(label, rec) for label, d in zip(labels, run_dirs, strict=True)
            if (rec := load_grad_norms(d)) is not None]
    if not runs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for (label, record), color in zip(runs, _run_colors(plt, [rec for _, rec in runs]), strict=True):
        style = "--" if record.get("skip_connections") else "-"
        for ax, (when, _) in zip(axes, PROBES, strict=True):
            if record.get(when):
                ax.plot(record["positions"], _values(record, when), style, marker="o", markersize=2.5,
                        color=color, label=label)
    for ax, (_, title) in zip(axes, PROBES, strict=True):
        _style_axis(ax, f"gradient norms per block, {title}")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle("solid: plain, dashed: with skip connections", fontsize=9)
    return save_figure(fig, out)


# -- table ------------------------------------------------------------------------------------
def comparison_rows(run_dirs: Sequence[Path], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Per run: test accuracy and the first and last blocks' probe norms (init and final)."""
    rows = []
    for run_dir, label in zip(run_dirs, labels, strict=True):
        record = load_grad_norms(run_dir)
        if record is None:
            continue
        names = record["groups"]
        body = [i for i, name in enumerate(names) if name != "head"] or list(range(len(names)))
        first, last = body[0], body[-1]
        row: dict[str, Any] = {"run": label, "skips": record.get("skip_connections", 0),
                               "test_acc": _summary(run_dir).get("test_acc")}
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
    from rich.console import Console
    from rich.table import Table

    table = Table(title="gradient norms per run (probe batch)")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labkit.analysis.grads",
        description="Compare the per-block gradient norms of several runs on one figure.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or multirun directories")
    parser.add_argument("-o", "--out", type=Path, default=Path("grad_norms_comparison.png"),
                        help="figure to write (default: %(default)s)")
    parser.add_argument("--labels", nargs="+", help="one legend label per run directory")
    args = parser.parse_args(argv)
    try:
        run_dirs = expand_run_dirs(args.runs)
        labels = args.labels if args.labels is not None else run_labels(run_dirs)
        out = plot_grad_norm_comparison(run_dirs, args.out, labels)
        if out is None:
            raise ConfigError(f"no {RECORD} in {', '.join(map(str, args.runs))}: "
                              "train with analysis.grad_norms=true to record gradient norms")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print_table(comparison_rows(run_dirs, labels))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Console output with rich: config tree, live progress bar, results table.

On a terminal a live bar shows loss / accuracy / throughput; anywhere else (a log file, CI,
a pipe) it prints one plain line per epoch instead, so logs stay readable.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from labkit.tracking.base import Tracker


def config_tree(cfg: DictConfig | dict, title: str = "config") -> Tree:
    """A rich tree of a (resolved) config, one branch per top-level group."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    tree = Tree(f"[bold]{title}[/bold]")

    def add(node: Tree, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                if isinstance(sub, dict) and sub:
                    add(node.add(f"[cyan]{key}[/cyan]"), sub)
                else:
                    node.add(f"[cyan]{key}[/cyan]: {sub}")

    add(tree, data)
    return tree


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class ConsoleTracker(Tracker):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self.task = None

    def start(self, config, info):
        table = Table(title="model", show_header=False)
        for key, value in info.items():
            table.add_row(key, _fmt(value))
        self.console.print(table)

    def epoch_start(self, epoch, epochs, steps):
        if not self.live:
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}"),
                console=self.console,
                transient=False,
            )
            self.progress.start()
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, stats="")

    def step(self, epoch, step, stats):
        if self.progress is not None and self.task is not None:
            text = "  ".join(f"{k} {_fmt(v)}" for k, v in stats.items())
            self.progress.update(self.task, completed=step, stats=text)

    def log_epoch(self, metrics):
        keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")
        text = "  ".join(f"{k} {_fmt(metrics[k])}" for k in keys if k in metrics)
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[-1].total, stats=text)
        else:
            self.console.print(f"epoch {metrics['epoch']}: {text}", highlight=False)

    def log_summary(self, summary):
        self._stop()
        table = Table(title="results")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in summary.items():
            if key != "warning" and isinstance(value, int | float | str) and not isinstance(value, bool):
                table.add_row(key, _fmt(value))
        self.console.print(table)
        if summary.get("status") == "diverged":
            self.console.print(f"[bold red]diverged:[/] {summary.get('warning', '')}", highlight=False)

    def finish(self, status):
        self._stop()

    def _stop(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

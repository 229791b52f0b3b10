"""Console output with rich: config tree, live progress bar, results table.

On a terminal a live bar shows the epoch's progress with loss / accuracy / throughput on the
line below it; each finished epoch leaves one line of its metrics (wrapped at the console's
width, never squeezing the bar); anywhere else (a log file, CI, a pipe) only those lines are
printed, so logs stay readable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text
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


#: the epoch line's first metrics, in this order; any other number the epoch reports follows
EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")


def metric_cells(metrics: dict[str, Any]) -> list[str]:
    """``name value`` of every number in ``metrics`` but the epoch: the usual ones first."""
    keys = [k for k in EPOCH_KEYS if k in metrics] + [k for k in metrics if k not in EPOCH_KEYS]
    return [f"{k} {_fmt(metrics[k])}" for k in keys if k != "epoch" and isinstance(metrics[k], int | float)
            and not isinstance(metrics[k], bool)]


def packed_lines(head: str, cells: list[str], width: int, indent: int = 2) -> list[str]:
    """``head`` then the cells (two spaces apart, one after the head) in lines of at most ``width``
    columns; a cell is never split, continuation lines are indented. A long metric set wraps
    instead of crowding the bar."""
    lines = [head]
    for cell in cells:
        last = lines[-1]
        gap = "" if not last.strip() else " " if last == head else "  "
        if not last.strip() or len(last) + len(gap) + len(cell) <= width:
            lines[-1] = last + gap + cell
        else:
            lines.append(" " * indent + cell)
    return lines


class MetricLines:
    """A rich renderable: :func:`packed_lines` at the width it is drawn at (a resized terminal
    re-wraps the live lines)."""

    def __init__(self, head: str, cells: list[str]) -> None:
        self.head, self.cells = head, cells

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text("\n".join(packed_lines(self.head, self.cells, options.max_width)), no_wrap=True,
                   overflow="fold")


class EpochProgress(Progress):
    """The bar on its own line (description, bar, steps, time: never squeezed) and the running
    numbers on the line below, wrapped at the console width however many there are."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            if task.fields.get("cells"):
                yield MetricLines("", task.fields["cells"])


class ConsoleTracker(Tracker):
    """Model table at the start, a live bar per epoch on a terminal, one (wrapped) line per
    finished epoch, and the results table at the end."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.epochs: int | None = None

    def start(self, config, info):
        table = Table(title="model", show_header=False)
        for key, value in info.items():
            table.add_row(key, _fmt(value))
        self.console.print(table)

    def epoch_start(self, epoch, epochs, steps):
        self.epochs = epochs
        if not self.live:
            return
        if self.progress is None:
            fixed = Column(no_wrap=True)  # the description and the counts are never cut
            self.progress = EpochProgress(
                TextColumn("[bold]{task.description}", table_column=fixed),
                BarColumn(bar_width=40),
                MofNCompleteColumn(table_column=Column(no_wrap=True)),
                TimeElapsedColumn(table_column=Column(no_wrap=True)),
                console=self.console,
                transient=False,
            )
            self.progress.start()
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, cells=[])

    def step(self, epoch, step, stats):
        if self.progress is not None and self.task is not None:
            cells = [f"{k} {_fmt(v)}" for k, v in stats.items()]
            self.progress.update(self.task, completed=step, cells=cells, refresh=True)

    def log_epoch(self, metrics):
        epoch = metrics.get("epoch")
        head = f"epoch {epoch}/{self.epochs}:" if self.epochs else f"epoch {epoch}:"
        text = MetricLines(head, metric_cells(metrics))
        if self.progress is not None and self.task is not None:
            # the finished epoch leaves the live area and stays as its line above the next bar
            self.progress.remove_task(self.task)
            self.task = None
            self.progress.refresh()
            self.progress.console.print(text)
        else:
            self.console.print(text)

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

"""One row per job: the swept values next to the job's results, as rich, Markdown and CSV tables."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from labkit.report.jobs import Job
from labkit.report.origins import code_label

#: (summary key, column title, kind); kind picks the formatting
RESULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("status", "status", "text"),
    ("test_acc", "test acc %", "percent"),
    ("test_loss", "test loss", "float"),
    ("best_val_acc", "best val acc %", "percent"),
    ("params", "params", "int"),
    ("epochs_completed", "epochs", "int"),
    ("total_time_s", "time s", "seconds"),
)
#: written to report.csv besides the table's columns (raw values, accuracies as fractions)
CSV_EXTRA = ("final_val_acc", "train_time_s", "train_images_per_s", "skip_connections",
             "norm_layers", "error")


def format_value(value: Any) -> str:
    """Override values the way they are typed on the command line: true, 1e-3, [1,1,1,1]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value is not the same in every job, in the order they appear."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]

    def shown(job: Job, key: str) -> str:
        return format_value(job.overrides[key]) if key in job.overrides else "<unset>"

    return [k for k in keys if len({shown(job, k) for job in jobs}) > 1]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """``model.depth`` -> ``depth`` for legends, unless two keys would end up with one name."""
    tails = [k.split(".")[-1].split("/")[-1] for k in keys]
    return {k: t if tails.count(t) == 1 else k for k, t in zip(keys, tails, strict=True)}


def common_overrides(jobs: Sequence[Job]) -> list[str]:
    """``key=value`` of the overrides every job shares (the sweep's fixed settings)."""
    if not jobs:
        return []
    swept = set(swept_keys(jobs))
    return [f"{k}={format_value(v)}" for k, v in jobs[0].overrides.items() if k not in swept]


def _optimized_metric(jobs: Sequence[Job]) -> str | None:
    for job in jobs:
        metric = job.config.get("optimized_metric")
        if isinstance(metric, str):
            return metric
    return None


def accuracy_key(jobs: Sequence[Job]) -> str | None:
    """The summary key the figures plot: ``test_acc``, else (e.g. distill.py, whose summary has
    one accuracy per stage) the test accuracy next to the swept ``optimized_metric``."""
    keys = {key for job in jobs for key in job.summary}
    if "test_acc" in keys:
        return "test_acc"
    metric = _optimized_metric(jobs)
    if metric and metric.replace("best_val_acc", "test_acc") in keys:
        return metric.replace("best_val_acc", "test_acc")
    return metric if metric in keys else None


def metric_columns(jobs: Sequence[Job]) -> list[tuple[str, str, str]]:
    """The standard result columns the jobs have, plus per-stage test accuracies (``*_test_acc``)
    and the ``optimized_metric`` when they are other keys."""
    present = {key for job in jobs for key in job.summary}
    present |= {"epochs_completed", "best_val_acc"} if any(job.metrics for job in jobs) else set()
    columns = [c for c in RESULT_COLUMNS if c[0] == "status" or c[0] in present
               or (c[0] == "total_time_s" and "train_time_s" in present)]
    extra = [key for job in jobs for key in job.summary if key.endswith("_test_acc")]
    metric = _optimized_metric(jobs)
    if metric in present:
        extra.append(metric)
    if any(job.provenance for job in jobs):  # provenance.json: which code made each run
        columns.append(("code", "code", "text"))
    known = {key for key, _, _ in columns}
    for key in dict.fromkeys(extra):
        if key not in known:
            percent = key.endswith("acc")
            columns.append((key, key.replace("_", " ") + (" %" if percent else ""),
                            "percent" if percent else "float"))
    return columns


def _time(job: Job) -> Any:
    return job.get("total_time_s") if job.get("total_time_s") is not None else job.get("train_time_s")


def job_rows(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Raw values per job: ``job``, the swept keys, the result columns and the CSV extras."""
    keys = swept_keys(jobs)
    columns = metric_columns(jobs)
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name}
        row.update({k: format_value(job.overrides[k]) if k in job.overrides else "" for k in keys})
        for key, _, _ in columns:
            if key == "status":
                row[key] = job.status
            elif key == "code":
                row[key] = code_label(job)
            elif key == "total_time_s":
                row[key] = _time(job)
            else:
                row[key] = job.get(key)
        row.update({key: job.get(key) for key in CSV_EXTRA})
        rows.append(row)
    return rows


def format_cell(value: Any, kind: str) -> str:
    """Human formatting of one result cell; missing values are a dash."""
    if value is None or value == "":
        return "-"
    if kind == "percent" and isinstance(value, int | float):
        return f"{100 * value:.2f}"
    if kind == "float" and isinstance(value, int | float):
        return f"{value:.4f}"
    if kind == "int" and isinstance(value, int | float):
        return f"{int(value):,}"
    if kind == "seconds" and isinstance(value, int | float):
        return f"{value:.1f}"
    return str(value)


def display_table(jobs: Sequence[Job]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by the console and the Markdown table."""
    keys = swept_keys(jobs)
    columns = metric_columns(jobs)
    header = ["job", *keys, *(title for _, title, _ in columns)]
    cells = []
    for row in job_rows(jobs):
        cells.append([row["job"], *(row[k] for k in keys),
                      *(format_cell(row[key], kind) for key, _, kind in columns)])
    return header, cells


STATUS_STYLE = {"completed": "green", "diverged": "bold red", "failed": "bold red", "interrupted": "yellow",
                "running": "cyan", "stopped": "yellow"}


def rich_table(jobs: Sequence[Job], title: str) -> Table:
    header, cells = display_table(jobs)
    status_index = header.index("status")
    table = Table(title=title)
    n_keys = len(swept_keys(jobs)) + 1
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < n_keys or i == status_index else "right",
                         overflow="fold")
    for row in cells:
        style = STATUS_STYLE.get(row[status_index], "")
        table.add_row(*row[:status_index], f"[{style}]{row[status_index]}[/]" if style else row[status_index],
                      *row[status_index + 1:])
    return table


def markdown_table(jobs: Sequence[Job]) -> str:
    header, cells = display_table(jobs)
    n_keys = len(swept_keys(jobs)) + 1
    status_index = header.index("status")
    align = [":--" if i < n_keys or i == status_index else "--:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in cells]
    return "\n".join(lines)


def write_csv(jobs: Sequence[Job], path: Path) -> Path:
    """Raw values (accuracies as fractions, times in seconds), one row per job."""
    rows = job_rows(jobs)
    fields = list(rows[0]) + ["path"] if rows else ["job"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for job, row in zip(jobs, rows, strict=True):
            writer.writerow({**{k: "" if v is None else v for k, v in row.items()}, "path": str(job.path)})
    return path

"""Turn a multirun (or one run) directory into report.md, report.csv, figures and a console table."""

from __future__ import annotations

import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console

from labkit.report.figures import job_label, make_figures
from labkit.report.jobs import Job, load_jobs
from labkit.report.origins import mismatch_warning
from labkit.report.stats import Uncertainty, uncertainty
from labkit.report.table import common_overrides, markdown_table, rich_table, swept_keys, write_csv

STATUS_ORDER = ("completed", "diverged", "failed", "interrupted", "running", "stopped")


@dataclass
class Report:
    folder: Path
    jobs: list[Job]
    figures: list[Path]
    markdown: Path
    csv: Path


def status_line(jobs: list[Job]) -> str:
    """``10 jobs: 9 completed, 1 failed``."""
    counts = Counter(job.status for job in jobs)
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    parts = [f"{counts[status]} {status}" for status in order]
    return f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}: " + ", ".join(parts)


def launch_command(folder: Path) -> str | None:
    """The command that made the folder, rebuilt from Hydra's record of it (multirun.yaml)."""
    multirun = folder / "multirun.yaml"
    single = folder / ".hydra" / "hydra.yaml"
    record = multirun if multirun.is_file() else single if single.is_file() else None
    if record is None:
        return None
    hydra = OmegaConf.load(record).hydra
    task = [shlex.quote(str(item)) for item in OmegaConf.select(hydra, "overrides.task", default=[])]
    script = OmegaConf.select(hydra, "job.name", default=None) or "train"
    return " ".join(["python", f"{script}.py", *(["-m"] if record is multirun else []), *task])


def search_result(folder: Path) -> dict[str, Any] | None:
    """Optuna's best trial, when the multirun was a search (optimization_results.yaml)."""
    path = folder / "optimization_results.yaml"
    if not path.is_file():
        return None
    result = OmegaConf.to_container(OmegaConf.load(path))
    return result if isinstance(result, dict) else None


def markdown(folder: Path, jobs: list[Job], figures: list[Path],
             spread: Uncertainty | None = None) -> str:
    lines = [f"# Report: {folder.name}", "", f"`{folder}`: {status_line(jobs)}.", ""]
    command = launch_command(folder)
    if command:
        lines += [f"Command: `{command}`", ""]
    fixed = common_overrides(jobs) if len(jobs) > 1 else []
    if fixed:
        lines += ["Same in every job: " + ", ".join(f"`{item}`" for item in fixed), ""]
    warning = mismatch_warning(jobs)
    lines += [f"**{warning}**", ""] if warning else []
    lines += [markdown_table(jobs), "",
              "Accuracies in %, time in seconds (training and test). `report.csv` has the raw values.", ""]
    lines += spread.markdown() if spread else []
    failed = [job for job in jobs if job.status not in ("completed", "running")]
    if failed:
        lines += ["## Jobs that did not complete or diverged", ""]
        keys = swept_keys(jobs)
        for job in failed:
            error = " ".join(str(job.summary.get("error") or job.summary.get("warning")
                                 or "no summary.json (killed?)").split())
            lines.append(f"- job {job.name} ({job_label(job, keys)}): {job.status}: {error}")
        lines.append("")
    best = search_result(folder)
    if best:
        params = ", ".join(f"`{k}={v}`" for k, v in (best.get("best_params") or {}).items())
        lines += ["## Search result", "", f"Best value {best.get('best_value')} with {params}.", ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{figure.stem.replace('_', ' ')}]({figure.name})" for figure in figures]
        lines.append("")
    return "\n".join(lines)


def build_report(folder: str | Path, out: str | Path | None = None, figures: bool = True,
                 console: Console | None = None, compare: tuple[str, ...] | list[str] = ()) -> Report:
    """Read every job under ``folder``, print the table and write the report files into ``out``
    (default: ``folder`` itself). ``compare``: keys whose values are compared paired over seeds
    (swept flags always are)."""
    folder = Path(folder).resolve()
    out = Path(out) if out else folder
    jobs = load_jobs(folder)
    spread = uncertainty(jobs, compare)
    out.mkdir(parents=True, exist_ok=True)
    drawn = make_figures(jobs, out, spread.comparisons) if figures else []
    md_path = out / "report.md"
    md_path.write_text(markdown(folder, jobs, drawn, spread))
    csv_path = write_csv(jobs, out / "report.csv")
    if console is None:
        console = Console() if Console().is_terminal else Console(width=200)
    warning = mismatch_warning(jobs)
    if warning:
        console.print(f"[yellow]{warning}[/]")
    console.print(rich_table(jobs, title=f"{folder.name}: {status_line(jobs)}"))
    for job in jobs:  # each failed job with its one-line error (the class name is for report.csv)
        if job.status == "failed":
            error = str(job.summary.get("error") or "no error recorded")
            console.print(f"job {job.name} failed: {re.sub(r'^[A-Za-z]+(Error|Exception): ', '', error)}",
                          highlight=False, markup=False)
    spread.print(console)
    console.print(f"report: {md_path}  table: {csv_path}  figures: {len(drawn)}", highlight=False)
    return Report(folder, jobs, drawn, md_path, csv_path)

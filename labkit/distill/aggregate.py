"""Mean and spread over several distillation jobs (e.g. seeds of one multirun):
``labkit-report distill <multirun folder> [...]`` (``python -m labkit.distill.aggregate`` is the
same command under its old name)."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.distill.report import LABELS
from labkit.report.jobs import load_jobs


def find_job_summaries(roots: Sequence[Path]) -> list[dict[str, Any]]:
    """Every distillation summary.json under ``roots`` (run directories or folders above them)."""
    return [job.summary for job in load_jobs(*roots) if "student_distill_test_acc" in job.summary]


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` with two decimals (sd 0 for a single value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def seeds_table(jobs: list[dict[str, Any]]) -> str:
    """Mean ± standard deviation over jobs of test accuracy (%) per stage, gain and gap closed."""
    rows = [f"| model | test acc (%), mean ± sd over {len(jobs)} runs | params |", "|---|---:|---:|"]
    for stage, label in LABELS.items():
        accs = [100 * j[f"{stage}_test_acc"] for j in jobs]
        rows.append(f"| {label} | {mean_sd(accs)} | {jobs[0][f'{stage}_params']:,} |")
    gains = [j["distill_gain_pp"] for j in jobs]
    wins = sum(g > 0 for g in gains)
    gaps = [j["gap_closed_pct"] for j in jobs if j.get("gap_closed_pct") is not None]
    lines = ["", f"distilled - baseline: {mean_sd(gains)} points (better in {wins} of {len(jobs)} runs)"]
    if gaps:
        lines.append(f"teacher-student gap closed: {mean_sd(gaps)} %")
    return "\n".join(rows + lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The old entry point: ``python -m labkit.distill.aggregate ...`` is ``labkit-report distill ...``."""
    from labkit.report.cli import main as report_main

    return report_main(["distill", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

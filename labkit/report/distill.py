"""Distillation jobs read together: mean and spread over seeds of one method, or which method
works for a teacher-student pair (``labkit-report distill DIR...``, ``methods.md``).

Every distillation job trains (or reuses) the baseline student of its own seed, so the
difference ``distilled - baseline`` of one job is a paired one; over the ``n`` seeds of a
method its mean gets a Student-t interval ``mean +- t(0.975, n - 1) * sd / sqrt(n)``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.distill.report import LABELS, method_name
from labkit.report.jobs import load_jobs
from labkit.report.stats import estimate


def find_job_summaries(roots: Sequence[Path]) -> list[dict[str, Any]]:
    """Every distillation summary.json under ``roots`` (run directories or folders above them)."""
    return [job.summary for job in load_jobs(*roots) if "student_distill_test_acc" in job.summary]


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` (sample sd; 0 for one value), two decimals."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


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


def methods_table(jobs: Sequence[dict[str, Any]]) -> str:
    """Markdown: the teacher, the baseline (one value per seed) and every method (mean ± sd of
    test accuracy in %, paired difference to the baseline in points with its 95 % CI, wins)."""
    jobs = [j for j in jobs if j.get("student_distill_test_acc") is not None]
    baseline = {j.get("seed", i): 100 * j["student_baseline_test_acc"] for i, j in enumerate(jobs)}
    teachers = sorted({round(100 * j["teacher_test_acc"], 4) for j in jobs})
    groups: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        groups.setdefault(method_name(job), []).append(job)
    rows = ["| student | seeds | test acc (%), mean ± sd | minus baseline (points) | 95 % CI | better |",
            "|---|---:|---:|---:|---:|---:|",
            f"| baseline (hard labels) | {len(baseline)} | {mean_sd(list(baseline.values()))} | | | |"]
    ordered = sorted(groups.items(), key=lambda item: -statistics.mean(
        j["student_distill_test_acc"] for j in item[1]))
    for label, members in ordered:
        accs = [100 * j["student_distill_test_acc"] for j in members]
        diffs = [100 * (j["student_distill_test_acc"] - j["student_baseline_test_acc"]) for j in members]
        interval = estimate(diffs)  # one job's difference is paired: same seed, same start
        ci = f"[{interval.low:+.2f}, {interval.high:+.2f}]" if interval.low is not None else "n/a (1 seed)"
        wins = sum(d > 0 for d in diffs)
        rows.append(f"| {label} | {len(members)} | {mean_sd(accs)} | {statistics.mean(diffs):+.2f} | "
                    f"{ci} | {wins} of {len(members)} |")
    teacher = ", ".join(f"{t:.2f}" for t in teachers)
    notes = [f"Teacher test accuracy: {teacher} %. Differences are paired by seed (each method's "
             "student and the baseline start from the same weights and see the same batches); the "
             "interval is Student's t over the seeds. An interval that contains 0 is no evidence "
             "of a difference."]
    return "\n".join(rows) + "\n\n" + "\n".join(notes)


def write_methods_report(folder: Path, jobs: Sequence[dict[str, Any]]) -> Path:
    """``methods.md`` in ``folder``: the methods table."""
    path = Path(folder) / "methods.md"
    path.write_text(f"# Distillation methods: {Path(folder).name}\n\n{methods_table(jobs)}\n")
    return path

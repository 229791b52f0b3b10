"""Distillation jobs read together: mean and spread over seeds of one method, or which method
works for a teacher-student pair (``labkit-report distill DIR...``, ``methods.md``).

Every distillation job trains (or reuses) the baseline student of its own seed, so the
difference ``distilled - baseline`` of one job is a paired one; over the ``n`` seeds of a
method its mean gets a Student-t interval ``mean +- t(0.975, n - 1) * sd / sqrt(n)``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.distill.report import LABELS, gap_closed, method_name
from labkit.report.forest import ForestRow, plot_forest
from labkit.report.jobs import Job, load_jobs
from labkit.report.stats import Estimate, estimate


def find_distill_jobs(roots: Sequence[Path]) -> list[Job]:
    """Every distillation job under ``roots`` (run directories or folders above them): their
    summaries feed the tables, their provenance records the warning (:func:`mismatch_warning`)."""
    return [job for job in load_jobs(*roots) if "student_distill_test_acc" in job.summary]


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


@dataclass
class MethodResult:
    """One method's students over seeds: test accuracies (%) and the paired differences to the
    baseline of the same seed (points) with their t interval."""

    label: str
    accs: list[float]
    diffs: list[float]
    difference: Estimate
    gaps_closed: list[float]  # per seed: the share (%) of the teacher's lead it recovered


def _with_distilled(jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [j for j in jobs if j.get("student_distill_test_acc") is not None]


def method_results(jobs: Sequence[dict[str, Any]]) -> list[MethodResult]:
    """Every method, best mean test accuracy first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for job in _with_distilled(jobs):
        groups.setdefault(method_name(job), []).append(job)
    found = []
    for label, members in groups.items():
        accs = [100 * j["student_distill_test_acc"] for j in members]
        diffs = [100 * (j["student_distill_test_acc"] - j["student_baseline_test_acc"]) for j in members]
        gaps = [g for g in (gap_closed(j["teacher_test_acc"], j["student_baseline_test_acc"],
                                       j["student_distill_test_acc"]) for j in members) if g is not None]
        found.append(MethodResult(label, accs, diffs, estimate(diffs), gaps))  # paired by seed
    return sorted(found, key=lambda m: -statistics.mean(m.accs))


def methods_table(jobs: Sequence[dict[str, Any]]) -> str:
    """Markdown: the teacher, the baseline (one value per seed) and every method (mean ± sd of
    test accuracy in %, paired difference to the baseline in points with its 95 % CI, wins)."""
    jobs = _with_distilled(jobs)
    baseline = {j.get("seed", i): 100 * j["student_baseline_test_acc"] for i, j in enumerate(jobs)}
    teachers = sorted({round(100 * j["teacher_test_acc"], 4) for j in jobs})
    rows = ["| student | seeds | test acc (%), mean ± sd | minus baseline (points) | 95 % CI | better "
            "| gap closed (%) |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| baseline (hard labels) | {len(baseline)} | {mean_sd(list(baseline.values()))} | | | | 0 |"]
    for method in method_results(jobs):
        interval = method.difference
        ci = f"[{interval.low:+.2f}, {interval.high:+.2f}]" if interval.low is not None else "n/a (1 seed)"
        wins = sum(d > 0 for d in method.diffs)
        closed = mean_sd(method.gaps_closed) if method.gaps_closed else "-"
        rows.append(f"| {method.label} | {len(method.accs)} | {mean_sd(method.accs)} | "
                    f"{interval.mean:+.2f} | {ci} | {wins} of {len(method.accs)} | {closed} |")
    teacher = ", ".join(f"{t:.2f}" for t in teachers)
    notes = [f"Teacher test accuracy: {teacher} %. Differences are paired by seed (each method's "
             "student and the baseline start from the same weights and see the same batches); the "
             "interval is Student's t over the seeds. An interval that contains 0 is no evidence "
             "of a difference. Gap closed: (distilled - baseline) / (teacher - baseline) per seed, "
             "mean ± sd."]
    return "\n".join(rows) + "\n\n" + "\n".join(notes)


def teacher_gap(jobs: Sequence[dict[str, Any]]) -> float | None:
    """Teacher minus baseline student in points, the mean over seeds: what a method could gain."""
    gaps = {j.get("seed", i): 100 * (j["teacher_test_acc"] - j["student_baseline_test_acc"])
            for i, j in enumerate(_with_distilled(jobs)) if j.get("teacher_test_acc") is not None}
    return statistics.mean(gaps.values()) if gaps else None


def plot_methods_forest(jobs: Sequence[dict[str, Any]], out: Path) -> Path:
    """The methods table as a forest plot: per method the paired difference to the baseline
    student with its 95 % CI, a line at zero and a dotted one at the teacher's gap."""
    gap = teacher_gap(jobs)
    rows = [ForestRow(m.label, m.difference) for m in method_results(jobs)]
    seeds = max(m.difference.n for m in method_results(jobs))
    return plot_forest(rows, out, f"distilled student − baseline student, paired by seed ({seeds} seeds)",
                       references=[("teacher − baseline", gap)] if gap is not None else [])


def write_methods_report(folder: Path, jobs: Sequence[dict[str, Any]], warning: str | None = None) -> Path:
    """``methods.md`` in ``folder``: the methods table and its forest plot (``methods_forest.png``),
    with the runs' provenance warning above the table when there is one."""
    figure = plot_methods_forest(jobs, Path(folder) / "methods_forest.png")
    path = Path(folder) / "methods.md"
    note = f"**{warning}**\n\n" if warning else ""
    path.write_text(f"# Distillation methods: {Path(folder).name}\n\n{note}{methods_table(jobs)}\n\n"
                    f"![paired difference to the baseline student per method]({figure.name})\n")
    return path

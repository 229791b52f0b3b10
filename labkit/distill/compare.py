"""Which method works for this pair: each method's test accuracy over seeds and its paired
difference to the baseline student, with a 95 % confidence interval.

Every distillation job trains (or reuses) the baseline student of its own seed, so the
difference ``distilled - baseline`` of one job is a paired one; over the ``n`` seeds of a
method its mean gets a Student-t interval ``mean +- t(0.975, n - 1) * sd / sqrt(n)``.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from labkit.distill.aggregate import mean_sd
from labkit.distill.report import method_name
from labkit.report.stats import estimate

log = logging.getLogger(__name__)


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


class MethodsReport(Callback):
    """After a distillation multirun: methods.md in the sweep folder, and the table on the console
    (``python -m labkit.distill.aggregate <folder>`` prints it again)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from labkit.distill.aggregate import find_job_summaries

        folder = Path(config.hydra.sweep.dir)
        try:
            jobs = find_job_summaries([folder])
            if jobs:
                path = write_methods_report(folder, jobs)
                print(path.read_text(), flush=True)
        except Exception as exc:  # a report failure never fails the sweep it summarises
            log.warning("no methods table for %s (%s: %s)", folder, type(exc).__name__, exc)

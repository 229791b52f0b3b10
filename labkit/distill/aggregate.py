"""Mean and spread over several distillation jobs (e.g. seeds of one multirun):
``python -m labkit.distill.aggregate <multirun folder> [...]``."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.distill.report import LABELS


def find_job_summaries(roots: Sequence[Path]) -> list[dict[str, Any]]:
    """Every distillation summary.json under ``roots`` (a run directory or a multirun folder)."""
    found = []
    for root in roots:
        for path in sorted(Path(root).rglob("summary.json")):
            data = json.loads(path.read_text())
            if "student_distill_test_acc" in data:
                found.append(data)
    return found


def _mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def seeds_table(jobs: list[dict[str, Any]]) -> str:
    """Mean ± standard deviation over jobs of test accuracy (%) per stage, gain and gap closed."""
    rows = [f"| model | test acc (%), mean ± sd over {len(jobs)} runs | params |", "|---|---:|---:|"]
    for stage, label in LABELS.items():
        accs = [100 * j[f"{stage}_test_acc"] for j in jobs]
        rows.append(f"| {label} | {_mean_spread(accs)} | {jobs[0][f'{stage}_params']:,} |")
    gains = [j["distill_gain_pp"] for j in jobs]
    wins = sum(g > 0 for g in gains)
    gaps = [j["gap_closed_pct"] for j in jobs if j.get("gap_closed_pct") is not None]
    lines = ["", f"distilled - baseline: {_mean_spread(gains)} points (better in {wins} of {len(jobs)} runs)"]
    if gaps:
        lines.append(f"teacher-student gap closed: {_mean_spread(gaps)} %")
    return "\n".join(rows + lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mean and spread of distillation runs (seeds).")
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories or multirun folders")
    args = parser.parse_args(argv)
    jobs = find_job_summaries(args.dirs)
    if not jobs:
        raise SystemExit(f"no distillation summary.json under {', '.join(map(str, args.dirs))}")
    methods = {j.get("method_label") or j.get("method") for j in jobs}
    if len(methods) > 1:  # a methods study: each method against the baseline, paired by seed
        from labkit.distill.compare import methods_table

        print(methods_table(jobs))
    else:
        print(seeds_table(jobs))


if __name__ == "__main__":
    main()

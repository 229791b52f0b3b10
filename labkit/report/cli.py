"""``labkit-report`` (or ``python -m labkit.report``): every report on run directories, one command.

    labkit-report DIR                      the job table, report.md/.csv and figures (= jobs DIR)
    labkit-report grads DIR... [-o PNG]    gradient norms of several runs on one figure, and a table
    labkit-report distill DIR... [-o PNG]  distillation: mean and spread over jobs (e.g. seeds), or the
                                           methods against the baseline (table and forest plot)

Every DIR is a run directory or a folder above run directories (a multirun, several multiruns).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from labkit.errors import LabkitError, print_error
from labkit.report.figures import job_label
from labkit.report.grads import comparison_rows, plot_grad_norm_comparison, print_table
from labkit.report.jobs import ReportError, load_jobs
from labkit.report.origins import mismatch_warning
from labkit.report.report import build_report
from labkit.report.rerun import rerun
from labkit.report.table import swept_keys


def _jobs(args: argparse.Namespace) -> int:
    build_report(args.folder, args.out, figures=not args.no_figures, compare=args.compare)
    return 0


def _grads(args: argparse.Namespace) -> int:
    jobs = load_jobs(*args.runs)
    keys = swept_keys(jobs)
    labels = args.labels if args.labels is not None else [job_label(job, keys) for job in jobs]
    if len(labels) != len(jobs):
        raise ReportError(f"{len(labels)} labels given for {len(jobs)} run directories")
    recorded = [(label, job) for label, job in zip(labels, jobs, strict=True) if job.grad_norms]
    if not recorded:
        raise ReportError(f"no grad_norms.json in {', '.join(map(str, args.runs))}: "
                          "train with analysis.grad_norms=true to record gradient norms")
    runs = [(label, job.grad_norms) for label, job in recorded]
    out = plot_grad_norm_comparison(runs, args.out)
    print_table(comparison_rows(runs, [job.summary.get("test_acc") for _, job in recorded]))
    print(f"wrote {out}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    # imported here for start-up time, not a cycle: labkit.distill's package imports torch (about
    # 2 s), which the other commands never need
    from labkit.report.distill import find_distill_jobs, methods_table, plot_methods_forest, seeds_table

    jobs = find_distill_jobs(args.dirs)
    if not jobs:
        raise ReportError(f"no distillation summary.json under {', '.join(map(str, args.dirs))}")
    summaries = [job.summary for job in jobs]
    warning = mismatch_warning(jobs)
    if warning:
        print(warning)
    methods = {s.get("method_label") or s.get("method") for s in summaries}
    if len(methods) < 2:  # one method: mean and spread over its jobs
        print(seeds_table(summaries))
        return 0
    # a methods study: each method against the baseline, paired by seed, as a table and a figure
    print(methods_table(summaries))
    out = args.out or (args.dirs[0] if args.dirs[0].is_dir() else args.dirs[0].parent) / "methods_forest.png"
    print(f"wrote {plot_methods_forest(summaries, out)}")
    return 0


def _rerun(args: argparse.Namespace) -> int:
    return rerun(args.run_dir, dry_run=args.dry_run)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="labkit-report", description="Reports on run directories: a run, a multirun, or any "
        "folder above runs.", epilog="With no command, `labkit-report DIR` is `labkit-report jobs DIR`.")
    commands = main.add_subparsers(dest="command", required=True)
    jobs = commands.add_parser("jobs", help="table (console, report.md, report.csv) and figures")
    jobs.add_argument("folder", help="a multirun directory (its job folders are read) or a run directory")
    jobs.add_argument("-o", "--out", help="where to write the report files (default: the folder itself)")
    jobs.add_argument("--no-figures", action="store_true", help="tables only")
    jobs.add_argument("--compare", action="append", default=[], metavar="KEY",
                      help="compare the values of a swept KEY (e.g. model.residual) paired over seeds, "
                           "each against the first (false for a flag); swept flags are always compared")
    jobs.set_defaults(run=_jobs)
    grads = commands.add_parser("grads", help="compare the per-block gradient norms of several runs")
    grads.add_argument("runs", nargs="+", type=Path, help="run directories or multirun directories")
    grads.add_argument("-o", "--out", type=Path, default=Path("grad_norms_comparison.png"),
                       help="figure to write (default: %(default)s)")
    grads.add_argument("--labels", nargs="+", help="one legend label per run directory found")
    grads.set_defaults(run=_grads)
    distill = commands.add_parser("distill", help="distillation: mean ± sd over seeds, or the methods "
                                      "against the baseline (table and forest plot)")
    distill.add_argument("dirs", nargs="+", type=Path, help="run directories or multirun folders")
    distill.add_argument("-o", "--out", type=Path, help="the methods' forest plot (default: "
                         "methods_forest.png in the first DIR)")
    distill.set_defaults(run=_distill)
    again = commands.add_parser("rerun", help="start a run again from what its folder recorded "
                                "(provenance.json): same entry point and overrides, a new run folder")
    again.add_argument("run_dir", type=Path, help="a run directory (or a job folder of a multirun)")
    again.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    again.set_defaults(run=_rerun)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("jobs", "grads", "distill", "rerun", "-h", "--help"):
        argv.insert(0, "jobs")  # the original form: labkit-report DIR
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except LabkitError as exc:
        return print_error(exc)

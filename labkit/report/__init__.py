"""Multirun reports: one table and a few figures from the run directories on disk.

    labkit-report logs/train/multiruns/<date_time>    # or python -m labkit.report; see labkit.report.cli
"""

from labkit.report.jobs import Job, ReportError, load_jobs
from labkit.report.report import Report, build_report

__all__ = ["Job", "Report", "ReportError", "build_report", "load_jobs"]

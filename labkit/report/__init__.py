"""Multirun reports: one table and a few figures from the run directories on disk.

    python -m labkit.report logs/train/multiruns/<date_time>      # or: labkit-report <dir>
"""

from labkit.report.jobs import Job, ReportError, load_jobs
from labkit.report.report import Report, build_report

__all__ = ["Job", "Report", "ReportError", "build_report", "load_jobs"]

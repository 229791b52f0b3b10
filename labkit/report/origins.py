"""Where the compared runs came from: each job's code version for the table, and one warning line
when the runs set side by side were made by different code, from different data or with
different package versions (read from each run folder's provenance.json)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from labkit.provenance import short_commit
from labkit.report.jobs import Job


def code_label(job: Job) -> str:
    """``1a2b3c4`` / ``1a2b3c4+dirty`` / ``?`` (not in git), ``-`` for a run without a record."""
    return short_commit(job.provenance) if job.provenance else "-"


def _code(job: Job) -> tuple[Any, ...]:
    code = job.provenance.get("code") or {}
    return code.get("commit"), code.get("dirty"), code.get("patch_sha256")


def _differing_packages(records: Sequence[dict[str, Any]]) -> list[str]:
    names = sorted({name for r in records for name in (r.get("packages") or {})})
    out = []
    for name in names:
        versions = sorted({str((r.get("packages") or {}).get(name)) for r in records})
        if len(versions) > 1:
            out.append(f"{name} {' / '.join(versions)}")
    return out


def mismatch_warning(jobs: Sequence[Job]) -> str | None:
    """One line naming what differs between the runs' records (code, data, packages), or None
    when they agree (or at most one run has a record)."""
    recorded = [j for j in jobs if j.provenance]
    if len(recorded) < 2:
        return None
    parts = []
    codes = {_code(j): code_label(j) for j in recorded}
    if len(codes) > 1:
        parts.append(f"code ({', '.join(sorted(set(codes.values())))}"
                     f"{'; different uncommitted changes' if len(set(codes.values())) < len(codes) else ''})")
    data = {j.provenance.get("data_fingerprint") for j in recorded} - {None}
    if len(data) > 1:
        parts.append(f"data ({len(data)} fingerprints: {', '.join(sorted(data))})")
    packages = _differing_packages([j.provenance for j in recorded])
    if packages:
        parts.append(f"packages ({'; '.join(packages)})")
    if not parts:
        return None
    return f"warning: the runs compared here differ in {', '.join(parts)}"

"""Start a run again from what its folder recorded: the same entry point, the same overrides, in
the same working directory, into a new run folder; warn when today's code or data differ from the
recorded ones (provenance.json)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import OmegaConf

from labkit import provenance
from labkit.report.jobs import ReportError

#: overrides that place a run or switch Hydra's mode: the re-run gets its own folder and one job
_PLACEMENT = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.mode")


def rerun_dir(run_dir: Path) -> Path:
    """``<paths.log_dir>/<task_name>/reruns/<run name>-<UTC time>`` from the run's own config."""
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml") if (run_dir / ".hydra").is_dir() else {}
    log_dir = OmegaConf.select(config, "paths.log_dir", default=None) if config else None
    task = OmegaConf.select(config, "task_name", default="run") if config else "run"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(log_dir) if log_dir else run_dir.parent
    return base / str(task) / "reruns" / f"{run_dir.name}-{stamp}"


def code_warning(record: dict) -> str | None:
    then = record.get("code") or {}
    now = provenance.code_record()
    keys = ("commit", "dirty", "patch_sha256")
    if all(then.get(k) == now.get(k) for k in keys):
        return None
    which = "uncommitted changes" if then.get("commit") == now.get("commit") else "code"
    return (f"warning: today's {which} ({provenance.short_commit({'code': now})}) differ from the recorded "
            f"run's ({provenance.short_commit(record)}); code.patch in the run folder holds its changes")


def rerun(run_dir: Path, dry_run: bool = False) -> int:
    """Re-run the run in ``run_dir``; returns the re-run's exit status."""
    run_dir = Path(run_dir).resolve()
    record = provenance.read(run_dir)
    if not record:
        raise ReportError(f"{run_dir} holds no {provenance.PROVENANCE_FILE}: it was made before labkit "
                          f"recorded provenance, so there is nothing to re-run from")
    script = provenance.CODE_ROOT / f"{record['entry_point']}.py"
    if not script.is_file():
        raise ReportError(f"{run_dir} was made by {record['entry_point']}.py, which {provenance.CODE_ROOT} "
                          f"does not have")
    target = rerun_dir(run_dir)
    overrides = [o for o in record.get("overrides", []) if not o.lstrip("+~").startswith(_PLACEMENT)]
    command = [sys.executable, str(script), *overrides, "hydra.mode=RUN", f"hydra.run.dir={target}"]
    warning = code_warning(record)
    if warning:
        print(warning, file=sys.stderr)
    cwd = record.get("cwd") if record.get("cwd") and Path(record["cwd"]).is_dir() else None
    print(f"re-running {run_dir} into {target}", flush=True)
    if dry_run:
        print(" ".join(command))
        return 0
    status = subprocess.call(command, cwd=cwd)
    fresh = provenance.read(target).get("data_fingerprint")
    if fresh and record.get("data_fingerprint") and fresh != record["data_fingerprint"]:
        print(f"warning: the re-run read other data (fingerprint {fresh}, recorded "
              f"{record['data_fingerprint']})", file=sys.stderr)
    return status

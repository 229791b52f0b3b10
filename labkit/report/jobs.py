"""The one reader of run directories: overrides, summary, metrics, gradient norms and status.

Every command that looks at finished (or running) runs reads them through :func:`load_jobs`:
the multirun report, the gradient-norm comparison and the distillation aggregate.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from labkit import provenance
from labkit.errors import LabkitError
from labkit.run_folder import job_status
from labkit.tracking.files import read_metrics


class ReportError(LabkitError):
    """The folder given to the report holds no run or multirun."""

    exit_code = 2


@dataclass
class Job:
    """One run directory as the report sees it."""

    path: Path
    name: str
    overrides: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    status: str = "completed"
    config: dict[str, Any] = field(default_factory=dict)
    #: grad_norms.json (analysis.grad_norms=true), None when the run did not record it
    grad_norms: dict[str, Any] | None = None
    #: provenance.json: code, packages, machine, command, data ({} for runs made before it)
    provenance: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        """A summary figure, falling back on what metrics.jsonl says so far (running jobs)."""
        if self.summary.get(key) is not None:
            return self.summary[key]
        if key == "epochs_completed" and self.metrics:
            return len(self.metrics)
        if key == "best_val_acc":
            accs = [row["val_acc"] for row in self.metrics if row.get("val_acc") is not None]
            return max(accs) if accs else None
        return None


def parse_override(text: str) -> tuple[str, Any]:
    """``+residual=true`` -> ``("residual", True)``: the key without +/++/~ and the typed value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(text)
    except Exception:  # not Hydra syntax (hand-edited file): keep the raw text
        key, _, value = text.lstrip("+~").partition("=")
        return key, value
    return override.key_or_group, None if override.is_delete() else override.value()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:  # being rewritten right now
        return {}


def load_job(folder: Path, now: float | None = None) -> Job:
    """Everything the report needs from one run directory."""
    overrides_file = folder / ".hydra" / "overrides.yaml"
    items = [str(x) for x in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    config_file = folder / ".hydra" / "config.yaml"
    config = OmegaConf.to_container(OmegaConf.load(config_file)) if config_file.is_file() else {}
    summary = _read_json(folder / "summary.json")
    metrics_file = folder / "metrics.jsonl"
    grad_norms = _read_json(folder / "grad_norms.json")
    return Job(
        path=folder,
        name=folder.name,
        overrides=dict(parse_override(item) for item in items),
        summary=summary,
        metrics=read_metrics(metrics_file) if metrics_file.is_file() else [],
        status=job_status(summary, folder, now),
        config=config if isinstance(config, dict) else {},
        grad_norms=grad_norms or None,
        provenance=provenance.read(folder),
    )


#: a folder holding any of these is a run directory (train.py without Hydra writes no .hydra/)
RUN_MARKERS = (".hydra", "summary.json", "metrics.jsonl")


def is_run_dir(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_MARKERS)


def _job_order(path: Path) -> tuple[int, int, str]:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def _runs_under(folder: Path) -> list[Path]:
    if is_run_dir(folder):
        return [folder]
    children = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=_job_order)
    return [run for child in children for run in _runs_under(child)]


def find_job_dirs(*folders: str | Path) -> list[Path]:
    """The run directories under ``folders``: a run directory stands for itself, any other folder
    (a multirun, a folder of multiruns) for the runs below it, in job order (0, 1, ..., 10)."""
    runs: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder")
        found = _runs_under(folder)
        if not found:
            raise ReportError(f"{folder} holds no run: expected a run directory (with .hydra/ or "
                              f"summary.json) or a multirun directory whose job folders have one")
        runs += found
    return runs


def load_jobs(*folders: str | Path) -> list[Job]:
    """Every job under ``folders`` (see :func:`find_job_dirs`), in job order."""
    now = time.time()
    return [load_job(d, now) for d in find_job_dirs(*folders)]

"""Where a result came from: the code (git commit, dirty tree and its patch), the packages, the
machine, the command line and the data, written as ``provenance.json`` (and ``code.patch``) in
every run folder. labkit runs offline, so it keeps these records itself, as W&B and MLflow do
online; ``labkit-report`` compares them across runs and ``labkit-report rerun`` reads them back.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig

from labkit import __version__
from labkit.io import atomic_write_text

PROVENANCE_FILE = "provenance.json"
PATCH_FILE = "code.patch"
# the direct dependencies (pyproject.toml) whose versions a result may depend on
PACKAGES = ("torch", "torchvision", "hydra-core", "omegaconf", "numpy", "scipy", "wandb", "rich",
            "matplotlib", "captum", "tensorboard")
CODE_ROOT = Path(__file__).resolve().parents[1]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["git", "-C", str(CODE_ROOT), *args], capture_output=True, text=True,
                            timeout=30, env={**os.environ, **(env or {})}, check=True)
    return result.stdout


@functools.cache
def code_state() -> tuple[dict[str, Any], str]:
    """The git commit of labkit's own checkout, whether the tree is dirty, and the patch (tracked
    changes and untracked source files, against that commit) that rebuilds it. Once per process:
    the code a process runs is the code it loaded. Outside a git checkout (an installed wheel, no
    git) the record says so and the run goes on."""
    try:
        commit = _git("rev-parse", "HEAD").strip()
        with tempfile.TemporaryDirectory() as tmp:  # a private index: the user's stays untouched
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            _git("read-tree", "HEAD", env=env)
            _git("add", "-A", env=env)
            patch = _git("diff", "--cached", "--binary", "HEAD", env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "dirty": None,
                "note": f"not a git checkout ({type(exc).__name__}): code version is labkit's only"}, ""
    return {"commit": commit, "dirty": bool(patch)}, patch


def code_record() -> dict[str, Any]:
    """:func:`code_state` as recorded: commit, dirty and a hash of the patch (two dirty trees of
    one commit differ by it)."""
    code, patch = code_state()
    return {**code, "patch_sha256": hashlib.sha256(patch.encode()).hexdigest()[:16] if patch else None}


def short_commit(record: dict[str, Any]) -> str:
    """``1a2b3c4`` or ``1a2b3c4+dirty`` (``?`` when the code was not in git)."""
    code = record.get("code") or {}
    if not code.get("commit"):
        return "?"
    return code["commit"][:7] + ("+dirty" if code.get("dirty") else "")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    versions["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"host": socket.gethostname(), "os": platform.platform(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "gpus": gpus, "gpu_count": len(gpus),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads()}


def job_overrides() -> list[str]:
    """The Hydra overrides of the running job (a sweep job's own values included), or []."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def collect() -> dict[str, Any]:
    """Everything but the end time and the data read, for the process' entry point and the job's
    overrides."""
    return {
        "labkit_version": __version__,
        "code": code_record(),
        "packages": package_versions(),
        "machine": machine(),
        "entry_point": Path(sys.argv[0]).stem,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "overrides": job_overrides(),
        "data_fingerprint": None,
        "started_utc": utc_now(),
        "ended_utc": None,
    }


def start(run_dir: Path) -> dict[str, Any]:
    """Collect and write the record as a run starts, so even a run that fails at once has one.
    A folder that already has a record (a resumed run) keeps it under ``earlier``, and its patch
    as ``code-<patch_sha256>.patch``: nothing an earlier process recorded is lost. The record this
    very process already wrote there (train.py's job folder is also its stage's) is returned as
    it is."""
    earlier = read(run_dir)
    if earlier.get("pid") == os.getpid():
        return earlier
    record = collect()
    if earlier:
        record["earlier"] = [{k: v for k, v in earlier.items() if k != "earlier"},
                             *earlier.get("earlier", [])]
        old_patch, old_sha = Path(run_dir) / PATCH_FILE, (earlier.get("code") or {}).get("patch_sha256")
        if old_patch.is_file() and old_sha and old_sha != record["code"].get("patch_sha256"):
            old_patch.rename(Path(run_dir) / f"code-{old_sha}.patch")
    _write_record(run_dir, record)
    _, patch = code_state()
    if patch:
        atomic_write_text(Path(run_dir) / PATCH_FILE, patch)
    return record


def read(run_dir: Path) -> dict[str, Any]:
    """A run folder's provenance.json, or {} (a run made before labkit recorded it)."""
    path = Path(run_dir) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """``provenance.json`` (``code.patch`` beside it is written once, by :func:`start`: ``git
    apply`` on the recorded commit rebuilds the code)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / PROVENANCE_FILE, json.dumps(record, indent=2) + "\n")


def finish(run_dir: Path, record: dict[str, Any], data_fingerprint: str | None = None) -> None:
    """Stamp the end time (and the data read, once known) and write the record again."""
    record["ended_utc"] = utc_now()
    if data_fingerprint is not None:
        record["data_fingerprint"] = data_fingerprint
    _write_record(run_dir, record)

"""Every result says where it came from: provenance.json in every run folder, a patch that
rebuilds a dirty tree, the report's code column and its mismatch warning, re-running a run from
its folder, and a failed summary for a run that fails before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import provenance
from labkit.report.cli import main as report_main
from labkit.report.report import build_report

from .conftest import ROOT, run_cli


def tiny(data_root: Path, log_dir: Path, *extra: str) -> list[str]:
    return [f"data.root={data_root}", "data.val_size=100", "data.train_size=300", "trainer.epochs=2",
            "model.width=16", "logger=none", "trainer.device=cpu", f"paths.log_dir={log_dir}", *extra]


def only_run(log_dir: Path, task: str = "train") -> Path:
    runs = list((log_dir / task / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}).stdout


# -- the record ---------------------------------------------------------------------------------
def check_record(run: Path, *override: str) -> None:
    """provenance.json of a finished train.py run: code, packages, machine, command, data."""
    record = json.loads((run / "provenance.json").read_text())
    assert record["entry_point"] == "train" and set(override) <= set(record["overrides"])
    assert record["command"].startswith("train.py ") and record["cwd"] == str(ROOT)
    assert {"python", "torch", "torchvision", "hydra-core", "omegaconf"} <= set(record["packages"])
    assert record["machine"]["cpu_count"] >= 1 and "torch_threads" in record["machine"]
    assert record["started_utc"] <= record["ended_utc"]
    summary = json.loads((run / "summary.json").read_text())
    assert record["data_fingerprint"] == summary["data_fingerprint"]
    assert len(summary["data_fingerprint"]) == 16
    code = record["code"]
    assert code["commit"] is None or len(code["commit"]) == 40  # None outside a git checkout
    assert (run / "code.patch").is_file() == bool(code.get("dirty"))


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository standing in for labkit's checkout, with one commit."""
    root = tmp_path / "code"
    root.mkdir()
    git(root, "init", "-q")
    (root / "a.py").write_text("x = 1\n")
    git(root, "add", "a.py")
    git(root, "commit", "-qm", "one")
    monkeypatch.setattr(provenance, "CODE_ROOT", root)
    provenance.code_state.cache_clear()
    yield root
    provenance.code_state.cache_clear()


def test_a_dirty_tree_gives_a_patch_that_rebuilds_it_on_the_recorded_commit(repo, tmp_path):
    (repo / "a.py").write_text("x = 2\n")
    (repo / "new.py").write_text("y = 3\n")  # untracked source files are part of the code too
    code, patch = provenance.code_state()
    assert code["dirty"] is True and code["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert git(repo, "status", "--porcelain").count("??") == 1  # the user's index is untouched
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "checkout", "-q", code["commit"])
    (tmp_path / "code.patch").write_text(patch)
    git(clone, "apply", str(tmp_path / "code.patch"))
    assert (clone / "a.py").read_text() == "x = 2\n" and (clone / "new.py").read_text() == "y = 3\n"


def test_a_clean_tree_has_no_patch_and_outside_git_the_run_goes_on(repo, tmp_path, monkeypatch):
    code, patch = provenance.code_state()
    assert code["dirty"] is False and patch == ""
    monkeypatch.setattr(provenance, "CODE_ROOT", tmp_path / "not-a-checkout")
    (tmp_path / "not-a-checkout").mkdir()
    provenance.code_state.cache_clear()
    record = provenance.start(tmp_path / "run")
    assert record["code"]["commit"] is None and "not a git checkout" in record["code"]["note"]
    assert json.loads((tmp_path / "run" / "provenance.json").read_text())["code"]["commit"] is None


# -- the report notices ---------------------------------------------------------------------------
def fake_run(folder: Path, commit: str, fingerprint: str, torch_version: str = "2.14.1") -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": "completed", "test_acc": 0.9}))
    (folder / "provenance.json").write_text(json.dumps({
        "code": {"commit": commit, "dirty": False, "patch_sha256": None},
        "packages": {"torch": torch_version}, "data_fingerprint": fingerprint}))


def test_the_report_shows_each_runs_commit_and_warns_when_they_differ(tmp_path, capsys):
    fake_run(tmp_path / "sweep" / "0", "a" * 40, "f1")
    fake_run(tmp_path / "sweep" / "1", "b" * 40, "f2", torch_version="2.13.0")
    build_report(tmp_path / "sweep", figures=False)
    out = capsys.readouterr().out
    assert "aaaaaaa" in out and "bbbbbbb" in out
    warning = next(line for line in out.splitlines() if line.startswith("warning:"))
    assert "code (aaaaaaa, bbbbbbb)" in warning and "data (2 fingerprints" in warning
    assert "torch 2.13.0 / 2.14.1" in warning
    assert "warning: the runs compared here differ in code" in (tmp_path / "sweep" / "report.md").read_text()
    # runs of one code, data and packages: no warning
    fake_run(tmp_path / "same" / "0", "a" * 40, "f1")
    fake_run(tmp_path / "same" / "1", "a" * 40, "f1")
    build_report(tmp_path / "same", figures=False)
    assert "warning:" not in capsys.readouterr().out


# -- re-run from the folder -------------------------------------------------------------------------
def test_a_run_records_where_it_came_from_and_reruns_from_its_folder(data_root, tmp_path):
    """The record of a deterministic CPU run, and a re-run from it with equal metrics."""
    result = run_cli("train.py", *tiny(data_root, tmp_path, "trainer.deterministic=true", "trainer.seed=3"))
    assert result.returncode == 0, result.stderr
    first = only_run(tmp_path)
    check_record(first, "trainer.seed=3")
    again = subprocess.run([sys.executable, "-m", "labkit.report", "rerun", str(first)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300,
                           env={**os.environ, "WANDB_MODE": "disabled"})
    assert again.returncode == 0, again.stderr
    reruns = list((tmp_path / "train" / "reruns").iterdir())
    assert len(reruns) == 1 and reruns[0].name.startswith(first.name)

    def results(run: Path) -> list[tuple]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"]) for r in rows]

    assert results(reruns[0]) == results(first)
    assert json.loads((reruns[0] / "summary.json").read_text())["test_acc"] == \
        json.loads((first / "summary.json").read_text())["test_acc"]


def test_rerun_of_a_folder_without_a_record_is_one_line(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    assert report_main(["rerun", str(tmp_path / "old")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no provenance.json" in err[0]


# -- a record for every failure ---------------------------------------------------------------------
def test_a_run_that_fails_before_training_leaves_a_failed_summary_the_report_lists(tmp_path, capsys):
    result = run_cli("train.py", *tiny(tmp_path / "no-data", tmp_path))
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    run = only_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "MNIST not found" in summary["error"]
    assert (run / "provenance.json").is_file()
    build_report(run, figures=False)
    assert f"job {run.name} failed: MNIST not found" in capsys.readouterr().out


def test_the_distillation_aggregate_and_methods_table_warn_too(tmp_path, capsys):
    from labkit.report.distill import find_distill_jobs, write_methods_report
    from labkit.report.origins import mismatch_warning

    for i, (commit, method) in enumerate((("a" * 40, "kd"), ("b" * 40, "kd"), ("a" * 40, "at"))):
        fake_run(tmp_path / "sweep" / str(i), commit, "f1")
        summary = {"status": "completed", "seed": 0, "method": method, "method_label": method,
                   "distill_gain_pp": 1.0, "gap_closed_pct": 10.0}
        for stage, acc in (("teacher", 0.9), ("student_baseline", 0.8), ("student_distill", 0.81)):
            summary.update({f"{stage}_test_acc": acc, f"{stage}_params": 10})
        (tmp_path / "sweep" / str(i) / "summary.json").write_text(json.dumps(summary))
    assert report_main(["distill", str(tmp_path / "sweep" / "0"), str(tmp_path / "sweep" / "1")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("warning: the runs compared here differ in code (aaaaaaa, bbbbbbb)")
    folder = tmp_path / "sweep"
    jobs = find_distill_jobs([folder])
    text = write_methods_report(folder, [job.summary for job in jobs], mismatch_warning(jobs)).read_text()
    assert "**warning: the runs compared here differ in code" in text


def test_a_resumed_run_keeps_the_earlier_record_of_its_folder(tmp_path, monkeypatch):
    first = provenance.start(tmp_path)
    provenance.finish(tmp_path, first)
    again = provenance.start(tmp_path)  # the same process (the job, then its stage): its own record
    assert again == json.loads((tmp_path / "provenance.json").read_text()) and "earlier" not in again
    monkeypatch.setattr(provenance.os, "getpid", lambda: -1)  # another process resumes the run
    later = provenance.start(tmp_path)
    record = json.loads((tmp_path / "provenance.json").read_text())
    assert later["pid"] == -1 and [r["started_utc"] for r in record["earlier"]] == [again["started_utc"]]

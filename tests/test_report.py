"""The multirun report on hand-written run directories: table, files, figures, odd states."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from labkit.report import build_report, load_jobs
from labkit.report.cli import main
from labkit.report.figures import accuracy_series, x_axis_keys
from labkit.report.table import swept_keys

PNG = b"\x89PNG\r\n\x1a\n"


def make_job(root: Path, name: str, overrides: list[str], summary: dict | None = None,
             epochs: int = 0) -> Path:
    """A run directory as train.py leaves it: .hydra/, summary.json, metrics.jsonl."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": "best_val_acc"}))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    rows = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_acc": 0.5 + 0.1 * e}
            for e in range(1, epochs + 1)]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return job


def completed(acc: float, params: int = 1000) -> dict:
    return {"status": "completed", "test_acc": acc, "test_loss": 1 - acc, "best_val_acc": acc + 0.01,
            "params": params, "epochs_completed": 2, "total_time_s": 3.5}


@pytest.fixture
def study(tmp_path) -> Path:
    """depth x residual x norm (8 jobs, one failed, one still running), data.root fixed."""
    folder = tmp_path / "multirun"
    n = 0
    for depth in (2, 8):
        for residual in (False, True):
            for norm in (False, True):
                overrides = [f"model.depth={depth}", f"+residual={str(residual).lower()}",
                             f"model.norm={str(norm).lower()}", "data.root=/data"]
                acc = 0.9 + 0.01 * n
                summary = completed(acc, params=100 * depth)
                if n == 5:
                    summary = {"status": "failed", "error": "NonFiniteLossError: loss became nan\nat step 3"}
                if n == 6:
                    summary = None  # no summary.json yet: still running
                make_job(folder, str(n), overrides, summary, epochs=2)
                n += 1
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_table_has_the_swept_values_and_each_jobs_results(study):
    out = io.StringIO()
    report = build_report(study, console=Console(file=out, width=220))
    jobs = load_jobs(study)
    assert swept_keys(jobs) == ["model.depth", "residual", "model.norm"]  # data.root is fixed
    rows = read_csv(report.csv)
    assert [r["job"] for r in rows] == [str(i) for i in range(8)]  # job order, not name order
    for row, job in zip(rows, jobs, strict=True):
        summary = json.loads((job.path / "summary.json").read_text()) if job.path.joinpath(
            "summary.json").is_file() else {}
        assert row["model.depth"] == str(job.overrides["model.depth"])
        assert row["residual"] == str(job.overrides["residual"]).lower()
        assert row["status"] == summary.get("status", "running")
        if summary.get("status") == "completed":
            assert float(row["test_acc"]) == pytest.approx(summary["test_acc"])
            assert float(row["test_loss"]) == pytest.approx(summary["test_loss"])
            assert int(row["params"]) == summary["params"]
    assert rows[6]["epochs_completed"] == "2" and float(rows[6]["best_val_acc"]) == pytest.approx(0.7)
    assert "NonFiniteLossError" in rows[5]["error"]

    md = report.markdown.read_text()
    assert "| 0 | 2 | false | false | completed | 90.00 | 0.1000 | 91.00 | 200 | 2 | 3.5 |" in md
    assert "`data.root=/data`" in md and "8 jobs: 6 completed, 1 failed, 1 running" in md
    assert ("job 5 (depth=8, residual=false, norm=true): failed: "
            "NonFiniteLossError: loss became nan at step 3") in md
    console = out.getvalue()
    assert "failed" in console and "running" in console and "90.00" in console


def test_accuracy_figure_has_one_line_per_flag_combination(study):
    report = build_report(study, console=Console(file=io.StringIO()))
    jobs = load_jobs(study)
    assert x_axis_keys(jobs) == ["model.depth"]  # flags are lines, never an x axis
    positions, series = accuracy_series(jobs, "model.depth")
    assert positions == [2, 8]
    lines = {s.label: dict(zip(s.xs, s.means, strict=True)) for s in series}
    assert set(lines) == {f"residual={r}, norm={n}" for r in ("false", "true") for n in ("false", "true")}
    assert lines["residual=false, norm=false"] == pytest.approx({2: 90.0, 8: 94.0})
    assert lines["residual=true, norm=false"] == pytest.approx({2: 92.0})  # depth 8 is running
    names = {p.name for p in report.figures}
    assert names == {"test_acc_vs_model.depth.png", "learning_curves.png",  # and each flag's forest plot
                     "paired_residual.png", "paired_model.norm.png"}
    for figure in report.figures:
        assert figure.read_bytes().startswith(PNG) and figure.stat().st_size > 10_000
        assert f"]({figure.name})" in report.markdown.read_text()


def test_seeds_are_averaged_and_lists_are_categories(tmp_path):
    layers = ["[1,1,1,1]", "[2,2,2,2]"]
    for i, (layout, seed) in enumerate((lo, s) for lo in layers for s in (1, 2)):
        make_job(tmp_path, str(i), [f"model.layers={layout}", f"trainer.seed={seed}"],
                 completed(0.8 + 0.1 * i))
    jobs = load_jobs(tmp_path)
    assert x_axis_keys(jobs) == ["model.layers"]
    positions, series = accuracy_series(jobs, "model.layers")
    assert positions == layers and len(series) == 1
    assert series[0].means == pytest.approx([85.0, 105.0])
    # error bars: the 95 % CI half-width, t(0.975, 1) = 12.706 x sd 7.0711 / sqrt(2)
    assert series[0].errors == pytest.approx([63.53, 63.53], abs=0.01)


def test_single_run_directory(tmp_path):
    run = make_job(tmp_path, "2026-01-01_00-00-00-000000", ["model.depth=4"], completed(0.97), epochs=2)
    report = build_report(run, console=Console(file=io.StringIO()))
    rows = read_csv(run / "report.csv")
    assert len(rows) == 1 and rows[0]["status"] == "completed" and float(rows[0]["test_acc"]) == 0.97
    assert report.markdown.parent == run and (run / "learning_curves.png").is_file()


def test_an_old_job_without_summary_is_stopped_not_running(tmp_path):
    job = make_job(tmp_path, "0", ["model.depth=2"], None, epochs=1)
    make_job(tmp_path, "1", ["model.depth=4"], completed(0.9))
    old = time.time() - 2 * 24 * 3600
    for path in (job / "metrics.jsonl", job / ".hydra" / "overrides.yaml"):
        os.utime(path, (old, old))
    assert [j.status for j in load_jobs(tmp_path)] == ["stopped", "completed"]


def test_command_line_writes_into_the_folder_and_rejects_an_empty_one(study, tmp_path, capsys):
    assert main([str(study), "--no-figures"]) == 0
    assert (study / "report.md").is_file() and (study / "report.csv").is_file()
    assert not (study / "learning_curves.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "holds no run" in capsys.readouterr().err


# -- the one reader behind every subcommand --------------------------------------------------------
def distill_summary(base: float, dist: float) -> dict:
    return {"teacher_test_acc": 0.99, "student_baseline_test_acc": base, "student_distill_test_acc": dist,
            "teacher_params": 100, "student_baseline_params": 10, "student_distill_params": 10,
            "distill_gain_pp": 100 * (dist - base), "gap_closed_pct": 50.0}


def test_a_folder_of_multiruns_is_read_in_job_order(tmp_path):
    for sweep in ("a", "b"):
        for n in (10, 2):
            make_job(tmp_path / sweep, str(n), [f"trainer.seed={n}"], completed(0.5))
    (tmp_path / "a" / "2" / "teacher").mkdir()  # a stage folder inside a run is not a run
    (tmp_path / "a" / "2" / "teacher" / "summary.json").write_text("{}")
    jobs = load_jobs(tmp_path)
    assert [str(j.path.relative_to(tmp_path)) for j in jobs] == ["a/2", "a/10", "b/2", "b/10"]
    assert [j.path.name for j in load_jobs(tmp_path / "b", tmp_path / "a" / "10")] == ["2", "10", "10"]


def test_distill_subcommand(tmp_path, capsys):
    for n, (base, dist) in enumerate(((0.96, 0.97), (0.95, 0.97))):
        make_job(tmp_path / "seeds", str(n), [f"trainer.seed={n}"], distill_summary(base, dist))
    make_job(tmp_path / "seeds", "2", ["trainer.seed=2"], completed(0.9))  # a train.py job: ignored
    assert main(["distill", str(tmp_path / "seeds")]) == 0
    table = capsys.readouterr().out
    assert "| student baseline | 95.50 ± 0.71 | 10 |" in table and "better in 2 of 2 runs" in table
    assert main(["distill", str(tmp_path / "seeds" / "2")]) == 2
    assert "no distillation summary.json" in capsys.readouterr().err

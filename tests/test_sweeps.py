"""Sweep files, launchers and search: real multiruns as subprocesses on tiny generated data."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from labkit.config.validate import validate_config
from labkit.report.jobs import parse_override

from .conftest import CONF, run_cli

SWEEPS = sorted((CONF.parent / "sweeps").glob("*.yaml"))


def tiny(data_root: Path, out: Path) -> list[str]:
    return [f"data.root={data_root}", "data.val_size=100", "trainer.epochs=1", f"paths.log_dir={out}"]


def the_sweep(out: Path, task: str = "train") -> Path:
    sweeps = list((out / task / "multiruns").iterdir())
    assert len(sweeps) == 1
    return sweeps[0]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name))


def overrides_of(job: Path) -> list[str]:
    return yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())


def parsed_overrides(job: Path) -> dict:
    return dict(parse_override(item) for item in overrides_of(job))


def summary_of(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


def report_rows(sweep: Path) -> dict[str, dict[str, str]]:
    with open(sweep / "report.csv", newline="") as fh:
        return {row["job"]: row for row in csv.DictReader(fh)}


# -- the sweep files compose -----------------------------------------------------------------
def compose_sweep(config_name: str, sweep: str) -> OmegaConf:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name, overrides=[f"sweep={sweep}"], return_hydra_config=True)


def test_the_studies_live_in_the_top_level_sweeps_folder_and_compose_from_anywhere(tmp_path):
    """The design card's ``sweeps/`` is their one home; ``conf/sweep`` only points at it."""
    assert len(SWEEPS) >= 10 and (CONF / "sweep").resolve() == (CONF.parent / "sweeps").resolve()
    result = run_cli("train.py", "sweep=mlp_depth_residual", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "mlp_depth_residual" in result.stdout


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_file_composes_into_a_multirun(path, tmp_path):
    config_name = "distill" if path.stem.startswith("distill") else "train"
    cfg = compose_sweep(config_name, path.stem)
    assert cfg.hydra.mode.name == "MULTIRUN"  # runs as a sweep without -m
    params = cfg.hydra.sweeper.params
    assert params
    parser = OverridesParser.create()
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        assert override.is_sweep_override(), key
        if override.is_discrete_sweep():  # an Optuna interval has no list of values
            assert len(list(override.sweep_string_iterator())) >= 2, key
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"{key} is not a config key"
    with open_dict(cfg):
        del cfg["hydra"]
    # outside a Hydra job paths.output_dir (${hydra:runtime.output_dir}) has no value: give it one
    runnable = {"trainer": {"device": "cpu"}, "paths": {"output_dir": str(tmp_path)}}
    if config_name == "distill":  # a stage_store of ${hydra:sweep.dir}/stages needs a Hydra job
        runnable["distill"] = {"stage_store": str(tmp_path / "stages")}
    validate_config(OmegaConf.merge(cfg, runnable), config_name)


def test_slurm_launcher_preset_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)


def test_multirun_folders_cannot_collide():
    """Two sweeps started back to back, and two jobs of one sweep, get different folders."""
    cfg = compose_sweep("train", "mlp_depth_residual")

    def resolved(key: str, job_num: int = 0) -> str:
        node = OmegaConf.create({"paths": OmegaConf.to_container(cfg.paths), "task_name": cfg.task_name,
                                 "hydra": {"sweep": OmegaConf.to_container(cfg.hydra.sweep),
                                           "job": {"num": job_num}}})
        return str(OmegaConf.select(node, key))

    first, second = resolved("hydra.sweep.dir"), resolved("hydra.sweep.dir")
    assert first != second and first.startswith(str(cfg.paths.log_dir))
    assert resolved("hydra.sweep.subdir", 0) != resolved("hydra.sweep.subdir", 1)


# -- real multiruns --------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_file_carries_on_past_failing_jobs_and_reports(data_root, tmp_path):
    """8 jobs from any folder: depth 0 and activation nope (bad values), lr 1e30 (NaN loss)."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    result = run_cli("train.py", "sweep=mlp_depth_residual", "model.depth=0,1", "optimizer.lr=0.001,1e30",
                     "model.activation=relu,nope", "model.residual=false", "trainer.seed=0",
                     *tiny(data_root, tmp_path),
                     "logger=wandb", env={"WANDB_MODE": "offline"}, cwd=cwd)
    assert result.returncode == 0, result.stderr
    sweep = the_sweep(tmp_path)
    jobs = job_dirs(sweep)
    expected = list(itertools.product((0, 1), (0.001, 1e30), ("relu", "nope")))
    assert len(jobs) == len(expected) == 8
    for job, (depth, lr, activation) in zip(jobs, expected, strict=True):
        overrides = parsed_overrides(job)
        assert overrides["sweep"] == "mlp_depth_residual" and overrides["model.residual"] is False
        assert (overrides["model.depth"], overrides["optimizer.lr"], overrides["model.activation"]) == (
            depth, lr, activation)
        summary = summary_of(job)
        if depth == 0:
            assert summary["status"] == "failed" and summary["error"].startswith("ConfigError: model.depth=0")
        elif activation == "nope":
            assert summary["status"] == "failed" and "model.activation='nope' is invalid" in summary["error"]
        elif lr == 1e30:
            assert summary["status"] == "failed" and summary["error"].startswith("NonFiniteLossError")
        else:
            assert summary["status"] == "completed" and summary["epochs_completed"] == 1

    # the multirun wrote its report; its rows are the jobs' summaries
    rows = report_rows(sweep)
    assert set(rows) == {job.name for job in jobs}
    for job in jobs:
        summary, row = summary_of(job), rows[job.name]
        assert row["status"] == summary["status"]
        assert (row["model.depth"], row["model.activation"]) == (
            str(parsed_overrides(job)["model.depth"]), parsed_overrides(job)["model.activation"])
        if summary["status"] == "completed":
            assert float(row["test_acc"]) == pytest.approx(summary["test_acc"])
            assert int(row["params"]) == summary["params"]
    assert "8 jobs: 1 completed, 7 failed" in (sweep / "report.md").read_text()

    # one W&B run per job that started training, grouped by the sweep, named by its overrides,
    # finished with the job's outcome
    for job, exit_code in ((jobs[4], 0), (jobs[6], 1)):
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        record = next(runs[0].glob("*.wandb")).read_bytes()
        assert sweep.name.encode() in record
        assert ",".join(sorted(overrides_of(job))).encode() in record  # Hydra's override_dirname
        assert f"got exitcode: {exit_code}" in (runs[0] / "logs" / "debug.log").read_text()
    assert not (jobs[0] / "wandb").exists()  # refused before W&B started

    # the report command reads the same folder again
    again = subprocess.run([sys.executable, "-m", "labkit.report", str(sweep)], capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "NonFiniteLossError" not in again.stdout and again.stdout.count("failed") >= 7


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(data_root, tmp_path):
    result = run_cli("train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "model.depth=1,3", "+residual=true", "analysis.grad_norms=true",
                     "analysis.probe_size=64", *tiny(data_root, tmp_path), "logger=none")
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    sweep = the_sweep(tmp_path)
    jobs = job_dirs(sweep)
    assert [overrides_of(j)[0] for j in jobs] == ["model.depth=1", "model.depth=3"]
    assert [summary_of(j)["skip_connections"] for j in jobs] == [0, 2]
    rows = report_rows(sweep)
    assert [float(rows[j.name]["test_acc"]) for j in jobs] == [summary_of(j)["test_acc"] for j in jobs]
    for name in ("test_acc_vs_model.depth.png", "learning_curves.png", "grad_norms.png"):
        assert (sweep / name).is_file(), name


@pytest.mark.slow
def test_submitit_local_launcher(data_root, tmp_path):
    result = run_cli("train.py", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                     "model.width=16,32", *tiny(data_root, tmp_path), "logger=none")
    assert result.returncode == 0, result.stderr
    sweep = the_sweep(tmp_path)
    assert (sweep / ".submitit").is_dir()  # submitit's own job records
    jobs = job_dirs(sweep)
    assert [overrides_of(j)[0] for j in jobs] == ["model.width=16", "model.width=32"]
    assert all(summary_of(j)["status"] == "completed" for j in jobs)
    assert set(report_rows(sweep)) == {"0", "1"}


@pytest.mark.slow
def test_optuna_search_optimises_the_returned_metric(data_root, tmp_path):
    result = run_cli("train.py", "sweep=mlp_optuna", "hydra.sweeper.n_trials=2",
                     "optimized_metric=test_loss", "hydra.sweeper.direction=minimize",
                     *tiny(data_root, tmp_path), "logger=none")
    assert result.returncode == 0, result.stderr
    sweep = the_sweep(tmp_path)
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    losses = {job.name: summary_of(job)["test_loss"] for job in jobs}
    assert best["best_value"] == pytest.approx(min(losses.values()))
    best_job = min(losses, key=losses.get)
    for key, value in best["best_params"].items():
        assert f"{key}={value}" in overrides_of(sweep / best_job)
    assert "## Search result" in (sweep / "report.md").read_text()

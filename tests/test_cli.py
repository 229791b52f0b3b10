"""The documented commands, run as subprocesses on tiny generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .conftest import run_cli

pytestmark = pytest.mark.slow

METRIC_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s",
               "images_per_s"}
SUMMARY_KEYS = {"test_acc", "test_loss", "best_val_acc", "params", "epochs_completed",
                "train_time_s", "train_images_per_s"}


def tiny(data_root: Path, out: Path) -> list[str]:
    return [f"data.root={data_root}", "data.val_size=100", "trainer.epochs=2",
            f"paths.log_dir={out}", "logger=none"]


def only_run_dir(out: Path) -> Path:
    runs = list((out / "train" / "runs").iterdir())
    assert len(runs) == 1
    return runs[0]


def test_default_command_leaves_every_file(data_root, tmp_path):
    result = run_cli("train.py", *tiny(data_root, tmp_path))
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(METRIC_KEYS <= set(row) for row in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and summary["epochs_completed"] == 2
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["test_acc"] > 0.9
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "curves.png",
                 ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (run / name).is_file(), name
    assert "results" in result.stdout and "test_acc" in result.stdout


def test_deep_residual_command(data_root, tmp_path):
    result = run_cli("train.py", "model=mlp", "model.depth=20", "+residual=true",
                     *tiny(data_root, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "residual: True" in result.stdout  # printed config
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["skip_connections"] == 19  # the built module has the skips


@pytest.mark.parametrize("args,norm_layers,skips", [
    (["+norm=true"], 2, 0),
    (["model.residual=true", "model.norm=true", "optimizer=sgd", "scheduler=none"], 2, 1),
])
def test_norm_and_sgd_commands(data_root, tmp_path, args, norm_layers, skips):
    result = run_cli("train.py", *args, *tiny(data_root, tmp_path))
    assert result.returncode == 0, result.stderr
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert (summary["norm_layers"], summary["skip_connections"]) == (norm_layers, skips)
    config = yaml.safe_load((only_run_dir(tmp_path) / ".hydra" / "config.yaml").read_text())
    if "scheduler=none" in args:
        assert not config["scheduler"] and config["optimizer"]["_target_"] == "torch.optim.SGD"


def test_multirun_makes_six_separate_runs(data_root, tmp_path):
    result = run_cli("train.py", "-m", "model.depth=2,10,20", "+residual=true,false",
                     *tiny(data_root, tmp_path), "trainer.epochs=1")
    assert result.returncode == 0, result.stderr
    sweeps = list((tmp_path / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 6
    seen = set()
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        summary = json.loads((job / "summary.json").read_text())
        depth = int(next(o for o in overrides if o.startswith("model.depth=")).split("=")[1])
        residual = next(o for o in overrides if o.startswith("+residual=")).lower().endswith("true")
        assert summary["skip_connections"] == (depth - 1 if residual else 0)
        seen.add((depth, residual))
    assert len(seen) == 6


def test_cfg_job_prints_config_without_training(tmp_path):
    result = run_cli("train.py", "--cfg", "job", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["depth"] == 2 and config["trainer"]["epochs"] >= 1
    assert not (tmp_path / "train").exists()


def test_missing_data_is_one_clear_line(tmp_path):
    result = run_cli("train.py", f"data.root={tmp_path / 'nowhere'}", f"paths.log_dir={tmp_path}",
                     "logger=none")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: MNIST not found") and "Traceback" not in result.stderr
    assert "train-images-idx3-ubyte" in lines[-1]


def test_wandb_offline_run_is_written_and_finished(data_root, tmp_path):
    result = run_cli("train.py", *tiny(data_root, tmp_path)[:-1], "logger=wandb",
                     "trainer.epochs=1", env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr
    offline = list((only_run_dir(tmp_path) / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))

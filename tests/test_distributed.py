"""torchrun + DDP on the CPU (gloo): one set of outputs, same parameters as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from labkit.engine import load_checkpoint

from .conftest import ROOT, run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
]


def args(data_root, log_dir):
    # 500 training images, global batch 50: 10 steps, each rank takes 25 images per step
    return [f"data.root={data_root}", "data.val_size=100", "data.batch_size=50", "trainer.epochs=1",
            "optimizer=sgd", "optimizer.lr=0.05", "scheduler=none", "model.width=32",
            f"paths.log_dir={log_dir}", "logger=none"]


def test_torchrun_two_ranks_matches_one_process(data_root, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    ddp = torchrun(env, str(ROOT / "train.py"), *args(data_root, tmp_path / "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_cli("train.py", *args(data_root, tmp_path / "single"))
    assert single.returncode == 0, single.stderr

    runs = list((tmp_path / "ddp" / "train" / "runs").iterdir())
    assert len(runs) == 1  # every rank agreed on one run directory
    run = runs[0]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

    (single_run,) = (tmp_path / "single" / "train" / "runs").iterdir()
    a = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(single_run / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
    sa = json.loads((run / "summary.json").read_text())
    sb = json.loads((single_run / "summary.json").read_text())
    assert sa["test_acc"] == pytest.approx(sb["test_acc"], abs=1e-9)  # metrics reduced over ranks
    assert sa["train_size"] == sb["train_size"]

    # resume under DDP: SIGTERM after step 4 on both ranks (agreed on at step 5), then the same command
    # with trainer.resume=true ends with the uninterrupted run's weights
    stopped_run = tmp_path / "ddp-stopped"
    stopped = torchrun(env, str(ROOT / "tests" / "helpers" / "fault_runner.py"), "TERM", "1", "4",
                       *args(data_root, tmp_path / "ddp"), f"hydra.run.dir={stopped_run}",
                       "trainer.log_every_n_steps=5")
    assert stopped.returncode != 0 and "stopped by signal" in stopped.stderr, stopped.stderr[-3000:]
    assert load_checkpoint(stopped_run / "checkpoints" / "last.pt")["partial_epoch"]["step"] == 5
    resumed = torchrun(env, str(ROOT / "train.py"), *args(data_root, tmp_path / "ddp"),
                       f"hydra.run.dir={stopped_run}", "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "trainer.log_every_n_steps 5 -> 50" in resumed.stdout
    c = load_checkpoint(stopped_run / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key], c[key], atol=1e-6, rtol=1e-5), key
    # the case: a 1-epoch run resumed with more epochs is refused, nothing trained
    longer = torchrun(env, str(ROOT / "train.py"), *args(data_root, tmp_path / "ddp"), f"hydra.run.dir={run}",
                      "trainer.epochs=2", "trainer.resume=true")
    assert longer.returncode != 0 and "trainer.epochs 1 -> 2" in longer.stderr, longer.stderr[-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1


def torchrun(env: dict, script: str, *script_args: str) -> subprocess.CompletedProcess:
    """``script`` under torchrun with two ranks (``trainer=ddp`` after ``script_args``)."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
         *script_args, "trainer=ddp"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def test_ddp_without_torchrun_is_a_clear_error(tmp_path):
    result = run_cli("train.py", "trainer=ddp", f"paths.log_dir={tmp_path}", "logger=none")
    assert result.returncode == 2
    assert "torchrun" in result.stderr and "Traceback" not in result.stderr


def test_torchrun_distill_writes_one_set_of_stage_outputs(data_root, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "distill.py"), "trainer=ddp", f"data.root={data_root}", "data.val_size=100",
         "data.batch_size=50", "trainer.epochs=1", "teacher.width=32", "student.width=8",
         f"paths.log_dir={tmp_path}", "logger=none"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "distill" / "runs").iterdir()
    for name in ("teacher.pth", "student_baseline.pth", "student_distill.pth", "comparison.md",
                 "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["same_initial_weights"] is True
    assert summary["stages_run"] == ["teacher", "student_baseline", "student_distill"]

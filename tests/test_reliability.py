"""Crash, preemption, divergence, bad checkpoints and bad output folders (issue: reliability)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labkit.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from labkit.errors import CheckpointError
from labkit.models import FlexibleMLP

from .conftest import ROOT, run_cli

FAULT_RUNNER = ROOT / "tests" / "helpers" / "fault_runner.py"


def common(data_root: Path, run_dir: Path, epochs: int = 3) -> list[str]:
    return [f"data.root={data_root}", "data.val_size=100", "data.batch_size=32",
            f"trainer.epochs={epochs}", "trainer.deterministic=true", "logger=none",
            f"hydra.run.dir={run_dir}", "model.dropout=0.1"]


def run_with_fault(fault: str, epoch: int, step: int, args: list[str]) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(FAULT_RUNNER), fault, str(epoch), str(step), *args],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def final(run_dir: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def same_results(a: Path, b: Path) -> None:
    (sa, ra), (sb, rb) = final(a), final(b)
    assert sa["status"] == sb["status"] == "completed"
    for key in ("test_acc", "test_loss", "best_val_acc", "final_train_loss"):
        assert sa[key] == pytest.approx(sb[key], rel=1e-6, abs=1e-9), key
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (x["epoch"], key)


@pytest.fixture(scope="module")
def reference_run(data_root, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli("train.py", *common(data_root, run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(data_root, tmp_path, reference_run):
    run_dir = tmp_path / "run"
    killed = run_with_fault("KILL", 2, 5, common(data_root, run_dir))
    assert killed.returncode == -9
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = run_cli("train.py", *common(data_root, run_dir), "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    same_results(run_dir, reference_run)


@pytest.mark.slow
@pytest.mark.parametrize("fault,status", [("TERM", 143), ("INT", 130)])
def test_signal_writes_checkpoint_and_resume_is_exact(data_root, tmp_path, reference_run, fault, status):
    run_dir = tmp_path / "run"
    stopped = run_with_fault(fault, 2, 5, common(data_root, run_dir))
    assert stopped.returncode == status, stopped.stderr
    assert "trainer.resume=true" in stopped.stderr and "Traceback" not in stopped.stderr
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["partial_epoch"]["step"] == 6  # stopped at a step boundary
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    if fault == "INT":  # the stop path is the same for both signals; resume once to save time
        return
    # a setting that cannot change the result may differ: the run goes on, and says so
    resumed = run_cli("train.py", *common(data_root, run_dir), "trainer.resume=true",
                      "trainer.log_every_n_steps=7")
    assert resumed.returncode == 0, resumed.stderr
    assert "the recorded run goes on unchanged" in resumed.stdout
    assert "trainer.log_every_n_steps 50 -> 7" in resumed.stdout
    same_results(run_dir, reference_run)


@pytest.mark.slow
def test_resuming_a_finished_run_does_nothing(reference_run, data_root):
    before = (reference_run / "summary.json").read_text()
    result = run_cli("train.py", *common(data_root, reference_run), "trainer.resume=true")
    assert result.returncode == 0, result.stderr
    assert "already finished" in result.stdout
    assert (reference_run / "summary.json").read_text() == before


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(data_root, tmp_path):
    run_dir = tmp_path / "run"
    result = run_with_fault("NAN", 2, 3, common(data_root, run_dir))
    assert result.returncode == 3
    assert "non-finite at epoch 2, step 3" in result.stderr and "Traceback" not in result.stderr
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("train.py", f"paths.log_dir={blocker}", "logger=none")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: cannot write the output folder")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_unknown_group_option_lists_the_choices(tmp_path):
    result = run_cli("train.py", "model=transformer", f"paths.log_dir={tmp_path}")
    assert result.returncode != 0
    assert "mlp" in result.stderr and "Traceback" not in result.stderr


def test_truncated_foreign_and_wrong_architecture_checkpoints(tmp_path):
    model = FlexibleMLP(depth=2, width=8)
    good = tmp_path / "good.pt"
    save_checkpoint({"format": "labkit-checkpoint-v1", "model": model.state_dict()}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a labkit checkpoint"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "labkit-checkpoint-v1", "obj": Path("x")}, pickled)
    with pytest.raises(CheckpointError, match="not a labkit checkpoint"):
        load_checkpoint(pickled)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    state = load_checkpoint(good)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_model_weights(FlexibleMLP(depth=3, width=8), state["model"], good)
    load_model_weights(FlexibleMLP(depth=2, width=8), state["model"], good)


def test_full_disk_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    from labkit.engine import Engine
    from labkit.errors import OutputError

    model = FlexibleMLP(depth=1, width=4)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=tmp_path)
    engine.epoch = 1
    engine.save(is_best=True)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    engine.epoch = 2
    with pytest.raises(OutputError, match="No space left on device.*intact"):
        engine.save(is_best=True)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1


def test_a_failing_tracker_does_not_stop_training():
    from labkit.tracking import Tracker, TrackerGroup

    class Broken(Tracker):
        def log_epoch(self, metrics):
            raise ConnectionError("W&B unreachable")

    class Recorder(Tracker):
        def __init__(self):
            self.rows = []

        def log_epoch(self, metrics):
            self.rows.append(metrics)

    recorder = Recorder()
    group = TrackerGroup([Broken(), recorder])
    group.log_epoch({"epoch": 1})
    group.log_epoch({"epoch": 2})
    assert [r["epoch"] for r in recorder.rows] == [1, 2] and len(group.trackers) == 1


@pytest.mark.slow
def test_eval_rebuilds_the_model_from_its_checkpoint(reference_run, data_root, tmp_path):
    result = run_cli("eval.py", f"ckpt_path={reference_run / 'checkpoints' / 'best.pt'}",
                     f"hydra.run.dir={tmp_path / 'eval'}", f"data.root={data_root}")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    summary = json.loads((reference_run / "summary.json").read_text())
    assert report["test_acc"] == pytest.approx(summary["test_acc"])  # best.pt is what was tested
    matrix = torch.tensor(report["confusion_matrix"])
    assert matrix.sum() == summary["test_size"] and len(report["per_class_acc"]) == 10
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()
    record = json.loads((tmp_path / "eval" / "provenance.json").read_text())  # eval.py's own record
    assert record["entry_point"] == "eval" and record["data_fingerprint"] == summary["data_fingerprint"]
    bad = run_cli("eval.py", f"ckpt_path={tmp_path / 'eval' / 'eval.json'}",
                  f"hydra.run.dir={tmp_path / 'eval2'}")
    assert bad.returncode == 2 and "cannot be read" in bad.stderr

"""The one owner of run folders (labkit/run_folder.py) and the one error exit (labkit/errors.py)."""

from __future__ import annotations

import json

import pytest
import torch

from labkit.engine import save_checkpoint
from labkit.engine.checkpoint import CHECKPOINT_FORMAT
from labkit.errors import CheckpointError, ConfigError, RunInterrupted, exit_on, print_error
from labkit.models import FlexibleMLP
from labkit.run_folder import (
    STAGE_ROLES,
    checkpoint_path,
    job_status,
    load_model_state,
    mark_failed,
    run_checkpoint,
    run_dir_of,
    stage_path,
)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
@pytest.mark.parametrize("kind", ["engine", "stage", "bare"])
def test_weights_come_out_of_every_checkpoint_kind_without_wrapper_prefixes(tmp_path, kind, prefix):
    weights = FlexibleMLP(depth=1, width=4).state_dict()
    saved = {f"{prefix}{k}": v for k, v in weights.items()}
    record = {"engine": {"format": CHECKPOINT_FORMAT, "epoch": 1, "model": saved},
              "stage": {"format": "labkit-distill-stage-v1", "model": saved, "summary": {}},
              "bare": saved}[kind]
    save_checkpoint(record, tmp_path / "w.pt")
    loaded = load_model_state(tmp_path / "w.pt")
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_a_file_without_weights_is_named(tmp_path):
    save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="empty.pt holds no model weights"):
        load_model_state(tmp_path / "empty.pt")


def test_layout_of_train_and_distillation_run_folders(tmp_path):
    run = tmp_path / "run"
    assert run_checkpoint(run) is None
    last = checkpoint_path(run, "last")
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert run_checkpoint(run) == last and run_dir_of(last) == run
    checkpoint_path(run, "best").write_bytes(b"")
    assert run_checkpoint(run) == run / "checkpoints" / "best.pt"
    for stage in STAGE_ROLES:  # a stage's checkpoint and its stage file belong to the distillation run
        assert run_dir_of(checkpoint_path(run / stage, "best")) == run == run_dir_of(stage_path(run, stage))


def test_a_failed_job_keeps_what_its_task_wrote(tmp_path):
    assert mark_failed(tmp_path / "new", ValueError("bad"))["status"] == "failed"
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "completed", "test_acc": 0.9}))
    assert mark_failed(run, ValueError("bad")) == {"status": "failed", "test_acc": 0.9,
                                                   "error": "ValueError: bad"}
    (run / "summary.json").write_text(json.dumps({"status": "interrupted", "error": "stopped"}))
    assert mark_failed(run, RunInterrupted("stopped", 15))["status"] == "interrupted"
    assert job_status({"status": "diverged"}, run) == "diverged"
    assert job_status({}, run, now=1e12) == "stopped"


def test_one_error_exit_for_every_command(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert print_error(ConfigError("x=1 is invalid")) == 2
    assert capsys.readouterr().err == "error: x=1 is invalid\n"
    with pytest.raises(SystemExit) as exit_info:
        exit_on(CheckpointError("checkpoint a.pt does not exist"))
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: checkpoint a.pt does not exist\n"
    with pytest.raises(KeyError):  # not a user error: the traceback is kept
        exit_on(KeyError("bug"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError):
        exit_on(ConfigError("x=1 is invalid"))

"""TensorBoard (issue 23): event files read back with TensorBoard's own EventAccumulator and
checked against the run's metrics.jsonl and summary.json; several loggers in one run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import SCALARS, TENSORS, EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from labkit.distill import pipeline
from labkit.run import build_trackers, job_hparams
from labkit.tracking import ConsoleTracker, FileTracker, TensorBoardTracker, WandbTracker, read_metrics
from labkit.training import train

from .conftest import compose_config, run_cli

#: metrics.jsonl key -> TensorBoard tag (the README's table)
EPOCH_TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss",
              "val_acc": "val/acc", "lr": "train/lr", "images_per_s": "train/images_per_s",
              "train_time_s": "train/time_s", "epoch_time_s": "epoch/time_s"}
STEP_TAGS = {"train_step/loss", "train_step/acc", "train_step/images_per_s", "train_step/lr"}
SUMMARY_TAGS = {"test_acc": "test/acc", "test_loss": "test/loss", "best_val_acc": "summary/best_val_acc",
                "final_train_loss": "summary/final_train_loss",
                "epochs_completed": "summary/epochs_completed"}


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0, TENSORS: 0})  # 0: keep all
    accumulator.Reload()
    return accumulator


def series(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in acc.Scalars(tag)}


def session(acc: EventAccumulator) -> tuple[dict, str | None]:
    """The HParams session of a run: its hyper-parameters and end status (None: not ended)."""
    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    params = {k: v.string_value if v.HasField("string_value") else v.number_value
              for k, v in start.hparams.items()}
    end = content.get("_hparams_/session_end_info")
    status = HParamsPluginData.FromString(end).session_end_info.status if end else None
    return params, (None if status is None else "success" if status == 1 else str(status))


def check_against_files(run_dir: Path) -> EventAccumulator:
    """Every epoch row and the test scores in ``run_dir/tensorboard`` hold what the files hold."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    acc = events(run_dir / "tensorboard")
    epochs = series(acc, "epoch")
    assert sorted(epochs.values()) == [row["epoch"] for row in rows]
    steps_per_epoch = {step // int(epoch) for step, epoch in epochs.items()}
    assert len(steps_per_epoch) == 1  # one x-axis: an epoch's row at the step that ends it
    per_epoch = steps_per_epoch.pop()
    step_loss, step_lr = series(acc, "train_step/loss"), series(acc, "train_step/lr")
    for row in rows:
        at = row["epoch"] * per_epoch
        for key, tag in EPOCH_TAGS.items():
            assert series(acc, tag)[at] == pytest.approx(row[key], rel=1e-6), (tag, row["epoch"])
        for block, stats in row.get("grad_norms", {}).items():
            for stat, value in stats.items():
                assert series(acc, f"grad_norms/{block}/{stat}")[at] == pytest.approx(value, rel=1e-6)
        # the bar's running mean at the epoch's last step is the epoch's mean; lr per epoch here
        assert step_loss[at] == pytest.approx(row["train_loss"], rel=1e-5)
        in_epoch = [lr for step, lr in step_lr.items() if at - per_epoch < step <= at]
        assert in_epoch and all(lr == pytest.approx(row["lr"], rel=1e-6) for lr in in_epoch)
    last = rows[-1]["epoch"] * per_epoch
    for key, tag in SUMMARY_TAGS.items():
        assert series(acc, tag) == {last: pytest.approx(summary[key], rel=1e-6)}, tag
    return acc


# -- the logger group ------------------------------------------------------------------------
def tracker_types(cfg, run_dir: Path) -> list[type]:
    group = build_trackers(cfg, run_dir, Console(file=io.StringIO()))
    return [type(t) for t in group.trackers]


@pytest.mark.parametrize("logger,expected", [
    ("none", []),
    ("wandb", [WandbTracker]),
    ("tensorboard", [TensorBoardTracker]),
    ("[wandb,tensorboard]", [WandbTracker, TensorBoardTracker]),
])
def test_logger_group_takes_one_option_or_a_list(cfg_factory, tmp_path, logger, expected):
    cfg = cfg_factory(f"logger={logger}")
    assert set(cfg.logger) == {t.__name__.removesuffix("Tracker").lower() for t in expected}
    assert tracker_types(cfg, tmp_path) == [ConsoleTracker, FileTracker, *expected]


def test_job_hparams_are_the_overrides_typed_and_without_paths_or_logger(tmp_path):
    overrides = ["model=cnn", "model.width=16", "+residual=true", "optimizer.lr=0.01",
                 "data.augment={crop_padding:2,flip:true}", f"paths.log_dir={tmp_path}",
                 "logger=[wandb,tensorboard]", "logger.wandb.mode=offline"]
    cfg = compose_config(overrides, tmp_path / "run")
    assert job_hparams(cfg, overrides, {"model": "cnn", "logger": "[wandb, tensorboard]"}) == {
        "model": "cnn", "model.width": 16, "residual": True, "optimizer.lr": 0.01,
        "data.augment": {"crop_padding": 2, "flip": True}}


# -- the tracker on its own: a resumed run replaces what it redoes ----------------------------
def test_resumed_run_purges_the_steps_it_redoes(tmp_path):
    first = TensorBoardTracker(tmp_path, hparams={"model.depth": 3, "residual": True})
    first.start({"trainer": {"epochs": 2}}, {"params": 10})
    for epoch in (1, 2):
        first.epoch_start(epoch, 2, 4)
        for step in (2, 4) if epoch == 1 else (2,):
            first.step(epoch, step, {"loss": 1.0 * epoch, "img/s": 100.0})
        if epoch == 1:
            first.log_epoch({"epoch": 1, "train_loss": 1.0, "grad_norms": {"block0": {"mean": 0.5}}})
    first.finish("interrupted")  # killed in epoch 2 at step 2, after the last checkpoint (epoch 1)

    second = TensorBoardTracker(tmp_path, hparams={"model.depth": 3, "residual": True})
    second.start({"trainer": {"epochs": 2}}, {"params": 10})
    second.epoch_start(2, 2, 4)
    for step in (2, 4):
        second.step(2, step, {"loss": 9.0, "img/s": 100.0})
    second.log_epoch({"epoch": 2, "train_loss": 9.0})
    second.log_summary({"status": "completed", "test_acc": 0.5, "params": 10})
    second.finish("completed")

    acc = events(tmp_path)
    assert series(acc, "train_step/loss") == {2: 1.0, 4: 1.0, 6: 9.0, 8: 9.0}
    assert series(acc, "train/loss") == {4: 1.0, 8: 9.0}
    assert series(acc, "grad_norms/block0/mean") == {4: 0.5}
    assert series(acc, "test/acc") == {8: 0.5} and "summary/params" not in acc.Tags()["scalars"]
    assert session(acc) == ({"model.depth": 3.0, "residual": "true"}, "success")
    assert {"config/text_summary", "model/text_summary"} <= set(acc.Tags()["tensors"])


def test_failed_run_leaves_its_session_unended(tmp_path):
    tracker = TensorBoardTracker(tmp_path, hparams={"optimizer.lr": 1e30})
    tracker.start({}, {})
    tracker.log_summary({"status": "failed", "error": "NonFiniteLossError: ...", "best_val_acc": None})
    tracker.finish("failed")
    assert session(events(tmp_path)) == ({"optimizer.lr": 1e30}, None)


# -- real runs ---------------------------------------------------------------------------------
def test_train_run_writes_every_series_of_its_files(cfg_factory, tmp_path, data_root):
    run_dir = tmp_path / "run"
    cfg = cfg_factory(f"data.root={data_root}", "logger=tensorboard", "analysis=grads",
                      "analysis.probe_size=64", "trainer.epochs=2", "data.val_size=100", "model.depth=2",
                      "trainer.log_every_n_steps=3", "trainer.checkpoint=false",
                      f"paths.output_dir={run_dir}")
    train(cfg)
    acc = check_against_files(run_dir)
    assert STEP_TAGS <= set(acc.Tags()["scalars"])
    assert sorted(series(acc, "train_step/loss")) == [3, 4, 7, 8]  # every 3rd step and each epoch's last
    params, status = session(acc)
    assert status == "success" and params["model.depth"] == 2 and params["analysis"] == "grads"
    assert not any(key.startswith(("paths", "logger")) for key in params)


def test_distill_stages_are_runs_named_by_their_stage(data_root, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [f"data.root={data_root}", "data.val_size=100", "data.batch_size=64", "trainer.epochs=2",
                 "teacher.width=48", "student.width=8", f"paths.log_dir={tmp_path}", "logger=tensorboard",
                 "trainer.device=cpu"]
    cfg = compose_config(overrides, run_dir, config_name="distill")
    pipeline.distill(cfg)
    stages = ("teacher", "student_baseline", "student_distill")
    assert sorted(p.parent.parent.name for p in run_dir.glob("*/tensorboard/events.*")) == sorted(stages)
    for stage in stages:
        params, status = session(check_against_files(run_dir / stage))
        assert params["stage"] == stage and params["student.width"] == 8 and status == "success"


@pytest.mark.slow
def test_two_loggers_in_a_multirun_write_both_and_compare_jobs(data_root, tmp_path):
    result = run_cli("train.py", "-m", "model.width=8,16", "logger=[wandb,tensorboard]",
                     f"data.root={data_root}", "data.val_size=100", "trainer.epochs=1",
                     f"paths.log_dir={tmp_path}", "~hydra.callbacks.report", env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr
    sweep = next((tmp_path / "train" / "multiruns").iterdir())
    jobs = sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name))
    assert [job.name for job in jobs] == ["0", "1"]  # a list value is one job, not a sweep axis
    for job, width in zip(jobs, (8, 16), strict=True):
        offline = list((job / "wandb").glob("offline-run-*"))
        assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
        params, status = session(check_against_files(job))
        assert params["model.width"] == width and status == "success"
    # `tensorboard --logdir <sweep>`: one run per job
    assert sorted(p.relative_to(sweep).parent.as_posix() for p in sweep.rglob("events.out.tfevents.*")) == [
        "0/tensorboard", "1/tensorboard"]

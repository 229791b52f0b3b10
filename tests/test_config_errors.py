"""Every bad override is one line, exit status 2, no traceback, nothing written: one table for
all entry points (train.py, distill.py, eval.py, explain.py).

The entry points run in this process (their Hydra main with a patched ``sys.argv``), which is
what keeps 60 cases fast; a few run as real subprocesses to show the two paths agree.
"""

from __future__ import annotations

import json
import re
import runpy
import sys

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException

import labkit.cli
from labkit.config.overrides import unknown_keys_in_one_line
from labkit.config.schema import ENTRY_POINTS
from labkit.config.validate import validate_config
from labkit.errors import ConfigError
from labkit.run import divergence
from labkit.training import train

from .conftest import ROOT, compose_config, run_cli

CKPT = "CKPT"  # replaced by the path of an existing (dummy) checkpoint file

# (entry point, overrides, what the error line must contain)
CASES = [
    # the seven cases (optimizer.lr=1e9 runs and is marked diverged: see below)
    ("train", ["+residul=true"], "residul=true is not a known key: did you mean residual?"),
    ("train", ["trainer.grad_clip=-1"], "trainer.grad_clip=-1 is invalid: expected null or a number > 0"),
    ("train", ["model.norm_type=group"], "model.norm_type='group' is invalid: expected batch or layer"),
    ("train", ["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0 is invalid: expected an "
                                                           "integer >= 1"),
    ("train", ["paths.output_dir=/proc/x"], "paths.output_dir='/proc/x' is invalid: expected a folder"),
    ("train", ["model.activation=foo"], "model.activation='foo' is invalid: expected relu, gelu, silu"),
    # unknown keys anywhere, with the nearest names
    ("train", ["+model.dropuot=0.1"], "model.dropuot=0.1 is not a known key: did you mean model.dropout?"),
    ("train", ["+trainer.epoch=3"], "trainer.epoch=3 is not a known key: did you mean trainer.epochs?"),
    ("train", ["+tag=x"], "tag='x' is not a known key: did you mean tags?"),
    ("train", ["data.augment={crop:4}"], "data.augment.crop=4 is not a known key"),
    ("train", ["optimizer._target_=torch.optim.Foo"], "optimizer._target_='torch.optim.Foo' is invalid"),
    # the documented root switches hold booleans
    ("train", ["+residual=maybe"], "residual='maybe' is invalid: expected true or false"),
    ("train", ["+norm=1"], "norm=1 is invalid: expected true or false"),
    # trainer
    ("train", ["trainer.epochs=0"], "trainer.epochs=0 is invalid: expected an integer >= 1"),
    ("train", ["trainer.seed=-1"], "trainer.seed=-1"),
    ("train", ["trainer.device=tpu"], "trainer.device='tpu' is invalid"),
    ("train", ["trainer.precision=fp8"], "trainer.precision='fp8' is invalid: expected auto, fp32 or bf16"),
    ("train", ["trainer.label_smoothing=1.0"], "trainer.label_smoothing=1.0 is invalid: expected a number "
                                               "in [0, 1)"),
    ("train", ["trainer.eval_flip=sometimes"], "trainer.eval_flip='sometimes'"),
    ("train", ["trainer.compile=maybe"], "trainer.compile='maybe'"),
    ("train", ["trainer.test_on=worst"], "trainer.test_on='worst' is invalid: expected best or last"),
    ("train", ["data.val_size=0"], "trainer.test_on='best' is invalid with data.val_size=0: no validation"),
    ("train", ["trainer.strategy=fsdp"], "trainer.strategy='fsdp' is invalid: expected auto or ddp"),
    ("train", ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0"),
    ("train", ["trainer.ckpt_path=/no/such/last.pt"], "trainer.ckpt_path='/no/such/last.pt' is invalid"),
    # model
    ("train", ["model.depth=0"], "model.depth=0 is invalid: expected an integer >= 1"),
    ("train", ["model.width=-3"], "model.width=-3"),
    ("train", ["model.dropout=1.5"], "model.dropout=1.5 is invalid: expected a number in [0, 1)"),
    ("train", ["model=cnn", "model.layers=[2,2,2]"], "model.layers=[2, 2, 2] is invalid: expected a list "
                                                     "of 4 integers >= 1"),
    ("train", ["model=cnn", "model.layers=[2,0,2,2]"], "model.layers=[2, 0, 2, 2]"),
    ("train", ["model=cnn", "model.layers=4"], "model.layers=4"),
    ("train", ["model=cnn", "model.block=dense"], "model.block='dense' is invalid: expected basic or "
                                                  "bottleneck"),
    ("train", ["model=cnn", "model.stem_stride=0"], "model.stem_stride=0"),
    ("train", ["model=convpool", "model.widths=[]"], "model.widths=[] is invalid: expected a non-empty list"),
    # data
    ("train", ["data.batch_size=0"], "data.batch_size=0"),
    ("train", ["data.eval_batch_size=0"], "data.eval_batch_size=0"),
    ("train", ["data.val_size=-1"], "data.val_size=-1"),
    ("train", ["data.train_size=0"], "data.train_size=0 is invalid: expected null or an integer >= 1"),
    ("train", ["data.mean=[0.1,0.2]"], "data.mean=[0.1, 0.2] is invalid: expected 1 or 1 values"),
    ("train", ["data=cifar10", "data.augment.crop_padding=-1"], "data.augment.crop_padding=-1"),
    ("train", ["data=cifar10", "data.augment.flip=maybe"], "data.augment.flip='maybe'"),
    ("train", ["data=cifar10", "data.variant=cifar1000"], "data.variant='cifar1000' is invalid: expected "
                                                          "cifar10 or cifar100"),
    # optimizer and schedule
    ("train", ["optimizer.lr=0"], "optimizer.lr=0 is invalid: expected a number > 0"),
    ("train", ["optimizer.lr=-1e-3"], "optimizer.lr=-0.001"),
    ("train", ["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1"),
    ("train", ["+optimizer.betas=[0.9]"], "optimizer.betas=[0.9] is invalid: expected a list of 2 numbers"),
    ("train", ["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum=1.5"),
    ("train", ["optimizer=sgd", "optimizer.momentum=0"], "optimizer.nesterov=true is invalid"),
    ("train", ["+scheduler.interval=batch"], "scheduler.interval='batch' is invalid: expected epoch or step"),
    ("train", ["scheduler.T_max=0"], "scheduler.T_max=0"),
    ("train", ["scheduler=onecycle", "scheduler.pct_start=1.5"], "scheduler.pct_start=1.5"),
    ("train", ["scheduler=onecycle", "scheduler.anneal_strategy=cubic"], "scheduler.anneal_strategy='cubic'"),
    # logger, analysis
    ("train", ["logger=wandb", "logger.wandb.mode=sometimes"], "logger.wandb.mode='sometimes'"),
    ("train", ["logger=[wandb,tensorboard]", "logger.tensorboard.flush_secs=0"],
     "logger.tensorboard.flush_secs=0 is invalid: expected an integer >= 1"),
    ("train", ["logger=tensorboard", "+logger.tensorboard.flush_sec=5"],
     "did you mean logger.tensorboard.flush_secs?"),
    ("distill", ["logger=[tensorboard,wandb]", "+logger.tensorbord.flush_secs=5"],
     "did you mean logger.tensorboard?"),
    ("train", ["analysis.probe_size=0"], "analysis.probe_size=0"),
    # distill.py: its own keys, and teacher / student are model configs
    ("distill", ["distill.kd.temperature=0"], "distill.kd.temperature=0 is invalid: expected a number > 0"),
    ("distill", ["distill.kd.alpha=1.5"], "distill.kd.alpha=1.5 is invalid: expected a number in [0, 1]"),
    ("distill", ["distill.method=kd+foo"], "distill.method='kd+foo' is invalid: expected one of kd, fitnet"),
    ("distill", ["distill.method=kd+kd"], "distill.method='kd+kd' is invalid"),
    ("distill", ["distill.dkd.beta=-1"], "distill.dkd.beta=-1 is invalid: expected a number >= 0"),
    ("distill", ["distill.fitnet.weight=heavy"], "distill.fitnet.weight='heavy' is invalid"),
    ("distill", ["distill.teacher_epochs=0"], "distill.teacher_epochs=0 is invalid"),
    ("distill", ["distill.ce_weight=-1"], "distill.ce_weight=-1 is invalid: expected auto or a number >= 0"),
    ("distill", ["distill.feature_layers=stage2"], "distill.feature_layers='stage2' is invalid"),
    ("distill", ["distill.cache_teacher=maybe"], "distill.cache_teacher='maybe' is invalid: expected auto, "
                                                 "true or false"),
    ("distill", ["distill.teacher_ckpt=/no/such/teacher.pth"], "distill.teacher_ckpt='/no/such/teacher.pth'"),
    ("distill", ["+distill.kd.temprature=2"], "did you mean distill.kd.temperature?"),
    ("distill", ["+residul=true"], "did you mean residual?"),
    ("distill", ["teacher.depth=0"], "teacher.depth=0"),
    ("distill", ["student.activation=foo"], "student.activation='foo'"),
    ("distill", ["trainer.grad_clip=-1"], "trainer.grad_clip=-1"),
    ("distill", ["data.val_size=0"], "trainer.test_on='best' is invalid with data.val_size=0"),
    ("distill", ["paths.output_dir=/proc/x"], "paths.output_dir='/proc/x'"),
    # eval.py
    ("eval", [], "ckpt_path is missing: expected the path of an existing checkpoint file"),
    ("eval", ["ckpt_path=/no/such/best.pt"], "ckpt_path='/no/such/best.pt' is invalid"),
    ("eval", [f"ckpt_path={CKPT}", "trainer.device=tpu"], "trainer.device='tpu' is invalid"),
    ("eval", [f"ckpt_path={CKPT}", "device=cpu"], "did you mean trainer.device (its new name)?"),
    ("eval", [f"ckpt_path={CKPT}", "data.eval_batch_size=0"], "data.eval_batch_size=0"),
    ("eval", [f"ckpt_path={CKPT}", "+residul=true"], "residul=true is not a known key"),
    ("eval", [f"ckpt_path={CKPT}", "paths.output_dir=/proc/x"], "paths.output_dir='/proc/x'"),
    # explain.py
    ("explain", [], "ckpt_path is missing"),
    ("explain", [f"ckpt_path={CKPT}", "explain.method=lime"],
     "explain.method='lime' is invalid: expected cam or gradcam"),
    ("explain", [f"ckpt_path={CKPT}", "explain.target=both"], "explain.target='both' is invalid"),
    ("explain", [f"ckpt_path={CKPT}", "explain.baseline=white"], "explain.baseline='white' is invalid"),
    ("explain", [f"ckpt_path={CKPT}", "explain.steps=1"],
     "explain.steps=1 is invalid: expected an integer >= 2"),
    ("explain", [f"ckpt_path={CKPT}", "+explain.stpes=5"], "did you mean explain.steps?"),
    ("explain", [f"ckpt_path={CKPT}", "trainer.device=tpu"], "trainer.device='tpu' is invalid"),
    # a key the config lacks, without `+`: labkit's line, not Hydra's "To append ... use +" (issue 22)
    ("train", ["model.dropuot=0.1"], "model.dropuot=0.1 is not a known key: did you mean model.dropout?"),
    ("train", ["trainer.epoch=3"], "did you mean trainer.epochs?"),
    ("train", ["trainer.epochs.x=3"], "trainer.epochs.x=3: trainer.epochs holds a value, not keys"),
    ("train", ["scheduler.interval=step"], "scheduler.interval='step': the config has no scheduler.interval "
                                           "yet; add it with +scheduler.interval=step"),
    ("distill", ["distill.kd.temprature=3"],
     "distill.kd.temprature=3 is not a known key: did you mean distill.kd.temperature? the keys of"),
    ("distill", ["distill.temperature=3"], "did you mean distill.kd.temperature (its new name)?"),
    ("distill", ["distill.alpha=0.9"], "did you mean distill.kd.alpha (its new name)?"),
    ("distill", ["+distill.temperature=3"], "did you mean distill.kd.temperature (its new name)?"),
    ("distill", ["~distill.kd.temprature"], "~distill.kd.temprature is not a known key: did you mean "
                                            "distill.kd.temperature?"),
    ("distill", ["model@teacher=cnn", "teacher.widht=8"], "teacher.widht=8 is not a known key: did you "
                                                          "mean teacher.width?"),
    ("distill", ["-m", "distill.kd.temprature=3,4"], "did you mean distill.kd.temperature?"),
    ("distill", ["-m", "model@teacher=cnn,mlp", "teacher.layers=[1,1,1,1]"],  # the mlp jobs lack it
     "teacher.layers=[1, 1, 1, 1] is not a known key: the keys of teacher are _target_, input_shape"),
    ("eval", [f"ckpt_path={CKPT}", "trainer.devcie=cpu"], "did you mean trainer.device?"),
    ("explain", [f"ckpt_path={CKPT}", "explain.stpes=5"], "explain.stpes=5 is not a known key: did you "
                                                          "mean explain.steps?"),
]
assert len(CASES) >= 40


def _ids() -> list[str]:
    return [f"{entry}:{' '.join(overrides) or '(none)'}" for entry, overrides, _ in CASES]


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(b"validation only checks that the file exists")
    return path


def _args(overrides: list[str], tmp_path, ckpt) -> list[str]:
    return [o.replace(CKPT, str(ckpt)) for o in overrides] + [f"paths.log_dir={tmp_path / 'logs'}"]


def run_in_process(entry: str, args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``python <entry>.py ARGS`` inside this process: (exit status, stderr)."""
    def task_reached(*_):
        raise AssertionError("the bad value reached the task")

    monkeypatch.setattr(labkit.cli, "run_task", task_reached)  # the scripts import it when run
    monkeypatch.setattr(sys, "argv", [str(ROOT / f"{entry}.py"), *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    GlobalHydra.instance().clear()
    capsys.readouterr()
    try:
        runpy.run_path(str(ROOT / f"{entry}.py"), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


@pytest.mark.parametrize("entry,overrides,fragment", CASES, ids=_ids())
def test_bad_override_is_one_line_exit_2_and_writes_nothing(entry, overrides, fragment, tmp_path, ckpt,
                                                            monkeypatch, capsys):
    run_dir = tmp_path / "existing-run"  # a run folder that must stay as it is
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    args = [*_args(overrides, tmp_path, ckpt), f"hydra.run.dir={run_dir}"]
    code, err = run_in_process(entry, args, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert fragment in lines[0]
    assert sorted(p.name for p in run_dir.iterdir()) == ["summary.json"]


@pytest.mark.slow
@pytest.mark.parametrize("entry,overrides", [
    ("train", ["+residul=true"]),
    ("distill", ["distill.kd.alpha=1.5"]),
    ("eval", [f"ckpt_path={CKPT}", "trainer.device=tpu"]),
])
def test_a_real_subprocess_prints_the_same_line(entry, overrides, tmp_path, ckpt, monkeypatch, capsys):
    args = _args(overrides, tmp_path, ckpt)
    result = run_cli(f"{entry}.py", *args)
    code, err = run_in_process(entry, args, monkeypatch, capsys)
    assert (result.returncode, result.stderr.strip()) == (code, err.strip()) == (2, err.strip())


@pytest.mark.slow
@pytest.mark.parametrize("entry,overrides,fragment", [
    ("train", ["model.dropuot=0.1"], "did you mean model.dropout?"),
    ("distill", ["distill.temperature=3"], "did you mean distill.kd.temperature (its new name)?"),
    ("eval", [f"ckpt_path={CKPT}", "data.eval_bach_size=64"], "did you mean data.eval_batch_size?"),
    ("explain", [f"ckpt_path={CKPT}", "explain.methd=cam"], "did you mean explain.method?"),
    ("distill", ["-m", "distill.kd.temprature=2,4"], "did you mean distill.kd.temperature?"),
])
def test_a_mistyped_key_is_one_line_in_every_entry_point(entry, overrides, fragment, tmp_path, ckpt):
    """Hydra's five lines ("To append to your config use +...") become labkit's one (issue 22)."""
    result = run_cli(f"{entry}.py", *_args(overrides, tmp_path, ckpt))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr


def test_a_mistyped_key_in_a_sweep_file(tmp_path, ckpt, monkeypatch, capsys):
    """The keys a sweep file sweeps are checked in each job's composition, before any job runs."""
    (tmp_path / "extra" / "sweep").mkdir(parents=True)
    (tmp_path / "extra" / "sweep" / "typo.yaml").write_text(
        "# @package _global_\nhydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n"
        "      distill.kd.temprature: 2,4\n")
    args = ["-cd", str(tmp_path / "extra"), "sweep=typo", *_args([], tmp_path, ckpt)]
    code, err = run_in_process("distill", args, monkeypatch, capsys)
    assert code == 2 and err.strip().startswith("error: distill.kd.temprature=2 is not a known key: did you "
                                                 "mean distill.kd.temperature?"), err
    assert len(err.strip().splitlines()) == 1


def test_other_overrides_compose_as_before_and_hydra_gets_its_function_back():
    """``+`` / ``++`` appends, deletions, group choices and ``hydra.*`` keys pass; what Hydra refuses
    for other reasons it still refuses in its own words; the ``with`` leaves Hydra as it was."""
    hydra_apply = ConfigLoaderImpl.__dict__["_apply_overrides_to_config"]
    with unknown_keys_in_one_line("train"):
        cfg = compose_config(["model=cnn", "+residual=true", "++trainer.epochs=2",
                              "~model.zero_init_residual", "hydra.job.chdir=false",
                              "data.augment={crop_padding:2,flip:true}", "data.augment.flip=false"])
        assert cfg.residual and cfg.trainer.epochs == 2 and "zero_init_residual" not in cfg.model
        assert cfg.data.augment == {"crop_padding": 2, "flip": False}
        with pytest.raises(ConfigCompositionException, match="An item is already at 'trainer.epochs'"):
            compose_config(["+trainer.epochs=2"])
        with pytest.raises(SystemExit) as exit_:
            compose_config(["trainer.epoch=2"])
        assert exit_.value.code == 2
    assert ConfigLoaderImpl.__dict__["_apply_overrides_to_config"] is hydra_apply
    with pytest.raises(ConfigCompositionException, match="To append to your config use"):
        compose_config(["trainer.epoch=2"])


def test_every_entry_point_has_a_schema():
    """A new ``@hydra.main`` script gets its keys checked only once schema.py knows its config."""
    names = {m.group(1) for script in ROOT.glob("*.py")
             for m in re.finditer(r'config_name="(\w+)"', script.read_text())}
    assert names >= {"train", "distill", "eval", "explain"}
    assert names <= set(ENTRY_POINTS), names - set(ENTRY_POINTS)


def test_documented_root_switches_and_defaults_pass(cfg_factory):
    for overrides in ([], ["+residual=true"], ["+norm=true", "+residual=false"],
                      ["model=cnn", "+norm=false"]):
        validate_config(cfg_factory(*overrides), "train")


def test_a_bad_value_in_a_multirun_job_is_that_jobs_failure(cfg_factory):
    """Tasks validate too (multirun jobs never pass through the single-run callback)."""
    with pytest.raises(ConfigError, match="trainer.grad_clip=-1"):
        train(cfg_factory("trainer.grad_clip=-1", "logger=none"))


# -- a loss that ends far above where it started: diverged, not completed ------------------------
def test_divergence_compares_the_last_loss_with_the_start():
    assert divergence([{"train_loss": 2.0}, {"train_loss": 0.1}], num_classes=10) is None
    assert divergence([{"train_loss": 2.3}, {"train_loss": 2.3}], num_classes=10) is None  # not learning
    assert "ended at 2.7e+30" in divergence([{"train_loss": 1e29}, {"train_loss": 2.7e30}], num_classes=10)
    assert divergence([{"train_loss": 0.5}, {"train_loss": 6.0}]) is not None  # first epoch as the start


def test_huge_learning_rate_is_marked_diverged(cfg_factory, data_root, tmp_path, capsys):
    cfg = cfg_factory(f"data.root={data_root}", "logger=none", "optimizer.lr=1e9", "trainer.epochs=2",
                      "data.val_size=100", "model.width=32", "trainer.checkpoint=false")
    summary = train(cfg)
    assert summary["status"] == "diverged" and "lower optimizer.lr" in summary["warning"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"
    assert "diverged: the training loss ended at" in capsys.readouterr().out

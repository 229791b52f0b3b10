"""The fast path: the rules that choose precision and memory format, and that every entry point
(train, distill, eval) builds its models through them.

bf16 autocast runs on any CPU (emulated where oneDNN has no native bf16), so the tests force the
capability check either way instead of depending on this machine's processor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import labkit.engine.accel as accel
import labkit.engine.engine as engine_module
from labkit.distill import distill
from labkit.engine.accel import FastPath, apply_fast_path, cpu_has_native_bf16, plan_fast_path
from labkit.errors import ConfigError
from labkit.evaluation import evaluate_checkpoint
from labkit.models import FlexibleCNN, FlexibleMLP
from labkit.training import train

from .conftest import compose_config

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def cnn() -> FlexibleCNN:
    return FlexibleCNN(1, 10, [1, 1, 1, 1], width=4)


def mlp() -> FlexibleMLP:
    return FlexibleMLP(input_shape=(1, 8, 8), depth=2, width=8)


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU does (True) or does not (False) run bf16 natively."""

    def force(value: bool) -> None:
        monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: value)

    return force


# -- the rules -----------------------------------------------------------------------------------
@pytest.mark.parametrize("precision, make, expected", [
    ("auto", cnn, FastPath("bf16", channels_last=True)),
    ("bf16", cnn, FastPath("bf16", channels_last=True)),
    ("fp32", cnn, FastPath()),
    ("auto", mlp, FastPath()),              # bf16 measured slower for the MLP: auto keeps fp32
    ("bf16", mlp, FastPath("bf16")),        # asked for explicitly: honoured, no layout to change
    ("fp32", mlp, FastPath()),
])
def test_cpu_with_native_bf16(native_bf16, precision, make, expected):
    native_bf16(True)
    assert plan_fast_path(precision, CPU, make()) == expected


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
@pytest.mark.parametrize("make", [cnn, mlp])
def test_cpu_without_native_bf16_never_gets_bf16(native_bf16, precision, make):
    native_bf16(False)
    assert plan_fast_path(precision, CPU, make()) == FastPath()


def test_compile_and_cudnn_are_left_alone_on_the_cpu(native_bf16):
    native_bf16(True)
    plan = plan_fast_path("auto", CPU, cnn(), compile=True)
    assert not plan.compiled and not plan.cudnn_benchmark
    assert plan.describe() == "bf16_autocast, channels_last"
    assert FastPath().describe() == "off"


@pytest.mark.parametrize("bf16_gpu", [True, False])
@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
def test_cuda_rules_are_unchanged(monkeypatch, native_bf16, bf16_gpu, precision):
    """The rules the CUDA path had before the CPU fast path, whatever the CPU can do."""
    native_bf16(True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    bf16 = precision != "fp32" and bf16_gpu
    assert plan_fast_path(precision, CUDA, cnn(), compile=True) == FastPath(
        "bf16" if bf16 else "fp32", channels_last=True, cudnn_benchmark=True, compiled=True)
    assert plan_fast_path(precision, CUDA, mlp(), deterministic=True) == FastPath(
        "bf16" if bf16 else "fp32")


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="trainer.precision='fp16'"):
        plan_fast_path("fp16", CPU, cnn())


@pytest.mark.parametrize("flags, expected", [((False, False), False), ((True, False), True),
                                             ((False, True), True)])
def test_native_bf16_detection_reads_torchs_cpu_flags(monkeypatch, flags, expected):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setattr(accel.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: flags[0], raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: flags[1], raising=False)
    assert cpu_has_native_bf16() is expected
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert cpu_has_native_bf16() is False


def test_applied_fast_path_keeps_the_model_and_autocast_switches_off_inside(native_bf16):
    native_bf16(True)
    model = cnn().eval()
    x = torch.randn(4, 1, 28, 28)
    before = model(x)
    plan = plan_fast_path("auto", CPU, model)
    apply_fast_path(model, plan)
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(model(x), before, atol=1e-5)  # layout only: same function in fp32
    with accel.autocast(CPU, "bf16"):
        assert model(x).dtype == torch.bfloat16
        with accel.autocast(CPU, "fp32"):  # e.g. an fp32 teacher inside a bf16 student step
            assert model(x).dtype == torch.float32


# -- every entry point builds its models through the fast path ---------------------------------
@pytest.fixture
def engines(monkeypatch):
    """Record (precision, channels_last weights) of every Engine an entry point builds."""
    built: list[tuple[str, bool]] = []
    real_init = engine_module.Engine.__init__

    def recording(self, model: nn.Module, *args, **kwargs):
        real_init(self, model, *args, **kwargs)
        convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
        built.append((self.precision, bool(convs) and all(
            w.is_contiguous(memory_format=torch.channels_last) for w in convs)))

    monkeypatch.setattr(engine_module.Engine, "__init__", recording)
    return built


CNN = ["model=cnn", "model.layers=[1,1,1,1]", "model.width=4", "model.stem_stride=2"]
COMMON = ["data.val_size=100", "data.batch_size=64", "trainer.epochs=1", "logger=none", "trainer.device=cpu"]


@pytest.mark.parametrize("precision, expected", [("auto", ("bf16", True)), ("fp32", ("fp32", False))])
def test_train_distill_and_eval_run_the_fast_path_the_config_asks_for(
        native_bf16, engines, data_root, tmp_path, precision, expected):
    native_bf16(True)
    fields = {"precision": expected[0], "fast_path": "bf16_autocast, channels_last" if expected[1] else "off"}
    common = [*COMMON, f"data.root={data_root}", f"trainer.precision={precision}"]

    run = tmp_path / "train"
    summary = train(compose_config([*CNN, *common, f"paths.log_dir={tmp_path}"], run))
    assert {k: summary[k] for k in fields} == fields
    assert engines == [expected]

    stages = ("teacher", "student_baseline", "student_distill")
    roles = [f"{k.replace('model.', role + '.')}" for role in ("teacher", "student") for k in CNN[1:]]
    distill(compose_config(["model@teacher=cnn", "model@student=cnn", *roles, *common,
                            f"paths.log_dir={tmp_path}"], tmp_path / "distill", config_name="distill"))
    for stage in stages:
        saved = json.loads((tmp_path / "distill" / stage / "summary.json").read_text())
        assert {k: saved[k] for k in fields} == fields, stage
    assert engines == [expected] * 4

    out = tmp_path / "eval"
    result = evaluate_checkpoint(compose_config(
        [f"ckpt_path={Path(run) / 'checkpoints' / 'best.pt'}"], out,
        config_name="eval"))
    assert {k: result[k] for k in fields} == fields
    assert result["test_acc"] == pytest.approx(summary["test_acc"])  # same precision, same numbers
    assert engines == [expected] * 5

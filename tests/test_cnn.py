"""FlexibleCNN and its blocks, the CNN configs, the CUDA settings being no-ops on the CPU, and a
short CNN training run."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from labkit.config.validate import validate_config
from labkit.models import BasicBlock, Bottleneck, FlexibleCNN, count_parameters, describe_model
from labkit.training import train

from .conftest import run_cli, write_cifar_folder

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # see one_thread below


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from a second thread, and on a loaded 2-core machine
    OpenMP threads waiting on each other make them several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the model -----------------------------------------------------------------------------------
CASES = [(block, residual) for block in ("basic", "bottleneck") for residual in (True, False)]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("block,residual", CASES)
def test_shapes_and_flat_block_list(block, residual, shape):
    model = FlexibleCNN(shape[0], 7, [1, 2, 1, 1], block=block, width=4, residual=residual)
    x = torch.randn(3, *shape)
    assert model(x).shape == (3, 7)
    features = model.forward_features(x)
    expansion = 4 if block == "bottleneck" else 1
    assert features.shape == (3, 32 * expansion, 4, 4)  # 28-14-7-4 and 32-16-8-4 pixels
    assert model.num_features == 32 * expansion
    assert model.forward_head(features, pre_logits=True).shape == (3, 32 * expansion)
    assert torch.allclose(model.forward_head(features), model(x))
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == 5
    assert model.stage_of_block == [0, 1, 1, 2, 3]
    assert all(b.residual is residual for b in model.blocks)
    assert describe_model(model)["skip_connections"] == (5 if residual else 0)


# The 1x1 projection shortcuts (conv + BatchNorm) are the only parameters a plain network lacks:
# basic, width 4: 4->8, 8->16, 16->32;  bottleneck, width 4: 4->16, 16->32, 32->64, 64->128.
PROJECTION_PARAMS = {
    "basic": (4 * 8 + 16) + (8 * 16 + 32) + (16 * 32 + 64),
    "bottleneck": (4 * 16 + 32) + (16 * 32 + 64) + (32 * 64 + 128) + (64 * 128 + 256),
}


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_plain_network_lacks_exactly_the_shortcuts(block):
    with_skips = FlexibleCNN(3, 10, [1, 1, 1, 1], block=block, width=4, residual=True)
    plain = FlexibleCNN(3, 10, [1, 1, 1, 1], block=block, width=4, residual=False)
    assert count_parameters(with_skips) - count_parameters(plain) == PROJECTION_PARAMS[block]
    assert all(b.shortcut is None for b in plain.blocks)


@pytest.mark.parametrize("layers,block,params", [
    ([2, 2, 2, 2], "basic", 11_173_962),       # the usual CIFAR ResNet-18
    ([3, 4, 6, 3], "basic", 21_282_122),       # ResNet-34 (the lab's teacher)
    ([1, 1, 1, 1], "basic", 4_903_242),        # the lab's student
    ([3, 4, 6, 3], "bottleneck", 23_520_842),  # ResNet-50
])
def test_parameter_counts_of_standard_networks(layers, block, params):
    assert count_parameters(FlexibleCNN(3, 10, layers, block=block, width=64)) == params


@pytest.mark.parametrize("block_cls,in_channels", [(BasicBlock, 4), (Bottleneck, 16)])
@pytest.mark.parametrize("residual", [True, False])
def test_skip_is_really_there_or_really_absent(block_cls, in_channels, residual):
    """With the branch silenced (last norm scale and shift zero), a residual block passes
    ``relu(x)`` through and a plain block outputs zeros."""
    block = block_cls(in_channels, 4, stride=1, residual=residual, norm=True)
    last_norm = [m for m in block.branch if isinstance(m, nn.BatchNorm2d)][-1]
    nn.init.zeros_(last_norm.weight), nn.init.zeros_(last_norm.bias)
    x = torch.randn(2, in_channels, 6, 6, requires_grad=True)
    out = block(x)
    expected = torch.relu(x) if residual else torch.zeros_like(x)
    assert torch.allclose(out, expected)
    out.sum().backward()
    assert bool(x.grad.abs().sum() > 0) is residual  # only a skip carries the gradient past the branch


def test_norm_switch_and_zero_init():
    assert describe_model(FlexibleCNN(1, 10, [1, 1, 1, 1], width=4))["norm_layers"] == 12
    bare = FlexibleCNN(1, 10, [1, 1, 1, 1], width=4, norm=False)
    assert describe_model(bare)["norm_layers"] == 0
    assert all(m.bias is not None for m in bare.modules() if isinstance(m, nn.Conv2d))
    zeroed = FlexibleCNN(1, 10, [1, 1, 1, 1], width=4, zero_init_residual=True)
    for b in zeroed.blocks:
        assert torch.count_nonzero(b.branch[-1].weight) == 0


@pytest.mark.parametrize("layers", [[2, 2, 2], [2, 0, 2, 2], [1, 1, 1, 1, 1]])
def test_model_rejects_bad_layers(layers):
    with pytest.raises(ValueError, match="4 positive"):
        FlexibleCNN(layers=layers)


# -- configs -----------------------------------------------------------------------------------
def test_issue_command_composes_to_a_cifar_resnet18(cfg_factory):
    cfg = cfg_factory("model=cnn", "data=cifar10", "model.layers=[2,2,2,2]", "model.residual=true",
                      "model.norm=true")
    validate_config(cfg)
    model = instantiate(cfg.model)
    assert model.stem[0].in_channels == 3 and model.head.out_features == 10
    assert count_parameters(model) == 11_173_962
    grey = instantiate(cfg_factory("model=cnn", "data=fashion_mnist").model)
    assert grey.stem[0].in_channels == 1


@pytest.mark.parametrize("option,data,params,skips", [
    ("resnet_teacher", "cifar10", 21_282_122, 16),
    ("resnet_student", "cifar10", 4_903_242, 4),
    ("resnet_student", "cifar100", 4_903_242 + 90 * 513, 4),
])
def test_teacher_and_student_configs(cfg_factory, option, data, params, skips):
    info = describe_model(instantiate(cfg_factory(f"model={option}", f"data={data}").model))
    assert (info["params"], info["skip_connections"]) == (params, skips)


def test_residual_switch_reaches_the_cnn(cfg_factory):
    plain = instantiate(cfg_factory("model=cnn", "+residual=false", "model.width=4").model)
    assert describe_model(plain)["skip_connections"] == 0
    assert describe_model(instantiate(cfg_factory("model=cnn", "model.width=4").model))[
        "skip_connections"] == 8


# -- fast-path settings (rules and entry points: test_fast_path.py) ------------------------------
def test_defaults_ask_for_auto_precision_without_compile(cfg_factory):
    cfg = cfg_factory()
    assert cfg.trainer.precision == "auto" and cfg.trainer.compile is False


# -- training ------------------------------------------------------------------------------------
def test_short_cnn_training_on_generated_data(cfg_factory, tmp_path):
    cfg = cfg_factory(
        "model=cnn", "model.layers=[1,1,1,1]", "model.width=8", "data=synthetic", "data.n_train=1200",
        "data.n_test=300", "data.val_size=200", "data.in_channels=1", "data.image_size=16",
        "data.batch_size=32", "data.augment={crop_padding:2,flip:true}", "trainer.epochs=2", "logger=none",
        f"paths.log_dir={tmp_path}", "optimizer.lr=3e-3",
    )
    summary = train(cfg)
    assert summary["test_acc"] > 0.9, summary
    assert summary["skip_connections"] == 4 and summary["model"] == "FlexibleCNN"
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["test_acc"] == summary["test_acc"]


@pytest.mark.slow
def test_issue_cnn_cifar_command_runs(tmp_path):
    write_cifar_folder(tmp_path / "data", per_batch=12, n_test=20)
    result = run_cli(
        "train.py", "model=cnn", "data=cifar10", "model.layers=[2,2,2,2]", "model.residual=true",
        "model.norm=true", "model.width=4", f"data.root={tmp_path / 'data'}", "data.val_size=10",
        "trainer.epochs=1", "logger=none", f"paths.log_dir={tmp_path / 'logs'}", env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skip_connections"] == 8 and summary["train_size"] == 50

"""FlexibleMLP: shapes, block structure, skips, normalisation, parameter count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.models import FlexibleMLP, MLPBlock, count_parameters, describe_model


@pytest.mark.parametrize("depth", [1, 2, 7])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", [False, True])
def test_shapes_and_structure(depth, residual, norm):
    model = FlexibleMLP(input_shape=(1, 28, 28), num_classes=10, depth=depth, width=32,
                        residual=residual, norm=norm)
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    assert len(model.blocks) == depth
    info = describe_model(model)
    assert info["skip_connections"] == (depth - 1 if residual else 0)
    assert info["norm_layers"] == (depth if norm else 0)
    assert not model.blocks[0].residual  # the input block changes width: no skip


def test_parameter_count_formula():
    model = FlexibleMLP(input_shape=(1, 28, 28), num_classes=10, depth=3, width=64)
    expected = (784 * 64 + 64) + 2 * (64 * 64 + 64) + (64 * 10 + 10)
    assert count_parameters(model) == expected == describe_model(model)["params"]


def test_residual_block_adds_its_input():
    torch.manual_seed(0)
    block = MLPBlock(16, 16, residual=True)
    plain = MLPBlock(16, 16, residual=False)
    plain.load_state_dict(block.state_dict())
    x = torch.randn(3, 16)
    assert torch.allclose(block(x), x + plain(x))


def test_norm_layer_choice():
    model = FlexibleMLP(depth=2, width=8, norm=True, norm_type="layer")
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 2
    with pytest.raises(ValueError, match="norm_type"):
        FlexibleMLP(depth=2, width=8, norm=True, norm_type="group")


def test_invalid_depth_rejected():
    with pytest.raises(ValueError, match="depth"):
        FlexibleMLP(depth=0)


def test_module_repr_shows_residual():
    assert "residual=True" in repr(FlexibleMLP(depth=3, width=4, residual=True))


def test_convpool_net_shares_the_cnn_interface():
    from labkit.models import ConvPoolNet

    model = ConvPoolNet(3, 10, widths=[8, 16, 16], stem_width=4).eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, 16, 4, 4)  # each group halves 32 -> 16 -> 8 -> 4
    assert len(model.blocks) == 3 and model.num_features == 16
    assert torch.allclose(model(x), model.head(features.mean((2, 3))), atol=1e-6)
    assert describe_model(model)["skip_connections"] == 0
    with pytest.raises(ValueError, match="widths"):
        ConvPoolNet(widths=[])

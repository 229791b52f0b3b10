"""optimizer=muon: torch's Muon on the hidden matrices plus an auxiliary optimizer, one schedule,
one checkpoint (labkit/engine/muon.py)."""

from __future__ import annotations

import copy
import functools
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from labkit.config.choices import MUON_ADJUST_LR
from labkit.config.validate import validate_config
from labkit.engine import load_checkpoint
from labkit.engine.muon import MuonWithAuxiliary, matrix_alias, muon, split_parameters
from labkit.errors import ConfigError
from labkit.models import FlexibleCNN, FlexibleMLP
from labkit.run import build_optimization

from .conftest import run_cli
from .test_reliability import final, run_with_fault

ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0)
MUON = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, adjust_lr_fn="original", ns_steps=5)


def make(model: nn.Module, aux=ADAMW, **changes) -> MuonWithAuxiliary:
    return muon(list(model.parameters()), **{**MUON, **changes}, aux=aux)


def tiny_cnn(channels_last: bool = False) -> FlexibleCNN:
    torch.manual_seed(0)
    model = FlexibleCNN(1, 10, [1, 1, 1, 1], width=4, stem_stride=2)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 1, 28, 28, generator=generator)
        y = torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def ids(tensors) -> set[int]:
    return {id(t) for t in tensors}


# --- the partition rule ------------------------------------------------------------------------
def test_cnn_partition_first_and_last_matrices_and_vectors_to_aux():
    model = tiny_cnn()
    hidden, rest = split_parameters(model.parameters())
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    assert matrices[0] is model.stem[0].weight and matrices[-1] is model.head.weight
    assert ids(hidden) == ids(matrices[1:-1]) and all(p.ndim == 4 for p in hidden)
    assert ids(rest) == ids([model.stem[0].weight, model.head.weight,
                             *(p for p in model.parameters() if p.ndim < 2)])
    optimizer = make(model)
    muon_group, aux_group = optimizer.param_groups
    assert [a.data_ptr() for a in muon_group["params"]] == [p.data_ptr() for p in hidden]
    assert all(a.ndim == 2 for a in muon_group["params"])
    assert ids(aux_group["params"]) == ids(rest)


def test_mlp_partition_and_a_model_without_hidden_matrices(caplog):
    model = FlexibleMLP(depth=3, width=8, norm=True)
    optimizer = make(model)
    blocks = model.blocks
    assert ids(optimizer.param_groups[0]["params"]) == ids([blocks[1].linear.weight, blocks[2].linear.weight])
    assert id(blocks[0].linear.weight) in ids(optimizer.param_groups[1]["params"])
    assert id(model.head.weight) in ids(optimizer.param_groups[1]["params"])
    one_block = FlexibleMLP(depth=1, width=8)  # input layer and classifier only: nothing for Muon
    optimizer = make(one_block)
    assert list(optimizer.optimizers) == ["aux"] and "no hidden weight matrix" in caplog.text
    train_steps(one_block, optimizer, 1)


# --- the 2-D alias of a conv filter ------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_a_muon_step_on_the_alias_is_torch_muon_on_a_2d_copy(channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    weight = nn.Parameter(torch.randn(6, 4, 3, 3).contiguous(memory_format=fmt))
    flat = matrix_alias(weight)
    assert flat.channels_last == channels_last and flat.alias.data_ptr() == weight.data_ptr()
    # the copy in the weight's storage order is what Muon computes on; the plain row-major copy
    # differs from it by a column permutation, which orthogonalisation commutes with
    order = (lambda t: t.permute(0, 2, 3, 1)) if channels_last else (lambda t: t)
    stored = nn.Parameter(order(weight.detach()).reshape(6, -1).clone())
    row_major = nn.Parameter(weight.detach().reshape(6, -1).clone())
    optimizers = [torch.optim.Muon([p], **MUON) for p in (flat.alias, stored, row_major)]
    for _ in range(3):
        grad = torch.randn(6, 4, 3, 3).contiguous(memory_format=fmt)  # the param's layout (autograd)
        weight.grad, stored.grad, row_major.grad = grad, order(grad).reshape(6, -1), grad.reshape(6, -1)
        flat.point_grad()
        for optimizer in optimizers:
            optimizer.step()
    assert weight.stride() == grad.stride()  # updated in place, layout kept
    assert torch.equal(order(weight.detach()).reshape(6, -1), stored.detach())
    torch.testing.assert_close(weight.detach().reshape(6, -1), row_major.detach())


def test_a_weight_moved_after_building_is_refused():
    model = tiny_cnn()
    optimizer = make(model)
    model.to(memory_format=torch.channels_last)  # replaces the weights' storage
    with pytest.raises(RuntimeError, match="no longer shares storage"):
        train_steps(model, optimizer, 1)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_clears_the_conv_weights_too(set_to_none):
    model = tiny_cnn(channels_last=True)
    optimizer = make(model)
    train_steps(model, optimizer, 1)
    nn.functional.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([0, 1])).backward()
    optimizer.zero_grad(set_to_none=set_to_none)
    grads = [p.grad for p in model.parameters()]
    assert all(g is None for g in grads) if set_to_none else all(not g.any() for g in grads)
    assert all(a.grad is None for a in optimizer.param_groups[0]["params"])


def test_every_step_moves_the_conv_weights_and_the_rest():
    model = tiny_cnn(channels_last=True)
    before = [p.detach().clone() for p in model.parameters()]
    train_steps(model, make(model), 2)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)
               if p.ndim > 1)


def test_a_step_reads_no_tensor_value(monkeypatch):
    """No host sync in step(): no ``.item()``, ``float()``, ``bool()`` on a tensor (on CUDA such a read
    waits for the GPU; the CUDA test below checks it with torch's sync debug mode)."""
    model = tiny_cnn(channels_last=True)
    optimizer = muon(list(model.parameters()), **MUON, aux=ADAMW, fused=True)  # fused: no step.item()
    train_steps(model, optimizer, 1)
    nn.functional.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([0, 1])).backward()

    def read(*_):
        raise AssertionError("step() read a tensor value")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, read)
    optimizer.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_a_step_never_synchronises():
    model = tiny_cnn(channels_last=True).cuda()
    optimizer = muon(list(model.parameters()), **MUON, aux=ADAMW, fused=True)
    x, y = torch.randn(8, 1, 28, 28, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        torch.cuda.set_sync_debug_mode("error")
        try:
            optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


# --- one schedule, two optimizers --------------------------------------------------------------
def muon_cfg(cfg_factory, *overrides: str):
    return cfg_factory("optimizer=muon", "model=cnn", "model.layers=[1,1,1,1]", "model.width=4",
                       "trainer.epochs=1", *overrides)


def test_one_cycle_peaks_each_group_at_its_own_lr(cfg_factory):
    cfg = muon_cfg(cfg_factory, "scheduler=onecycle")
    validate_config(cfg.copy())
    optimizer, scheduler = build_optimization(cfg, tiny_cnn(), steps_per_epoch=20)
    muon_group, aux_group = (opt.param_groups[0] for opt in optimizer.optimizers.values())
    assert optimizer.param_groups[0] is muon_group and optimizer.param_groups[1] is aux_group
    assert (muon_group["lr"], aux_group["lr"]) == pytest.approx((0.02 / 10, 1e-3 / 10))  # div_factor
    for _ in range(4):  # OneCycleLR peaks at step pct_start x total_steps - 1 = 0.25 x 20 - 1
        optimizer.step()
        scheduler.step()
    assert (muon_group["lr"], aux_group["lr"]) == pytest.approx((0.02, 1e-3))
    cfg = muon_cfg(cfg_factory, "scheduler=onecycle", "scheduler.max_lr=0.1")  # a number: one peak
    optimizer, _ = build_optimization(cfg, tiny_cnn(), steps_per_epoch=20)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.01])


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_a_per_epoch_schedule_moves_both_lrs(cfg_factory, schedule):
    cfg = muon_cfg(cfg_factory, f"scheduler={schedule}", "trainer.epochs=10",
                   "scheduler.step_size=1" if schedule == "step" else "scheduler.T_max=10")
    optimizer, scheduler = build_optimization(cfg, tiny_cnn())
    inner = [opt.param_groups[0] for opt in optimizer.optimizers.values()]
    start = [g["lr"] for g in inner]
    optimizer.step()
    scheduler.step()
    assert all(g["lr"] < lr for g, lr in zip(inner, start, strict=True))
    assert inner[0]["lr"] / start[0] == pytest.approx(inner[1]["lr"] / start[1])


def test_config_checks_adjust_lr_fn_and_the_aux_node(cfg_factory):
    assert MUON_ADJUST_LR == ("original", "match_rms_adamw", "spectral_unclamped")
    for name in MUON_ADJUST_LR:  # the names torch's Muon implements
        torch.optim.Muon([nn.Parameter(torch.ones(2, 2))], adjust_lr_fn=name)
    validate_config(muon_cfg(cfg_factory, "optimizer.adjust_lr_fn=null").copy())
    for override, key in (("optimizer.adjust_lr_fn=rms", "optimizer.adjust_lr_fn='rms'"),
                          ("optimizer.aux.lr=-1", "optimizer.aux.lr=-1"),
                          ("optimizer.aux._target_=torch.optim.Rprop", "optimizer.aux._target_")):
        with pytest.raises(ConfigError, match=key):
            validate_config(muon_cfg(cfg_factory, override).copy())
    with pytest.raises(ValueError, match="adjust_lr_fn='rms'"):
        make(tiny_cnn(), adjust_lr_fn="rms")


def test_fused_reaches_the_auxiliary_optimizer(cfg_factory):
    optimizer, _ = build_optimization(muon_cfg(cfg_factory), tiny_cnn())  # trainer.fused_optimizer=true
    assert isinstance(optimizer.optimizers["aux"], torch.optim.AdamW)
    assert optimizer.optimizers["aux"].param_groups[0]["fused"] is True


# --- one checkpoint ----------------------------------------------------------------------------
def test_state_dict_round_trip_gives_the_same_next_step_bit_for_bit():
    model = tiny_cnn(channels_last=True)
    optimizer = make(model)
    train_steps(model, optimizer, 3)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    twin = copy.deepcopy(model)
    fresh = make(twin)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert fresh.param_groups[0] is fresh.optimizers["muon"].param_groups[0]  # a schedule still drives it
    assert fresh.param_groups[1] is fresh.optimizers["aux"].param_groups[0]
    train_steps(model, optimizer, 2, seed=7)
    train_steps(twin, fresh, 2, seed=7)
    for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_state_dict_of_another_layout_is_refused():
    model = tiny_cnn()
    optimizer = make(model)
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=r"not a state dict of this Muon \+ auxiliary optimizer: it has "
                                         r"\['param_groups', 'state'\], expected the keys \['aux', 'muon'\]"):
        optimizer.load_state_dict(adam.state_dict())
    wider = FlexibleCNN(1, 10, [2, 1, 1, 1], width=4)  # one more block: more hidden matrices
    with pytest.raises(ValueError, match="the 'muon' part of the optimizer state does not fit"):
        optimizer.load_state_dict(make(wider).state_dict())
    with pytest.raises(ValueError, match="expected the keys"):
        optimizer.load_state_dict(make(FlexibleMLP(depth=1, width=8)).state_dict())


# --- train.py end to end -----------------------------------------------------------------------
@pytest.mark.slow
def test_train_py_muon_and_ema_resumed_after_a_signal_equal_an_uninterrupted_run(data_root, tmp_path):
    """A tiny CNN (channels_last where the fast path picks it) with optimizer=muon, one-cycle and
    trainer.ema, stopped by SIGTERM mid-epoch and resumed: the same weights, weight average and
    metrics as a run that was never stopped (Muon's momentum, AdamW's moments, both lrs and the
    average come back from the checkpoint). One test for both options: each train.py costs seconds."""
    def args(run_dir: Path, *more: str) -> list[str]:
        return [f"data.root={data_root}", "data.val_size=100", "data.train_size=320", "data.batch_size=32",
                "trainer.epochs=3", "trainer.deterministic=true", "logger=none", f"hydra.run.dir={run_dir}",
                "optimizer=muon", "scheduler=onecycle", "model=cnn", "model.layers=[1,1,1,1]",
                "model.width=4", "model.stem_stride=2", "trainer.ema.decay=0.9", "trainer.ema.every=2",
                "trainer.test_on=last", *more]

    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    first = run_cli("train.py", *args(reference))
    assert first.returncode == 0, first.stderr
    stopped = run_with_fault("TERM", 2, 5, args(run_dir))
    assert stopped.returncode == 143, stopped.stderr
    resumed = run_cli("train.py", *args(run_dir, "trainer.resume=true"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    (done, rows), (expected, expected_rows) = final(run_dir), final(reference)
    assert done["status"] == expected["status"] == "completed"
    for key in ("test_acc", "test_loss", "best_val_acc", "final_train_loss"):
        assert done[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    for row, want in zip(rows, expected_rows, strict=True):
        keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")  # lr: the epoch's first
        assert [row[k] for k in keys] == pytest.approx([want[k] for k in keys], rel=1e-6, abs=1e-9)
    states = [load_checkpoint(d / "checkpoints" / "last.pt") for d in (run_dir, reference)]
    for weights in (lambda s: s["model"], lambda s: s["ema"]["weights"]):
        mine, theirs = weights(states[0]), weights(states[1])
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert states[0]["ema"]["step"] == states[1]["ema"]["step"] > 0

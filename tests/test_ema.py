"""trainer.ema (issue 24): an exponential moving average of the weights on torch's swa_utils.

The average is checked against an independent transcription of the EMA recurrence; the engine
must validate, keep as best, checkpoint and test the averaged weights; a resume must restore the
average bit for bit (here at an epoch's end; through a SIGTERM mid-epoch, with optimizer=muon, in
tests/test_muon.py); eval.py and a teacher checkpoint read the averaged weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from labkit.data import TensorLoader
from labkit.engine import Engine, load_checkpoint
from labkit.engine.checkpoint import evaluated_weights
from labkit.engine.ema import WeightAverage
from labkit.models import FlexibleCNN, FlexibleMLP
from labkit.run_folder import load_model_state


def _nudge(model: nn.Module, step: int) -> None:
    """A stand-in for an optimizer step: every parameter and float buffer moves by a known amount."""
    with torch.no_grad():
        for i, tensor in enumerate([*model.parameters(), *model.buffers()]):
            if tensor.is_floating_point():
                tensor.add_(0.1 * (i + 1) * (step + 1))


def test_average_follows_the_ema_recurrence_with_start_and_every():
    torch.manual_seed(0)
    model = FlexibleCNN(layers=[1, 1, 1, 1], width=4, in_channels=1, num_classes=3, norm=True)
    average = WeightAverage(model, decay=0.9, start_step=2, every=3)
    expected: dict[str, torch.Tensor] | None = None
    for step in range(1, 12):
        _nudge(model, step)
        average.update(model)
        current = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        if step > 2 and (step - 3) % 3 == 0:  # updates at steps 3, 6, 9
            # W_ema <- decay * W_ema + (1 - decay) * W, the first update copying W
            expected = current if expected is None else {
                k: 0.9 * expected[k] + 0.1 * current[k] for k in current}
    assert average.step == 11 and int(average.averaged.n_averaged) == 3
    averaged = average.module.state_dict()
    for key, value in expected.items():  # BatchNorm running statistics are averaged too
        torch.testing.assert_close(averaged[key], value, rtol=1e-6, atol=1e-6)
    assert any("running_mean" in key for key in expected)


def test_before_the_first_update_the_model_itself_is_evaluated():
    model = FlexibleMLP(depth=1, width=4)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1),
                    ema={"decay": 0.99, "start_step": 5, "every": 1})
    assert engine.eval_model is engine.model
    for step in range(6):
        _nudge(model, step)
        engine.ema.update(model)
    assert engine.eval_model is engine.ema.module


def _loader(seed: int = 0, n: int = 96) -> TensorLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 10, (n,), generator=generator)
    return TensorLoader(images, targets, 16, [0.5], [0.25], shuffle=True,
                        generator=torch.Generator().manual_seed(seed))


def _engine(tmp_path: Path | None, epochs: int = 2) -> Engine:
    torch.manual_seed(0)
    model = FlexibleMLP(depth=2, width=16)
    return Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=epochs,
                  checkpoint_dir=tmp_path, ema={"decay": 0.8, "start_step": 0, "every": 1})


def test_validation_best_weights_checkpoint_and_test_use_the_average(tmp_path):
    engine = _engine(tmp_path)
    source = _loader(1, 48)
    val = TensorLoader(source.images, source.targets, 16, [0.5], [0.25])
    engine.fit(_loader(), val)
    averaged = {k: v.clone() for k, v in engine.ema.module.state_dict().items()}
    trained = {k: v.clone() for k, v in engine.model.state_dict().items()}
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged)
    # validation read the average
    assert engine.history[-1]["val_acc"] == engine.evaluate(val, engine.ema.module)["acc"]
    # last.pt keeps the trained weights (to resume) and the average (to evaluate)
    state = load_checkpoint(tmp_path / "last.pt")
    assert all(torch.equal(state["model"][k], trained[k]) for k in trained)
    assert all(torch.equal(evaluated_weights(state)[k], averaged[k]) for k in averaged)
    assert all(torch.equal(load_model_state(tmp_path / "last.pt")[k], averaged[k]) for k in averaged)
    # the best epoch's weights are the average's at that epoch
    best = load_checkpoint(tmp_path / "best.pt")
    assert all(torch.equal(engine.best_state[k], evaluated_weights(best)[k]) for k in averaged)
    # the test (and a saved stage) get the average: test_on=last puts it into the model
    engine.keep_weights("last")
    assert engine.ema is None
    assert all(torch.equal(engine.model.state_dict()[k], averaged[k]) for k in averaged)


def test_resume_restores_the_average_bit_for_bit(tmp_path):
    whole = _engine(tmp_path / "whole", epochs=3)
    whole.fit(_loader(), None)
    first = _engine(tmp_path / "split", epochs=3)
    first.epochs = 1
    first.fit(_loader(), None)
    resumed = _engine(None, epochs=3)
    resumed.load_state_dict(load_checkpoint(tmp_path / "split" / "last.pt"))
    assert resumed.ema.step == first.ema.step
    resumed.fit(_loader(), None)
    for key, value in whole.ema.module.state_dict().items():
        assert torch.equal(resumed.ema.module.state_dict()[key], value), key


def test_a_checkpoint_with_the_average_off_is_refused(tmp_path):
    model = FlexibleMLP(depth=2, width=16)
    state = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1)).state_dict()
    with pytest.raises(Exception, match="trainer.ema off and this run has it on"):
        _engine(None).load_state_dict(state)

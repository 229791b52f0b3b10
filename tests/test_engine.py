"""The engine: learns a learnable problem, evaluates correctly, writes checkpoints atomically."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labkit.data import MNISTFamily, TensorLoader
from labkit.engine import Engine, load_checkpoint, save_checkpoint
from labkit.engine.checkpoint import CHECKPOINT_FORMAT
from labkit.models import FlexibleMLP


def test_short_training_reaches_high_accuracy(data_root, tmp_path):
    torch.manual_seed(0)
    data = MNISTFamily(root=data_root, val_size=100, batch_size=32)
    data.setup()
    model = FlexibleMLP(depth=2, width=64)
    engine = Engine(model, torch.optim.Adam(model.parameters(), lr=1e-3), epochs=3,
                    checkpoint_dir=tmp_path / "ckpt")
    history = engine.fit(data.loader("train", torch.Generator().manual_seed(0)),
                         data.loader("val"))
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert engine.evaluate(data.loader("test"))["acc"] >= 0.95
    assert (tmp_path / "ckpt" / "last.pt").is_file() and (tmp_path / "ckpt" / "best.pt").is_file()
    state = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert state["epoch"] == 3 and len(state["history"]) == 3


def test_evaluate_matches_direct_computation():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (37, 1, 28, 28), dtype=torch.uint8)
    targets = torch.randint(0, 10, (37,))
    model = FlexibleMLP(depth=2, width=16)
    loader = TensorLoader(images, targets, 8, [0.5], [0.25])
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1))
    result = engine.evaluate(loader)
    with torch.no_grad():
        logits = model((images.float() / 255 - 0.5) / 0.25)
    assert abs(result["loss"] - F.cross_entropy(logits, targets).item()) < 1e-5
    assert round(result["acc"] * 37) == int((logits.argmax(1) == targets).sum())


def test_best_weights_are_restored_for_testing():
    torch.manual_seed(0)
    model = FlexibleMLP(depth=1, width=4)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1))
    engine.epoch = 1
    engine._track_best({"val_acc": 0.9, "train_acc": 0.0})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert not engine._track_best({"val_acc": 0.5, "train_acc": 0.0})
    engine.keep_weights("best")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": 1}, path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint survives
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


# -- training options every run can use ----------------------------------------------------------
def tiny_loader(n: int = 64, batch: int = 16) -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    return TensorLoader(images, torch.randint(0, 10, (n,), generator=g), batch, [0.5], [0.25])


def test_label_smoothing_criterion_matches_its_definition():
    from labkit.data.loader import Batch
    from labkit.engine.engine import SmoothedCrossEntropy

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])
    eps = 0.2
    smoothed = torch.full((6, 5), eps / 5).scatter_add_(1, targets[:, None], torch.full((6, 1), 1 - eps))
    expected = -(smoothed * F.log_softmax(logits, 1)).sum(1).mean()
    got = SmoothedCrossEntropy(eps)(logits, Batch(logits, targets, torch.arange(6)))
    assert torch.allclose(got, expected)


def test_eval_flip_averages_each_image_with_its_mirror():
    torch.manual_seed(0)
    model = FlexibleMLP(input_shape=(1, 8, 8), depth=1, width=16)
    loader = tiny_loader()
    flipped = Engine(model, None, eval_flip=True).evaluate(loader)
    x = (loader.images.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        logits = (model(x) + model(x.flip(-1))) / 2
    assert flipped["loss"] == pytest.approx(F.cross_entropy(logits, loader.targets).item(), rel=1e-5)
    assert flipped["loss"] != pytest.approx(Engine(model, None).evaluate(loader)["loss"], rel=1e-5)


def test_eval_translate_adds_two_shifted_mirrored_views_at_half_weight():
    torch.manual_seed(0)
    model = FlexibleMLP(input_shape=(1, 8, 8), depth=1, width=16)
    loader = tiny_loader()
    x = (loader.images.float() / 255 - 0.5) / 0.25

    def mirrored(v):
        return (model(v) + model(v.flip(-1))) / 2

    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    with torch.no_grad():
        expected = mirrored(x) / 2 + (mirrored(padded[..., :8, :8]) + mirrored(padded[..., 2:, 2:])) / 4
        got = Engine(model, None, eval_flip=True, eval_translate=1).logits(model, x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, Engine(model, None, eval_flip=True).logits(model, x), atol=1e-3)
    with pytest.raises(ValueError, match=">= 0 pixels"):
        Engine(model, None, eval_translate=-1)


def test_per_step_schedule_steps_after_every_batch():
    torch.manual_seed(0)
    model = FlexibleMLP(input_shape=(1, 8, 8), depth=1, width=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = tiny_loader()  # 4 batches per epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=2 * len(loader))
    engine = Engine(model, optimizer, scheduler, epochs=2, scheduler_interval="step")
    engine.fit(loader, None)
    assert scheduler.last_epoch == 2 * len(loader)  # one step per batch, none per epoch
    with pytest.raises(ValueError, match="epoch or step"):
        Engine(model, optimizer, scheduler, scheduler_interval="batch")


def test_confusion_matrix_counts_the_predictions_evaluate_scores():
    from functools import partial

    from labkit.analysis.confusion import confusion_matrix

    torch.manual_seed(0)
    model = FlexibleMLP(input_shape=(1, 8, 8), depth=1, width=16).eval()
    loader = tiny_loader()
    engine = Engine(model, None, eval_flip=True)
    matrix = confusion_matrix(partial(engine.logits, model), loader, 10)
    assert matrix.sum() == len(loader.targets)
    assert matrix.trace().item() / len(loader.targets) == pytest.approx(engine.evaluate(loader)["acc"])


# -- the loop's bookkeeping ------------------------------------------------------------------------
def test_metrics_are_read_once_per_log_interval_and_reduced_once_per_epoch(monkeypatch):
    from labkit.engine import metrics as metrics_module
    from labkit.engine.metrics import RunningMetrics

    calls = {"read": 0, "reduce": 0}
    real_read = RunningMetrics.read

    def counted_read(self):
        calls["read"] += 1
        return real_read(self)

    monkeypatch.setattr(RunningMetrics, "read", counted_read)
    monkeypatch.setattr(metrics_module, "all_reduce_sum",
                        lambda tensor: calls.__setitem__("reduce", calls["reduce"] + 1))
    torch.manual_seed(0)
    model = FlexibleMLP(input_shape=(1, 8, 8), depth=1, width=8)
    loader = tiny_loader(n=128, batch=16)  # 8 steps per epoch
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, log_every_n_steps=4)
    history = engine.fit(loader, None)
    # per epoch: reads at steps 4 and 8, one more with the epoch's single collective
    assert calls == {"read": 2 * 3, "reduce": 2}
    assert 0 < history[-1]["train_loss"] < 10 and 0 <= history[-1]["train_acc"] <= 1
    assert engine.train_samples == 2 * 128


def test_running_metrics_sum_like_the_definition():
    from labkit.engine.metrics import RunningMetrics

    g = torch.Generator().manual_seed(0)
    metrics = RunningMetrics(torch.device("cpu"), {"loss_sum": 3.0, "correct": 2, "seen": 4})
    logits, targets = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    metrics.add(torch.tensor(1.5), logits, targets, step=1)
    assert metrics.read().loss == pytest.approx(4.5 / 10)
    metrics.add(torch.tensor(float("inf")), logits, targets, step=2)
    metrics.add(torch.tensor(float("nan")), logits, targets, step=3)
    totals = metrics.read()
    correct = int((logits.argmax(1) == targets).sum())
    assert (totals.correct, totals.seen, totals.bad_step) == (2 + 3 * correct, 4 + 18, 2)
    assert metrics.resumed_seen == 4
    fresh = RunningMetrics(torch.device("cpu"), {"loss_sum": 3.0, "correct": 2, "seen": 4},
                           count_resumed=False)  # another rank: the resumed sums count once
    assert fresh.read() == (0.0, 0, 0, -1)


class Recorder:
    def __init__(self, fail: bool = False):
        self.ended, self.fail = 0, fail

    def on_fit_start(self, engine): ...

    def on_after_backward(self, engine): ...

    def on_epoch_end(self, engine, metrics): ...

    def on_fit_end(self, engine):
        self.ended += 1
        if self.fail:
            raise RuntimeError("callback broke")


def test_fit_end_callbacks_run_when_the_loss_diverges():
    from labkit.errors import NonFiniteLossError

    torch.manual_seed(0)
    model = FlexibleMLP(input_shape=(1, 8, 8), depth=1, width=8)
    broken, recorder = Recorder(fail=True), Recorder()
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, log_every_n_steps=1,
                    criterion=lambda logits, batch: logits.sum() * float("nan"), callbacks=[broken, recorder])
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):  # not the callback's error
        engine.fit(tiny_loader(), None)
    assert broken.ended == recorder.ended == 1
    model = FlexibleMLP(input_shape=(1, 8, 8), depth=1, width=8)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[Recorder(fail=True)])
    with pytest.raises(RuntimeError, match="callback broke"):  # a fit that succeeded reports it
        engine.fit(tiny_loader(), None)


def test_best_weights_are_a_cpu_copy():
    model = FlexibleMLP(depth=1, width=4)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1))
    engine.epoch = 1
    assert engine._track_best({"val_acc": 0.9, "train_acc": 0.0})
    for key, value in model.state_dict().items():
        kept = engine.best_state[key]
        assert kept.device.type == "cpu" and torch.equal(kept, value)
        assert kept.data_ptr() != value.data_ptr()  # a copy, not the live weights


def test_without_validation_no_weights_are_called_best(tmp_path):
    """``data.val_size=0``: no best epoch and no best.pt; the training accuracy is never reported
    as ``best_val_acc``, and testing the "best" weights is refused rather than done on last ones."""
    from labkit.errors import ConfigError
    from labkit.run import fit_and_test

    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    loader = TensorLoader(images, torch.randint(0, 10, (64,)), 16, [0.5], [0.25])
    model = FlexibleMLP(depth=1, width=8)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="trainer.test_on=best needs validation data"):
        fit_and_test(engine, loader, None, loader, "best")
    summary = fit_and_test(engine, loader, None, loader, "last")
    assert summary["best_val_acc"] is None and summary["best_epoch"] is None
    assert summary["final_val_acc"] is None and summary["epochs_completed"] == 2
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / "best.pt").exists()
    state = load_checkpoint(tmp_path / "last.pt")
    resumed = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=3)
    resumed.load_state_dict(state)
    assert resumed.best_val_acc is None and resumed.best_epoch is None
    # a checkpoint from before this fix stored the training accuracy as best_val_acc: not read as one
    resumed.load_state_dict({**state, "best_val_acc": 0.7, "best_epoch": 2})
    assert resumed.best_val_acc is None

"""Gradient-flow diagnostics: what the monitor measures, that it is exact, and that off means off."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from labkit.analysis.callbacks import analysis_callbacks
from labkit.analysis.grad_monitor import GradientMonitor, probe_grad_norms, weight_groups
from labkit.data import TensorLoader
from labkit.data.loader import Batch
from labkit.engine import Engine, cross_entropy
from labkit.models import FlexibleMLP
from labkit.report.cli import main as report_main
from labkit.report.figures import job_label
from labkit.report.grads import plot_grad_norm_comparison
from labkit.report.jobs import load_jobs
from labkit.report.table import swept_keys
from labkit.tracking import Tracker, read_metrics
from labkit.training import train

CONF = Path(__file__).resolve().parents[1] / "conf"


def random_batch(n: int = 64, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen),
                 torch.arange(n))


def direct_block_norms(model: FlexibleMLP, batch: Batch) -> dict[str, float]:
    """Independent reference: backward on the batch, then group named_parameters by name."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(batch.inputs), batch.targets).backward()
    squares: dict[str, float] = {}
    for name, param in model.named_parameters():
        if not name.endswith("weight") or param.dim() < 2:
            continue
        key = f"block{name.split('.')[1]}" if name.startswith("blocks.") else name.split(".")[0]
        squares[key] = squares.get(key, 0.0) + float(param.grad.double().pow(2).sum())
    model.zero_grad(set_to_none=True)
    return {key: value ** 0.5 for key, value in squares.items()}


def first_last_ratio(norms: dict[str, float], depth: int) -> float:
    return norms["block0"] / norms[f"block{depth - 1}"]


def test_deep_plain_mlp_gradients_vanish_toward_the_input_and_residual_ones_do_not():
    batch = random_batch()
    torch.manual_seed(0)
    plain = FlexibleMLP(depth=20, width=32, residual=False, norm=False)
    torch.manual_seed(0)
    residual = FlexibleMLP(depth=20, width=32, residual=True, norm=False)
    plain_ratio = first_last_ratio(probe_grad_norms(plain, batch, cross_entropy), 20)
    residual_ratio = first_last_ratio(probe_grad_norms(residual, batch, cross_entropy), 20)
    assert plain_ratio < 1e-3  # measured about 5e-7
    assert residual_ratio > 0.3  # measured about 0.8


def test_probe_and_per_step_records_equal_direct_computation(tmp_path):
    torch.manual_seed(0)
    model = FlexibleMLP(depth=4, width=16)
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    targets = torch.randint(0, 10, (32,))
    loader = TensorLoader(images, targets, batch_size=32, mean=[0.5], std=[0.25])  # one step/epoch
    batch = Batch(loader.normalise(images), targets, torch.arange(32))
    expected = direct_block_norms(model, batch)
    assert list(expected) == [f"block{i}" for i in range(4)] + ["head"]

    monitor = GradientMonitor(probe_batch=batch, run_dir=tmp_path)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=1, callbacks=[monitor])
    row = engine.fit(loader, None)[0]
    # the only step of epoch 1 ran on the same batch with the initial weights
    for name, value in expected.items():
        assert row["grad_norms"][name]["mean"] == pytest.approx(value, rel=1e-5)
        assert row["grad_norms"][name]["max"] == pytest.approx(value, rel=1e-5)
        assert monitor.probes["init"][name] == pytest.approx(value, rel=1e-5)
    assert monitor.probes["final"] == pytest.approx(direct_block_norms(model, batch), rel=1e-5)
    record = json.loads((tmp_path / "grad_norms.json").read_text())
    assert record["groups"] == list(expected) and record["positions"] == [0, 1, 2, 3, 4]
    assert record["init"] == pytest.approx(list(expected.values()), rel=1e-5)
    assert (tmp_path / "grad_norms.png").stat().st_size > 0


def test_epoch_mean_and_max_over_several_steps():
    torch.manual_seed(0)
    model = FlexibleMLP(depth=2, width=8)
    images = torch.randint(0, 256, (24, 1, 28, 28), dtype=torch.uint8)
    loader = TensorLoader(images, torch.randint(0, 10, (24,)), batch_size=8, mean=[0.5], std=[0.25])
    seen: list[dict[str, float]] = []

    class Spy(GradientMonitor):
        def on_after_backward(self, engine):
            super().on_after_backward(engine)
            seen.append(direct_grads(engine.model))

    def direct_grads(m):
        return {f"block{i}": float(b.linear.weight.grad.norm()) for i, b in enumerate(m.blocks)}

    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=1, callbacks=[Spy()])
    row = engine.fit(loader, None)[0]
    assert len(seen) == 3
    for name in ("block0", "block1"):
        steps = [s[name] for s in seen]
        assert row["grad_norms"][name]["mean"] == pytest.approx(sum(steps) / 3, rel=1e-5)
        assert row["grad_norms"][name]["max"] == pytest.approx(max(steps), rel=1e-5)


def test_probe_leaves_grads_buffers_and_rng_untouched():
    torch.manual_seed(0)
    model = FlexibleMLP(depth=3, width=16, norm=True, dropout=0.2).eval()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rng = torch.get_rng_state()
    probe_grad_norms(model, random_batch(), cross_entropy)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training


class StemBlocksHead(nn.Module):
    """The layout of FlexibleCNN: a stem, ``blocks`` in depth order, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1)) for _ in range(3))
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.head(x.mean((2, 3)))


def test_weight_groups_follow_stem_blocks_head_and_skip_biases_and_norm_scales():
    groups = weight_groups(StemBlocksHead())
    assert [(name, pos, len(ps)) for name, pos, ps in groups] == [
        ("stem", -1, 1), ("block0", 0, 2), ("block1", 1, 2), ("block2", 2, 2), ("head", 3, 1)]
    assert all(p.dim() >= 2 for _, _, ps in groups for p in ps)
    # a model without `blocks`: one group per top-level child holding weights
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert [name for name, _, _ in weight_groups(plain)] == ["1", "3"]


def test_block_norm_combines_all_weights_of_a_block():
    torch.manual_seed(0)
    model = StemBlocksHead()
    batch = Batch(torch.randn(2, 1, 9, 9), torch.tensor([1, 2]), torch.arange(2))
    norms = probe_grad_norms(model, batch, cross_entropy)
    F.cross_entropy(model(batch.inputs), batch.targets).backward()
    conv3, conv1 = model.blocks[1][0].weight.grad, model.blocks[1][2].weight.grad
    expected = (conv3.pow(2).sum() + conv1.pow(2).sum()).sqrt().item()
    assert norms["block1"] == pytest.approx(expected, rel=1e-5)


def test_monitor_off_means_no_callback_and_on_builds_it(cfg_factory, data_root):
    cfg = cfg_factory(f"data.root={data_root}", "logger=none")
    assert cfg.analysis.grad_norms is False and cfg.analysis.wandb_watch is False
    assert analysis_callbacks(cfg, datamodule=None, run_dir=cfg.paths.output_dir) == []

    cfg = cfg_factory(f"data.root={data_root}", "logger=none", "analysis=grads", "data.val_size=100",
                      "analysis.probe_size=64")
    datamodule = instantiate(cfg.data)
    datamodule.setup("cpu")
    callbacks = analysis_callbacks(cfg, datamodule, cfg.paths.output_dir)
    assert [type(c).__name__ for c in callbacks] == ["GradientMonitor"]
    assert len(callbacks[0].probe_batch.targets) == 64


def _train(cfg_factory, tmp_path, data_root, name: str, *overrides: str):
    run_dir = tmp_path / name
    cfg = cfg_factory(f"data.root={data_root}", "logger=none", "trainer.epochs=2", "data.val_size=100",
                      "model.depth=3", "model.width=32", "trainer.checkpoint=false",
                      f"paths.output_dir={run_dir}", *overrides)
    return run_dir, train(cfg)


def test_training_with_monitor_records_epochs_and_probes_without_changing_the_run(
        cfg_factory, tmp_path, data_root, capsys):
    off_dir, off = _train(cfg_factory, tmp_path, data_root, "off")
    on_dir, on = _train(cfg_factory, tmp_path, data_root, "on", "analysis.grad_norms=true",
                        "analysis.probe_size=64")
    rows = read_metrics(on_dir / "metrics.jsonl")
    assert [list(r["grad_norms"]) for r in rows] == [["block0", "block1", "block2", "head"]] * 2
    assert all(set(v) == {"mean", "max"} for r in rows for v in r["grad_norms"].values())
    record = json.loads((on_dir / "grad_norms.json").read_text())
    assert len(record["init"]) == len(record["final"]) == 4 and record["probe_size"] == 64
    assert (on_dir / "grad_norms.png").is_file()
    # off: nothing recorded; and the monitor does not perturb training (same seed, same result)
    assert all("grad_norms" not in r for r in read_metrics(off_dir / "metrics.jsonl"))
    assert not (off_dir / "grad_norms.json").exists()
    assert on["final_train_loss"] == off["final_train_loss"] and on["test_acc"] == off["test_acc"]

    # the comparison command over both runs: one figure and a table of the runs that recorded norms
    out = tmp_path / "cmp.png"
    assert [job.grad_norms is not None for job in load_jobs(on_dir, off_dir)] == [True, False]
    assert plot_grad_norm_comparison([], out) is None and not out.exists()
    assert report_main(["grads", str(on_dir), str(off_dir), "-o", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "job on" in table and "job off" not in table and f"{on['test_acc']:.4f}" in table
    assert report_main(["grads", str(off_dir), "-o", str(tmp_path / "none.png")]) == 2
    assert not (tmp_path / "none.png").exists()


def test_labels_name_the_overrides_that_differ(tmp_path):
    for name, items in (("0", ["model.depth=2", "model.residual=false", "x=1"]),
                        ("1", ["model.depth=2", "model.residual=true", "x=1"])):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {i}\n" for i in items))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "summary.json").write_text("{}")  # a run without Hydra's record
    jobs = load_jobs(tmp_path)
    assert [job.name for job in jobs] == ["0", "1", "other"]
    keys = swept_keys(jobs[:2])
    assert [job_label(job, keys) for job in jobs] == ["residual=false", "residual=true", "job other"]


def test_grad_flow_study_builds_each_depth_plain_and_residual_with_the_monitor_on(cfg_factory):
    """Every job of sweep=grad_flow_mlp, composed as Hydra's sweeper would, builds the model asked for."""
    import itertools

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from labkit.models import describe_model

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        params = compose("train", ["sweep=grad_flow_mlp"], return_hydra_config=True).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    choices = [[f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    built = set()
    for job in itertools.product(*choices):
        cfg = cfg_factory("sweep=grad_flow_mlp", *job)
        assert cfg.analysis.grad_norms is True and cfg.model.norm is False and cfg.trainer.epochs == 2
        model = instantiate(cfg.model)
        built.add((len(model.blocks), describe_model(model)["skip_connections"]))
    assert built == {(depth, depth - 1 if residual else 0) for depth in (2, 10, 20, 40)
                     for residual in (False, True)}


def test_comparison_command_runs_as_a_module_and_fails_in_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"test_acc": 0.5}')
    result = subprocess.run([sys.executable, "-m", "labkit.report", "grads", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "analysis.grad_norms=true" in result.stderr


def test_wandb_watch_attaches_to_the_active_run_for_the_fit_only(cfg_factory):
    calls = []

    class FakeRun:
        def watch(self, model, log, log_freq):
            calls.append(("watch", log, log_freq))

        def unwatch(self, model):
            calls.append(("unwatch",))

    class FakeTracker(Tracker):
        run = FakeRun()

    cfg = cfg_factory("analysis.wandb_watch=true", "analysis.watch_log_freq=7")
    (watch,) = analysis_callbacks(cfg, datamodule=None, run_dir=cfg.paths.output_dir)
    model = FlexibleMLP(depth=1, width=4)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), trackers=[FakeTracker()])
    watch.on_fit_start(engine)
    watch.on_fit_end(engine)
    assert calls == [("watch", "gradients", 7), ("unwatch",)]


def test_grads_table_is_not_cut_to_80_columns_when_piped(capsys):
    from labkit.report.grads import print_table

    rows = [{"run": f"depth=16, residual=true, seed={i}", **{f"block {k} last": 1.2345e-3 * k
                                                              for k in range(8)}} for i in range(2)]
    print_table(rows)  # captured: not a terminal
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) > 80 and any("depth=16, residual=true, seed=1" in line for line in lines)

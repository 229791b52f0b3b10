"""Knowledge distillation: the loss, the teacher's outputs, and the three-stage pipeline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra.utils import instantiate
from torch import nn

import labkit.distill.pipeline as pipeline
from labkit.data import MNISTFamily
from labkit.data.loader import Batch
from labkit.distill import (
    CachedTeacher,
    DistillationCriterion,
    DistilledStudent,
    LiveTeacher,
    teacher_outputs,
)
from labkit.distill.methods import Outputs, build_methods, ce_weight
from labkit.distill.methods.kd import KD
from labkit.distill.report import gap_closed
from labkit.distill.stages import weights_sha256
from labkit.distill.teacher import use_teacher_cache
from labkit.engine import Engine, save_checkpoint
from labkit.engine.checkpoint import CHECKPOINT_FORMAT
from labkit.errors import CheckpointError, ConfigError
from labkit.models import FlexibleMLP
from labkit.report.distill import seeds_table

from .conftest import compose_config, run_cli

STAGES = ("teacher", "student_baseline", "student_distill")


# -- the loss ------------------------------------------------------------------------------------
def kd_loss(s, t, y, T, alpha):
    """The one KD implementation (methods/kd.py) as the pipeline assembles it: the criterion with
    ``ce_weight: auto`` (1 - alpha) times CE plus the KD term."""
    distill = {"method": "kd", "kd": {"temperature": T, "alpha": alpha}, "ce_weight": "auto"}
    criterion = DistillationCriterion(lambda batch: Outputs(t), build_methods(distill), ce_weight(distill))
    return criterion(s, Batch(s, y, torch.arange(len(y))))


def reference_kd_loss(s, t, y, T, alpha):
    """Hinton et al.'s loss written out in float64, sample by sample."""
    s, t = s.double(), t.double()
    p_t = torch.softmax(t / T, dim=1)
    log_p_s = torch.log_softmax(s / T, dim=1)
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum(1).mean()  # batchmean: per-sample KL, averaged
    ce = -torch.log_softmax(s, dim=1)[torch.arange(len(y)), y].mean()
    return alpha * T**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_kd_loss_matches_float64_reference(T, alpha):
    g = torch.Generator().manual_seed(int(T * 10 + alpha * 100))
    s, t = 3 * torch.randn(16, 10, generator=g), 3 * torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    got = kd_loss(s, t, y, T, alpha)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(reference_kd_loss(s, t, y, T, alpha).item(), rel=1e-5, abs=1e-6)


def test_kd_loss_ends_of_alpha_are_pure_terms():
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.arange(8) % 5
    assert kd_loss(s, t, y, 3.0, 0.0).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert kd_loss(s, t, t.argmax(1), 3.0, 1.0).item() == pytest.approx(kd_loss(s, t, y, 3.0, 1.0).item())
    assert kd_loss(t, t, y, 3.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)  # KL(p || p) = 0


def test_soft_gradient_does_not_shrink_with_temperature():
    """The T^2 factor keeps the soft term's gradient scale: without it, T=16 would give ~1/16 of T=4."""
    g = torch.Generator().manual_seed(1)
    s0, t, y = torch.randn(64, 10, generator=g), torch.randn(64, 10, generator=g), torch.zeros(64).long()

    def grad_norm(T: float) -> float:
        s = s0.clone().requires_grad_(True)
        kd_loss(s, t, y, T, 1.0).backward()
        return s.grad.norm().item()

    norms = {T: grad_norm(T) for T in (4.0, 8.0, 16.0)}
    assert 0.8 < norms[16.0] / norms[4.0] < 1.25 and 0.8 < norms[8.0] / norms[4.0] < 1.25


def test_teacher_logits_carry_no_gradient():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, t, torch.zeros(4).long(), 2.0, 0.5).backward()
    assert t.grad is None and s.grad is not None


@pytest.mark.parametrize("T,alpha", [(0.0, 0.5), (-1.0, 0.5), (2.0, -0.1), (2.0, 1.5), (True, 0.5)])
def test_bad_temperature_or_alpha_is_a_config_error(T, alpha):
    with pytest.raises(ConfigError, match="distill.kd.(temperature|alpha)"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.zeros(2).long(), T, alpha)


# -- the teacher's outputs -----------------------------------------------------------------------
def datamodule(data_root: Path, augment=None) -> MNISTFamily:
    dm = MNISTFamily(root=data_root, batch_size=32, val_size=100, augment=augment)
    dm.setup("cpu")
    return dm


def teacher_with_batchnorm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    teacher = FlexibleMLP(depth=2, width=32, norm=True, dropout=0.3)
    # move the BN statistics away from their initial values, so "unchanged" means something
    teacher.train()
    with torch.no_grad():
        teacher(torch.randn(64, 1, 28, 28) * 2 + 1)
    return teacher


def test_cached_logits_line_up_with_sample_indices_under_shuffling(data_root):
    dm = datamodule(data_root)
    teacher = teacher_with_batchnorm()
    reference = copy.deepcopy(teacher).eval()
    provider = teacher_outputs(teacher, dm, "auto")
    assert isinstance(provider, CachedTeacher)
    loader = dm.loader("train", torch.Generator().manual_seed(3))
    for batch in loader:
        with torch.no_grad():
            expected = reference(batch.inputs)
        torch.testing.assert_close(provider(batch).logits, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(batch.index, torch.arange(len(batch.index)) + batch.index.min())  # shuffled
    # filled from a shuffled loader (the original lab's setting), the cache is still keyed by index
    refilled = CachedTeacher(teacher, dm.loader("train", torch.Generator().manual_seed(5)), 500)
    torch.testing.assert_close(refilled.logits, provider.logits)


def test_cache_setting_is_chosen_by_augmentation():
    assert use_teacher_cache("auto", augmented=False) is True
    assert use_teacher_cache("auto", augmented=True) is False
    assert use_teacher_cache(False, augmented=False) is False
    with pytest.raises(ConfigError, match="augmentation"):
        use_teacher_cache(True, augmented=True)
    with pytest.raises(ConfigError, match="cache_teacher"):
        use_teacher_cache("sometimes", augmented=False)


class InputRecorder(nn.Module):
    """Wraps a model and keeps a copy of every input it sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


def random_shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    shift = int(torch.randint(-2, 3, (1,), generator=generator))
    return torch.roll(images, shift, dims=-1)


@pytest.mark.parametrize("augment,setting", [(None, False), (random_shift, "auto")])
def test_live_teacher_sees_the_students_batch_and_is_never_changed(data_root, augment, setting):
    dm = datamodule(data_root, augment=augment)
    teacher = InputRecorder(teacher_with_batchnorm())
    before = copy.deepcopy(teacher.state_dict())
    provider = teacher_outputs(teacher, dm, setting)
    assert isinstance(provider, LiveTeacher)
    student = InputRecorder(FlexibleMLP(depth=1, width=8))
    engine = Engine(student, torch.optim.SGD(student.parameters(), lr=0.1), epochs=1,
                    criterion=DistillationCriterion(provider, [KD(4.0, 0.5)], 0.5))
    engine.fit(dm.loader("train", torch.Generator().manual_seed(0)), None)
    assert len(teacher.seen) == len(student.seen) == len(dm.loader("train"))
    for t_in, s_in in zip(teacher.seen, student.seen, strict=True):
        assert torch.equal(t_in, s_in)  # the same (augmented) batch
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    for key in before:  # weights and BatchNorm running statistics / counters
        assert torch.equal(before[key], after[key]), key
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())


def test_cached_teacher_is_not_changed(data_root):
    teacher = teacher_with_batchnorm()
    before = copy.deepcopy(teacher.state_dict())
    CachedTeacher(teacher, datamodule(data_root).loader("train"), 500)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


# -- the pipeline --------------------------------------------------------------------------------
def tiny(data_root: Path, log_dir: Path) -> list[str]:
    return [f"data.root={data_root}", "data.val_size=100", "data.batch_size=64", "trainer.epochs=2",
            "teacher.width=48", "student.width=8", f"paths.log_dir={log_dir}", "logger=none",
            "trainer.device=cpu"]


def compose_distill(data_root: Path, run_dir: Path, *overrides: str):
    return compose_config([*tiny(data_root, run_dir.parent), *overrides], run_dir, config_name="distill")


@pytest.fixture
def recorded_stages(monkeypatch):
    """Record the weights each stage starts training from."""
    starts: dict[str, dict] = {}
    real = pipeline.train_stage

    def recording(ctx, stage, model, *args, **kwargs):
        module = model.module.student if isinstance(model.module, DistilledStudent) else model.module
        starts[stage] = copy.deepcopy(module.state_dict())
        return real(ctx, stage, model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_stage", recording)
    return starts


def test_students_start_from_the_same_fresh_weights(data_root, tmp_path, recorded_stages):
    run_dir = tmp_path / "run"
    summary = pipeline.distill(compose_distill(data_root, run_dir, "+norm=true"))
    baseline, distilled = recorded_stages["student_baseline"], recorded_stages["student_distill"]
    assert all(torch.equal(baseline[k], distilled[k]) for k in baseline)
    trained_baseline = torch.load(run_dir / "student_baseline.pth", weights_only=True)["model"]
    assert not all(torch.equal(trained_baseline[k], distilled[k]) for k in distilled)
    assert summary["same_initial_weights"] is True
    # and the teacher that guided the distilled student is the one the teacher stage saved
    teacher = torch.load(run_dir / "teacher.pth", weights_only=True)
    distill_record = torch.load(run_dir / "student_distill.pth", weights_only=True)
    assert distill_record["summary"]["teacher_sha256"] == teacher["summary"]["weights_sha256"]
    assert distill_record["summary"]["teacher_outputs"] == "cached"


def test_rerun_skips_finished_stages_and_force_retrains(data_root, tmp_path, recorded_stages):
    run_dir = tmp_path / "run"
    assert pipeline.distill(compose_distill(data_root, run_dir))["stages_run"] == list(STAGES)
    first = {s: (run_dir / f"{s}.pth").read_bytes() for s in STAGES}
    recorded_stages.clear()
    assert pipeline.distill(compose_distill(data_root, run_dir))["stages_run"] == []
    assert recorded_stages == {}
    assert {s: (run_dir / f"{s}.pth").read_bytes() for s in STAGES} == first
    # a crash during the last stage leaves no stage file: only that stage runs again
    (run_dir / "student_distill.pth").unlink()
    assert pipeline.distill(compose_distill(data_root, run_dir))["stages_run"] == ["student_distill"]
    # changed settings are refused rather than silently mixed into one comparison
    with pytest.raises(ConfigError, match="other settings"):
        pipeline.distill(compose_distill(data_root, run_dir, "distill.kd.temperature=7"))
    # a trainer key no list names (the old hand-listed settings missed it) is refused too
    with pytest.raises(ConfigError, match=r"trainer\.grad_clip differ"):
        pipeline.distill(compose_distill(data_root, run_dir, "trainer.grad_clip=1.0"))
    summary = pipeline.distill(compose_distill(data_root, run_dir, "distill.kd.temperature=7",
                                               "distill.force=true"))
    assert summary["stages_run"] == list(STAGES) and summary["temperature"] == 7.0


def test_teacher_from_checkpoint_is_evaluated_not_trained(data_root, tmp_path, recorded_stages):
    first = tmp_path / "first"
    trained = pipeline.distill(compose_distill(data_root, first))
    recorded_stages.clear()
    summary = pipeline.distill(compose_distill(
        data_root, tmp_path / "second", f"distill.teacher_ckpt={first / 'teacher/checkpoints/best.pt'}"))
    assert "teacher" not in recorded_stages and summary["stages_run"] == list(STAGES)
    assert summary["teacher_test_acc"] == pytest.approx(trained["teacher_test_acc"])
    with pytest.raises(CheckpointError, match="another architecture"):
        pipeline.distill(compose_distill(data_root, tmp_path / "third", "teacher.width=40",
                                         f"distill.teacher_ckpt={first / 'teacher.pth'}"))


def test_teacher_ckpt_saved_from_a_ddp_wrapper_is_read(data_root, tmp_path, recorded_stages):
    """``distill.teacher_ckpt`` reads any labkit checkpoint as eval.py does: a state dict saved from
    DistributedDataParallel (``module.``) or torch.compile (``_orig_mod.``) loads into the plain model."""
    torch.manual_seed(0)
    weights = instantiate(compose_distill(data_root, tmp_path / "unused").teacher).state_dict()
    ckpt = tmp_path / "ddp_teacher.pt"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": 2,
                     "model": {f"module.{k}": v for k, v in weights.items()}}, ckpt)
    run_dir = tmp_path / "run"
    summary = pipeline.distill(compose_distill(data_root, run_dir, "trainer.epochs=1",
                                               f"distill.teacher_ckpt={ckpt}"))
    teacher = torch.load(run_dir / "teacher.pth", weights_only=True)
    assert teacher["summary"]["status"] == "loaded" and "teacher" not in recorded_stages
    assert teacher["summary"]["weights_sha256"] == weights_sha256(weights)
    assert summary["stages_run"] == list(STAGES)


def test_a_stage_that_raises_leaves_a_failed_summary_in_its_folder(data_root, tmp_path, monkeypatch):
    def broken(self, logits, batch):
        raise RuntimeError("the criterion broke")

    monkeypatch.setattr(DistillationCriterion, "__call__", broken)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="the criterion broke"):
        pipeline.distill(compose_distill(data_root, run_dir))
    failed = json.loads((run_dir / "student_distill" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: the criterion broke"
    assert failed["stage"] == "student_distill" and failed["epochs_completed"] == 0
    assert not (run_dir / "student_distill.pth").exists()  # the stage runs again next time
    for stage in ("teacher", "student_baseline"):
        assert json.loads((run_dir / stage / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_distill_command_sweeps_and_leaves_every_file(data_root, tmp_path):
    result = run_cli("distill.py", "-m", "distill.kd.temperature=2,4", "distill.kd.alpha=0.5",
                     *tiny(data_root, tmp_path))
    assert result.returncode == 0, result.stderr
    sweep = next((tmp_path / "distill" / "multiruns").iterdir())
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2
    for job, T in zip(jobs, (2.0, 4.0), strict=True):
        for name in ("teacher.pth", "student_baseline.pth", "student_distill.pth", "comparison.md",
                     "comparison.png", "summary.json"):
            assert (job / name).is_file(), name
        for stage in STAGES:
            rows = [json.loads(line) for line in (job / stage / "metrics.jsonl").read_text().splitlines()]
            assert [r["epoch"] for r in rows] == [1, 2]
            assert (job / stage / "checkpoints" / "best.pt").is_file()
        table = (job / "comparison.md").read_text()
        assert "| model | test acc (%) | test loss | params | gap closed (%) |" in table
        assert f"student distilled: kd (T={T:g}, alpha=0.5); CE x 0.5" in table
        summary = json.loads((job / "summary.json").read_text())
        assert summary["temperature"] == T and summary["same_initial_weights"] is True
        assert summary["teacher_params"] > summary["student_baseline_params"]
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"distill.kd.temperature={T:g}" in overrides
        # provenance in the job's folder (its own sweep values) and in every stage's folder
        record = json.loads((job / "provenance.json").read_text())
        assert f"distill.kd.temperature={T:g}" in record["overrides"] and record["entry_point"] == "distill"
        assert record["data_fingerprint"] == summary["data_fingerprint"] is not None
        for stage in STAGES:
            stage_record = json.loads((job / stage / "provenance.json").read_text())
            assert stage_record["data_fingerprint"] == summary["data_fingerprint"]
            assert stage_record["ended_utc"] is not None


# -- the report ----------------------------------------------------------------------------------
def test_gap_closed_and_seed_table():
    assert gap_closed(0.98, 0.96, 0.97) == pytest.approx(50.0)
    assert gap_closed(0.95, 0.96, 0.97) is None
    jobs = [{"teacher_test_acc": 0.99, "student_baseline_test_acc": base, "student_distill_test_acc": dist,
             "teacher_params": 100, "student_baseline_params": 10, "student_distill_params": 10,
             "distill_gain_pp": 100 * (dist - base), "gap_closed_pct": 50.0}
            for base, dist in ((0.96, 0.97), (0.95, 0.97))]
    table = seeds_table(jobs)
    assert "| student baseline | 95.50 ± 0.71 | 10 |" in table
    assert "better in 2 of 2 runs" in table and "1.50 ± 0.71 points" in table


@pytest.mark.parametrize("method,present,absent", [
    ("kd", ["alpha * T^2 * KL"], ["attention"]),
    ("at", ["at: weight * sum over points", "attention maps"], ["KL(teacher"]),
    ("kd+at", ["alpha * T^2 * KL", "attention maps"], ["fitnet:"]),
])
def test_comparison_md_prints_the_formula_of_the_method_used(method, present, absent):
    from labkit.distill.report import comparison_markdown

    stage = {"test_acc": 0.9, "test_loss": 0.3, "params": 10}
    text = comparison_markdown({"teacher": stage, "student_baseline": {**stage, "test_acc": 0.8},
                                "student_distill": {**stage, "method": method}})
    assert all(p in text for p in present) and not any(a in text for a in absent), text

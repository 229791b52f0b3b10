"""benchmarks/gpu_check.py end to end at toy sizes on the CPU, and the pack file it reads.

The check itself needs a lent GPU, rarely there, and has one chance when it is: so everything
but the GPU (the packing, the unpacking, the distill.py command, reading its summaries into
the table, failing with one line) is tested here, on generated data (never ../shared).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("teacher", "student_baseline", "student_distill")


def load_pack_cifar():
    spec = importlib.util.spec_from_file_location("pack_cifar", ROOT / "benchmarks" / "pack_cifar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jpeg_folder(root: Path, classes=("cat", "airplane", "dog"), train: int = 6, test: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:04d}.jpg", quality=75)
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.jpg")}


def test_pack_and_unpack_give_back_the_same_bytes(tmp_path):
    pack_cifar = load_pack_cifar()
    src = write_jpeg_folder(tmp_path / "src")
    meta = pack_cifar.pack(src, tmp_path / "p.npz")
    assert (meta["train"], meta["test"], meta["classes"]) == (18, 6, ["airplane", "cat", "dog"])
    assert pack_cifar.unpack(tmp_path / "p.npz", tmp_path / "out")["train"] == 18
    assert files_of(tmp_path / "out") == files_of(src)
    # unpacking again over a changed folder replaces it
    (tmp_path / "out" / "train" / "cat" / "0000.jpg").write_bytes(b"junk")
    stat = (tmp_path / "p.npz").stat()
    os.utime(tmp_path / "p.npz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "a new pack"
    pack_cifar.unpack(tmp_path / "p.npz", tmp_path / "out")
    assert files_of(tmp_path / "out") == files_of(src)


def test_a_small_size_limit_keeps_every_test_image_and_balanced_classes(tmp_path):
    pack_cifar = load_pack_cifar()
    src = write_jpeg_folder(tmp_path / "src", train=20)
    full = pack_cifar.pack(src, tmp_path / "full.npz")["bytes"]
    meta = pack_cifar.pack(src, tmp_path / "p.npz", max_mib=0.75 * full / 2**20)
    assert meta["bytes"] <= 0.75 * full and 0 < meta["train_per_class"] < 20
    pack_cifar.unpack(tmp_path / "p.npz", tmp_path / "out")
    unpacked, original = files_of(tmp_path / "out"), files_of(src)
    assert {k for k in unpacked if k.startswith("test")} == {k for k in original if k.startswith("test")}
    for c in ("airplane", "cat", "dog"):
        assert len(list((tmp_path / "out" / "train" / c).iterdir())) == meta["train_per_class"]
    assert all(original[k] == v for k, v in unpacked.items())


def run_check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """gpu_check.py as on the lent machine, where wandb is not installed: importing it fails."""
    blocker = tmp_path / "no_wandb" / "wandb"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('wandb is not installed on the GPU machine')\n")
    path = os.pathsep.join(filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--workdir", str(tmp_path / "work"),
         "--out", str(tmp_path / "t.md"), *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )


@pytest.mark.slow
def test_toy_check_runs_end_to_end_and_fills_the_table(tmp_path):
    start = time.perf_counter()
    result = run_check(tmp_path, "--toy", "--device", "cpu")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.perf_counter() - start < 120
    table = (tmp_path / "t.md").read_text()
    number = r"[\d,]+"
    for model in ("student", "teacher"):  # params, per-sample, eager, fast
        row = rf"^\| {model} \| {number} \| {number} \| {number} \| {number} \|"
        assert re.search(row, table, re.M), table
    for stage in STAGES:  # test acc, test loss, params
        assert re.search(rf"^\| {stage} \| \d+\.\d\d \| \d+\.\d{{4}} \| {number} \|", table, re.M), table
    assert re.search(r"^\| student_distill \|.*\| [+-]\d+\.\d\d \|$", table, re.M), table
    assert table.count("distill.py: exit code 0") == 2
    assert "total wall time" in table and "device: cpu" in table
    assert (tmp_path / "t_run" / "summary.json").is_file()
    assert (tmp_path / "t_run" / "student_distill" / "metrics.jsonl").is_file()
    assert (tmp_path / "t_distill.log").is_file()
    # part (b): the 94 % recipe, the EMA from a third of the steps (100 images / batch 32: 4 steps)
    labkit_part, lab_part = table.split("## The original lab's recipe")
    for override in ("data.augment.cutout=12", "trainer.ema.decay=0.99", "trainer.ema.every=2",
                     "trainer.ema.start_step=1", "scheduler=onecycle"):
        assert override in labkit_part
    # part (c): the lab's recipe, its rows beside the lab's published accuracies
    for override in ("optimizer=adam", "optimizer.lr=1e-3", "scheduler=none", "distill.kd.temperature=3",
                     "distill.kd.alpha=0.5", "trainer.eval_flip=false", "data.augment.cutout=0"):
        assert override in lab_part
    assert "trainer.ema" not in lab_part and "label_smoothing=0.1" not in lab_part
    for stage, published in zip(STAGES, ("85.95", "82.36", "85.87"), strict=True):
        assert re.search(rf"^\| {stage} \| \d+\.\d\d \| {published} \| \d+\.\d{{4}} \| {number} \| 1 \|",
                         lab_part, re.M), lab_part
    assert "T=3.0, alpha=0.5" in lab_part
    assert (tmp_path / "t_lab_run" / "student_distill" / "summary.json").is_file()
    assert (tmp_path / "t_lab.log").is_file()


@pytest.mark.slow
def test_a_failing_distillation_is_one_line_in_the_table(tmp_path):
    result = run_check(tmp_path, "--toy", "--skip-throughput", "--override", "distill.kd.alpha=1.5")
    assert result.returncode == 1
    table = (tmp_path / "t.md").read_text()
    failed = r"distill\.py failed: exit code \d+\*\*: `.*distill\.kd\.alpha=1\.5 is invalid"
    assert re.search(failed, table), table
    for stage in STAGES:
        assert f"| {stage} | not finished" in table
    assert "Traceback" not in result.stderr


def test_missing_data_is_one_line_not_a_traceback(tmp_path):
    result = run_check(tmp_path, "--device", "cpu", "--skip-throughput", "--data", str(tmp_path / "none.npz"))
    assert result.returncode == 1
    assert "**distillation not run:** FileNotFoundError" in (tmp_path / "t.md").read_text()
    assert "Traceback" not in result.stdout + result.stderr


def test_the_budget_is_shared_between_labkits_recipe_and_the_labs():
    """With the throughput the H100 measured on 2026-11-28 and 436 s left after part (a), part (b)
    gets about 40 epochs and part (c), the lab's batch-128 recipe, about 11 of its 50."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    args = gpu_check.parse_args([])
    labkit_part, lab_part = gpu_check.parts(args)
    fast, left = {"teacher": 10390.0, "student": 34429.0}, 436.0
    assert gpu_check.plan_epochs(args, labkit_part, fast, 49000, (1 - args.lab_share) * left)[0] == 40
    assert gpu_check.plan_epochs(args, lab_part, fast, 49000, args.lab_share * left)[0] == 11
    assert gpu_check.ema_overrides(labkit_part, 49000, 40, gpu_check.BATCH) == ["trainer.ema.start_step=1280"]
    assert gpu_check.ema_overrides(lab_part, 49000, 11, gpu_check.LAB_BATCH) == []
    assert [p.name for p in gpu_check.parts(gpu_check.parse_args(["--skip-lab"]))] == ["distill"]

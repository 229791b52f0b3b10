"""The GPU check: the engine's CNN throughput and the lab's distillation on real CIFAR-10, one command.

A lent GPU machine (one H100, 16 cores, 15 minutes of device time in all, start-up included) has
torch, torchvision, rich, matplotlib, numpy, pillow and pyyaml, but not hydra-core, omegaconf or
antlr4-python3-runtime, cannot download anything and cannot see ../shared. So everything it
needs is prepared here, in the git-ignored folder .gpu/ (under 50 MiB: a call carries 64 MiB
with the repository), and the check is one call of at most ~8 minutes that prints a markdown
table and writes it to ``--out``:

  (a) throughput: images/s of the engine's fast path, the same engine in eager fp32 and a
      per-sample-transform DataLoader loop, on the lab's student and teacher
      (the functions of benchmarks/throughput_cnn_gpu.py, fewer steps);
  (b) ``distill.py`` (teacher ResNet-34 -> student 1-1-1-1) on the real CIFAR-10 JPEGs with the
      short-schedule recipe below: per stage test accuracy, loss, parameters, training time,
      images/s, precision / fast path, and the distilled-minus-baseline gain;
  (c) ``distill.py`` again with the original lab's own recipe (LAB_RECIPE below), one seed, on
      what is left of the time, its rows beside the lab's published numbers.

Prepare (here, once; needs ../shared and PyPI): ``bash benchmarks/gpu_check_prepare.sh``, i.e.

    python3 benchmarks/pack_cifar.py --dest .gpu/cifar10_jpeg.npz
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 --platform any -d .gpu hydra-core==1.3.8 omegaconf==2.3.1
    python3 -m pip wheel --no-deps -w .gpu antlr4-python3-runtime==4.9.3

(antlr4-python3-runtime 4.9.3, the version omegaconf 2.3 pins, exists on PyPI only as an sdist;
``pip wheel`` builds its pure-Python wheel here, so the offline machine installs a wheel and
needs no build tools. ``packaging``, which hydra-core also needs, comes with matplotlib.)

Device (one call, carry=[".gpu"], timeout_s=600):

    python3 benchmarks/gpu_check.py --out $OUT/gpu_check.md

When hydra-core, omegaconf or antlr4 cannot be imported, the check unzips the wheels of
``--wheels`` (default .gpu/) into ``<workdir>/site`` and puts that on sys.path and distill.py's
PYTHONPATH (pure-Python wheels need nothing more), so it needs no pip. With pip, the same is

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl && \
        PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py --out $OUT/gpu_check.md

Besides the table, ``--out``'s folder gets ``<stem>_distill.log`` / ``<stem>_lab.log`` (distill.py's
output in parts (b) / (c)) and ``<stem>_run/`` / ``<stem>_lab_run/`` (each run's summaries, metrics
and plots, without weights).
On a CPU, ``python benchmarks/gpu_check.py --toy --device cpu`` runs everything end to end at toy
sizes (tests/test_gpu_check.py does).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
STAGES = ("teacher", "student_baseline", "student_distill")
DEFAULT_DATA = ROOT / ".gpu" / "cifar10_jpeg.npz"
TARGET_TEACHER_ACC = 0.94  # issue 24

# The short-schedule recipe of part (b) (distill.py overrides), and why:
# - SGD, Nesterov momentum 0.9, weight decay 5e-4 (conf/optimizer/sgd.yaml): the usual CIFAR
#   ResNet recipe; Adam 1e-3 (the original lab's) is a point or two worse on ResNets when short.
# - batch 512, peak lr 0.4: 0.1 per 128 images, scaled linearly (Goyal et al. 2017); 512 keeps
#   an H100 busy on 32x32 images.
# - scheduler=onecycle (linear warm-up over the first quarter, then linear decay; stepped per
#   batch): measured on an H100 on 2026-11-28, the cosine schedule at lr 0.2 with no warm-up
#   left the ResNet-34 teacher at 11 % train accuracy after its first epoch and 87.9 % test
#   accuracy after 34, below its own 1-1-1-1 student (88.5 %); with the warm-up it reached
#   91.3 % in 50 (README, "The GPU check").
# - label smoothing 0.1 and a test-time flip (trainer.label_smoothing, trainer.eval_flip): the
#   usual short-schedule helpers, each worth a few tenths of a point.
# The 94 % attempt (issue 24), NOT YET RUN ON A GPU: the measured 91.27 % came with 99.4 % train
# accuracy, i.e. overfitting, so the levers are more augmentation and weight averaging:
# - data.augment.cutout=12 on top of the 4-pixel crop and flip: one 12x12 mean-coloured square
#   per image (DeVries & Taylor 2017, "Improved Regularization of CNNs with Cutout"; they use 16
#   for 200-epoch runs). 12 is what airbench96 (Keller Jordan, cifar10-airbench, airbench96.py)
#   adds to its 4-pixel translate and flip for ~40 epochs, about this check's schedule; a shorter
#   run fits less, so a smaller square than the paper's.
# - trainer.ema.decay=0.99, every=2: an average of the weights (README, "Weight averaging") with
#   a horizon of 1 / (1 - 0.99) = 100 updates = 200 steps, about two epochs at 96 steps per epoch
#   (49,000 / 512); the average, not the last weights, is validated and tested. start_step: the
#   first third of the run's steps (ema_overrides, from the planned epochs) are left out, so the
#   average starts from weights past the warm-up and the early, fast-moving phase.
# - the epochs: --epochs (50) at most, cut by the planner to part (b)'s share of --budget-s
#   (about 40 on an H100 next to part (c)); the run is timed from part (a)'s images/s first and
#   never cut below --min-epochs.
# - val_size 1000: validation only picks the best epoch (trainer.test_on=best), and with a
#   decaying schedule that is one of the last; every other image trains.
# - trainer.checkpoint=false: a one-shot check is never resumed, and the teacher's last.pt/best.pt
#   (weights + momentum, ~170 MB) would be written every epoch. Stage files are still written.
# - data.cache_dir=<workdir>/cache: part (b) decodes the JPEGs once and part (c) reads the
#   decoded tensor (~180 MB under --workdir, never under --out) instead of decoding them again.
# - distill.kd.temperature / alpha: labkit's defaults (T=4, alpha=0.5, the lab's alpha); the data
#   are augmented (crop + flip + cutout), so the teacher runs live on every batch.
VAL_SIZE = 1000
BATCH = 512
RECIPE = [
    "optimizer=sgd", "optimizer.lr=0.4", "scheduler=onecycle",
    "trainer.label_smoothing=0.1", "trainer.eval_flip=true",
    f"data.batch_size={BATCH}", "data.eval_batch_size=2048", f"data.val_size={VAL_SIZE}",
    "data.augment.cutout=12", "trainer.ema.decay=0.99", "trainer.ema.every=2",
    "trainer.checkpoint=false",
]
EMA_START = 1 / 3  # of the run's optimizer steps
# Part (c), the original lab's own recipe (its README's command: Adam 1e-3, batch 128, 50 epochs,
# T=3, alpha=0.5, teacher 3-4-6-3 and student 1-1-1-1 with skips), NOT YET RUN ON A GPU. Adam
# at 1e-3 and no schedule (scheduler=none; labkit's distill.py default is cosine), crop and flip
# as data=cifar10_jpeg has them (README, "From the original lab's distillation flags"), and none
# of labkit's additions: no label smoothing, no test-time flip, no EMA, no cutout. What differs
# from the lab: labkit's bf16 fast path (trainer=gpu), a 1,000-image validation split (the lab
# trained on all 50,000), and fewer epochs than its 50 (the planner fits them to part (c)'s share
# of --budget-s; at batch 128 an H100 is slower per image than at 512), reported beside its 50.
LAB_BATCH = 128
LAB_EPOCHS = 50
LAB_RECIPE = [
    "optimizer=adam", "optimizer.lr=1e-3", "scheduler=none",
    f"data.batch_size={LAB_BATCH}", "data.eval_batch_size=2048", f"data.val_size={VAL_SIZE}",
    "distill.kd.temperature=3", "distill.kd.alpha=0.5",
    "trainer.label_smoothing=0.0", "trainer.eval_flip=false", "data.augment.cutout=0",
    "trainer.checkpoint=false",
]
# the lab's README table (50 epochs): test accuracy (%) per stage
LAB_PUBLISHED = {"teacher": 85.95, "student_baseline": 82.36, "student_distill": 85.87}
# Planner: part (c)'s time per epoch over part (b)'s at the same images/s (batch 128 against 512:
# more, smaller steps; a guess until a GPU measures it), and part (c)'s share of the time left.
LAB_SLOWDOWN = 1.5
# --toy: the same commands at toy sizes (narrow models, one epoch) on a tiny generated JPEG folder
TOY_VAL_SIZE = 20
TOY_BATCH = 32
TOY_RECIPE = [
    "teacher.width=8", "student.width=4", f"data.batch_size={TOY_BATCH}", "data.eval_batch_size=256",
    f"data.val_size={TOY_VAL_SIZE}",
]
TOY_ONECYCLE = ["scheduler.pct_start=0.5"]  # one epoch of 4 batches: a 2-step warm-up
TOY_IMAGES = {"train": 12, "test": 4}  # per class
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# -- the report ----------------------------------------------------------------------------------
class Report:
    """The markdown file, rewritten after each part so that a cut-off call still leaves results."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.header: list[str] = []
        self.sections: list[list[str]] = []
        self.failed = False

    def section(self) -> list[str]:
        lines: list[str] = []
        self.sections.append(lines)
        return lines

    def render(self) -> str:
        parts = ["# labkit GPU check", "", *self.header]
        for lines in self.sections:
            parts += ["", *lines]
        return "\n".join(parts) + "\n"

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(self.render())


def fmt(value: Any, spec: str, scale: float | None = None) -> str:
    """``value`` (times ``scale``) formatted with ``spec``, or an em dash when it is missing."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    return format(value * scale if scale is not None else value, spec)


def cell(text: str) -> str:
    """``text`` safe inside a markdown table cell or code span."""
    return text.replace("|", "\\|").replace("`", "'")


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        return f"{name} ({memory:.0f} GiB), CUDA {torch.version.cuda}"
    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def ensure_packages(args: argparse.Namespace) -> str:
    """Make hydra-core, omegaconf and antlr4 importable, from ``--wheels`` if need be; a note."""
    import importlib.util
    import zipfile

    needed = ("hydra", "omegaconf", "antlr4")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if not missing:
        return ""
    wheels = sorted(Path(args.wheels).glob("*.whl"))
    if not wheels:
        return f"**{', '.join(missing)} not importable and no wheels in {args.wheels}**"
    site = args.workdir / "site"
    for wheel in wheels:  # a pure-Python wheel is installed by unzipping it
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    importlib.invalidate_caches()
    return f"{', '.join(missing)} from {', '.join(w.name for w in wheels)}"


# -- (a) throughput ------------------------------------------------------------------------------
def throughput_args(args: argparse.Namespace) -> argparse.Namespace:
    """throughput_cnn_gpu.py's options for this check: its defaults, fewer steps, or toy sizes."""
    import throughput_cnn_gpu as bench

    targs = bench.build_parser().parse_args([])
    targs.device, targs.steps, targs.warmup = args.device, args.steps, args.warmup
    if args.toy:
        targs.steps, targs.warmup, targs.batch, targs.width, targs.workers = 2, 1, 8, 8, 0
    return targs


def run_throughput(args: argparse.Namespace, report: Report) -> dict[str, float]:
    """Part (a); returns each model's fast-path images/s (what the distillation plan needs)."""
    lines = report.section()
    try:
        import throughput_cnn_gpu as bench

        targs = throughput_args(args)
        data = bench.make_data(targs)
    except Exception as exc:  # a missing wheel, no memory: one line, and part (b) still runs
        report.failed = True
        lines += ["## Throughput", "", f"**throughput failed before measuring:** {type(exc).__name__}: {exc}"]
        print(lines[-1])
        return {}
    lines += [
        f"## Throughput (images/s; batch {targs.batch}, {targs.steps} timed steps after {targs.warmup}, "
        f"synthetic 32x32 images, crop + flip, width {targs.width})",
        "",
        "| model | params | per-sample DataLoader | engine eager fp32 | engine fast path | "
        "fast / per-sample | fast / eager |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    fast: dict[str, float] = {}
    for name in ("student", "teacher"):
        start = time.perf_counter()
        try:
            r = bench.measure_model(data, name, targs)
        except Exception as exc:
            report.failed = True
            message = cell(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}")
            lines.append(f"| {name} | failed: {message} | — | — | — | — | — |")
        else:
            fast[name] = r["fast"]
            lines.append(f"| {name} | {r['params']:,} | {r['naive']:,.0f} | {r['eager']:,.0f} | "
                         f"{r['fast']:,.0f} | {r['fast'] / r['naive']:.2f} | {r['fast'] / r['eager']:.2f} |")
        print(f"throughput {name}: {lines[-1]} ({time.perf_counter() - start:.0f} s)", flush=True)
    del data
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the distillation runs in another process: give it the memory
    lines += ["", f"Per-sample loop: {targs.workers} DataLoader workers; fast path: bf16 autocast where "
              f"native, channels_last, cudnn.benchmark, fused Adam (README, \"CUDA fast path\")."]
    return fast


# -- (b) distillation ----------------------------------------------------------------------------
def write_toy_folder(dest: Path, seed: int = 0) -> Path:
    """A tiny CIFAR-layout JPEG folder: noisy copies of one smooth prototype per class."""
    from PIL import Image

    from labkit.data.synthetic import make_prototypes

    generator = torch.Generator().manual_seed(seed)
    prototypes = make_prototypes(len(CIFAR_CLASSES), 3, 32, generator)
    for split, per_class in TOY_IMAGES.items():
        labels = torch.arange(len(CIFAR_CLASSES)).repeat(per_class)
        noise = 30.0 * torch.randn((len(labels), 3, 32, 32), generator=generator)
        images = (prototypes[labels] + noise).round().clamp(0, 255).to(torch.uint8)
        for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
            folder = dest / split / CIFAR_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.jpg", quality=75)
    return dest


def prepare_data(args: argparse.Namespace, workdir: Path) -> tuple[Path, int]:
    """The image folder distill.py reads (unpacked from ``--data`` when it is a pack file) and
    its number of training images."""
    import pack_cifar

    source = Path(args.data)
    if args.toy:  # through the same pack and unpack as the real data
        source = workdir / "toy_pack.npz"
        pack_cifar.pack(write_toy_folder(workdir / "toy_src"), source)
    if source.is_dir():
        return source, sum(1 for _ in (source / "train").glob("*/*.jpg"))
    if not source.is_file():
        raise FileNotFoundError(f"--data {source}: no such file (make it with "
                                f"bash benchmarks/gpu_check_prepare.sh)")
    meta = pack_cifar.unpack(source, workdir / "CIFAR-10-JPEG")
    return workdir / "CIFAR-10-JPEG", int(meta["train"])


@dataclass
class Part:
    """One distill.py call of the check: part (b), labkit's recipe, or part (c), the lab's."""

    name: str  # "distill" (b) or "lab" (c): the log and run folder names next to --out
    title: str
    recipe: list[str]
    batch: int
    epochs: int  # at most
    min_epochs: int
    slowdown: float = 1.0  # planner: time per epoch over part (b)'s at the same images/s
    overrides: list[str] = field(default_factory=list)
    published: dict[str, float] | None = None  # the lab's test accuracies (%) per stage
    published_epochs: int | None = None


def parts(args: argparse.Namespace) -> list[Part]:
    """The distill.py calls this check makes, in order."""
    found = [Part("distill", "## Distillation on CIFAR-10 (JPEG): teacher ResNet-34 (3-4-6-3) -> student "
                  "(1-1-1-1), labkit's recipe", RECIPE, BATCH, args.epochs, args.min_epochs,
                  overrides=list(args.override))]
    if not args.skip_lab:
        found.append(Part("lab", "## The original lab's recipe (Adam 1e-3, batch 128, no schedule, T=3, "
                          "alpha=0.5, crop + flip; lab: 50 epochs), same teacher and student", LAB_RECIPE,
                          LAB_BATCH, args.lab_epochs, args.lab_min_epochs, LAB_SLOWDOWN,
                          list(args.lab_override), LAB_PUBLISHED, LAB_EPOCHS))
    return found


def plan_epochs(args: argparse.Namespace, part: Part, fast: dict[str, float], n_train: int,
                time_left: float) -> tuple[int, str]:
    """``part.epochs``, or fewer when part (a)'s throughput says they would not fit in ``time_left``.

    Per epoch: the teacher's training, the baseline student's, and the distilled student's plus
    a live teacher forward pass (about a third of a training step), scaled by what one H100 run
    measured (validation and evaluation included) and by ``part.slowdown``; before that,
    start-up and JPEG decoding.
    """
    if args.toy:
        return 1, ""
    if args.budget_s <= 0:
        return part.epochs, ""
    if "teacher" not in fast or "student" not in fast:
        return part.epochs, f"{part.epochs} epochs, not checked against --budget-s (no throughput measured)"
    teacher, student = fast["teacher"], fast["student"]
    # 0.6: on the H100 (2026-11-28) the stages trained at about twice part (a)'s images/s
    # (batch 512 and SGD there, batch 256 and Adam here); 4.9 s per epoch against 11.0 estimated at 1.2
    per_epoch = part.slowdown * 0.6 * n_train * (1 / teacher + 2 / student + 1 / (3 * teacher))
    fixed = 45 + n_train / 3000  # imports, decoding the JPEGs in one process, cuDNN autotuning
    fit = int((time_left - fixed) // per_epoch)
    estimate = f"estimated {per_epoch:.1f} s per epoch of all three stages + {fixed:.0f} s"
    if fit >= part.epochs:
        return part.epochs, f"{part.epochs} epochs per stage ({estimate}; {time_left:.0f} s left)"
    epochs = max(part.min_epochs, fit)
    return epochs, (f"**{epochs} epochs per stage, cut from {part.epochs}** to fit --budget-s "
                    f"({estimate}; {time_left:.0f} s left)")


def ema_overrides(part: Part, n_train: int, epochs: int, batch: int) -> list[str]:
    """The EMA's first step: the first EMA_START of the run's optimizer steps are left out (it
    depends on the planned epochs, so it is not in RECIPE). Nothing for a recipe without EMA."""
    if not any(item.startswith("trainer.ema.decay=") for item in part.recipe):
        return []
    return [f"trainer.ema.start_step={int(EMA_START * epochs * math.ceil(n_train / batch))}"]


def distill_command(args: argparse.Namespace, part: Part, data_dir: Path, run_dir: Path, epochs: int,
                    n_train: int) -> list[str]:
    cmd = [sys.executable, str(ROOT / "distill.py"),
           "model@teacher=resnet_teacher", "model@student=resnet_student", "data=cifar10_jpeg",
           f"data.path={data_dir}", "logger=none", "trainer=gpu", *part.recipe, f"trainer.epochs={epochs}",
           f"data.cache_dir={args.workdir / 'cache'}",
           f"hydra.run.dir={run_dir}", f"paths.log_dir={run_dir.parent / 'logs'}"]
    batch = part.batch
    if args.toy:
        cmd += TOY_RECIPE + (TOY_ONECYCLE if "scheduler=onecycle" in part.recipe else [])
        batch = TOY_BATCH
    cmd += ema_overrides(part, n_train, epochs, batch)
    if torch.device(args.device).type != "cuda":
        cmd.append(f"trainer.device={args.device}")
    return cmd + part.overrides


def run_subprocess(cmd: list[str], log_path: Path, deadline: float) -> tuple[int, str, float]:
    """Run ``cmd`` into ``log_path`` until ``deadline`` (then SIGTERM: the engine stops cleanly
    and the finished stages stay); its exit code, why it was stopped ("" if it was not), seconds."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    start, status = time.perf_counter(), ""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            timeout = None if deadline == float("inf") else max(10.0, deadline - time.perf_counter())
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc, status = proc.returncode, f"stopped after {time.perf_counter() - start:.0f} s (--budget-s)"
    return rc, status, time.perf_counter() - start


def run_distill(args: argparse.Namespace, report: Report, part: Part, fast: dict[str, float],
                budget_end: float, data: tuple[Path, int] | Exception) -> None:
    """Part (b) or (c): run distill.py, then put its stages' summaries into the report.

    distill.py gets until 40 s after ``budget_end``; then it is stopped (SIGTERM: the engine
    stops cleanly) and the stages that finished are reported.
    """
    lines = report.section()
    lines += [part.title, ""]
    if isinstance(data, Exception):
        report.failed = True
        lines.append(f"**distillation not run:** {type(data).__name__}: {data}")
        print(lines[-1])
        return
    data_dir, n_images = data
    val_size = TOY_VAL_SIZE if args.toy else VAL_SIZE
    n_train = n_images - val_size
    epochs, plan = plan_epochs(args, part, fast, n_train, budget_end - time.perf_counter())
    run_dir = args.workdir / f"{part.name}_{time.strftime('%Y%m%d_%H%M%S')}"
    cmd = distill_command(args, part, data_dir, run_dir, epochs, n_train)
    log_path = args.out.with_name(f"{args.out.stem}_{part.name}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shown = " ".join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))
    lines += [f"`{shown}`", "", f"- data: {n_train:,} training images ({val_size:,} more for validation) "
              f"from {data_dir}", f"- schedule: {plan or f'{epochs} epoch(s) per stage'}"]
    report.write()
    print(f"{part.name}: {epochs} epoch(s) per stage, {n_train:,} training images; log: {log_path}",
          flush=True)
    rc, status, wall = run_subprocess(cmd, log_path, budget_end + 40)
    if rc != 0 or status:
        report.failed = True
        last = last_error_line(log_path)
        status = status or f"exit code {rc}"
        lines.append(f"- **distill.py failed: {status}**{f': `{cell(last)}`' if last else ''} (full "
                     f"output: {log_path.name})")
        print(lines[-1])
        tail = log_path.read_text(errors="replace").splitlines()[-10:]
        print(f"last lines of {log_path}:\n  " + "\n  ".join(tail))
    else:
        lines.append(f"- distill.py: exit code 0 after {wall:.0f} s")
    stage_table(lines, run_dir, part)
    suffix = "_run" if part.name == "distill" else f"_{part.name}_run"
    copy_run_files(run_dir, args.out.with_name(f"{args.out.stem}{suffix}"))


def last_error_line(log_path: Path) -> str:
    """The line that says what went wrong: the last ``error:`` or exception line of the log."""
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line[:300]
    return lines[-1][:300] if lines else ""


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def stage_table(lines: list[str], run_dir: Path, part: Part) -> None:
    """One row per stage from its summary.json (a stage without one says so), then the gain; for
    the lab's recipe, its published accuracy beside each stage's."""
    job = read_json(run_dir / "summary.json") or {}
    summaries = {stage: read_json(run_dir / stage / "summary.json") for stage in STAGES}
    base, dist = summaries["student_baseline"], summaries["student_distill"]
    gain = job.get("distill_gain_pp")
    if gain is None and base and dist and "test_acc" in base and "test_acc" in dist:
        gain = 100 * (dist["test_acc"] - base["test_acc"])
    lab = part.published
    lab_head, lab_rule = ("", "")
    if lab:
        lab_head, lab_rule = f" lab's test acc (%, {part.published_epochs} epochs) |", "---:|"
    lines += ["", f"| stage | test acc (%) |{lab_head} test loss | params | epochs | train_time_s | "
              "images/s | precision / fast_path | gain vs baseline (pp) |",
              f"|---|---:|{lab_rule}---:|---:|---:|---:|---:|---|---:|"]
    for stage, s in summaries.items():
        lab_cell = f" {lab[stage]:.2f} |" if lab else ""
        if s is None:
            lines.append(f"| {stage} | not finished (no {stage}/summary.json) |{lab_cell} "
                         "— | — | — | — | — | — | — |")
            continue
        gain_cell = fmt(gain, "+.2f") if stage == "student_distill" else ""
        lines.append(f"| {stage} | {fmt(s.get('test_acc'), '.2f', 100)} |{lab_cell} "
                     f"{fmt(s.get('test_loss'), '.4f')} | "
                     f"{fmt(s.get('params'), ',')} | {s.get('epochs_completed', '—')} | "
                     f"{fmt(s.get('train_time_s'), '.1f')} | {fmt(s.get('train_images_per_s'), ',.0f')} | "
                     f"{s.get('precision', '—')} / {s.get('fast_path', '—')} | {gain_cell} |")
    lines.append("")
    teacher = summaries["teacher"]
    if job:
        lines.append(f"Distilled minus baseline: {fmt(gain, '+.2f')} points; teacher-student gap closed "
                     f"{fmt(job.get('gap_closed_pct'), '.0f')} % (T={job.get('temperature')}, "
                     f"alpha={job.get('alpha')}, teacher outputs {job.get('teacher_outputs')}).")
    if lab:
        lines.append(f"The lab's numbers are from its README (one run, {part.published_epochs} epochs, fp32, "
                     f"no validation split); labkit's ran the epochs in the table.")
    elif teacher and isinstance(teacher.get("test_acc"), int | float):
        verdict = "yes" if teacher["test_acc"] >= TARGET_TEACHER_ACC else "**no**"
        lines.append(f"Teacher at >= {100 * TARGET_TEACHER_ACC:.0f} % test accuracy: {verdict}.")


def copy_run_files(run_dir: Path, dest: Path) -> None:
    """The run's summaries, metrics, tables, plots and config, without weights, next to --out."""
    if not run_dir.is_dir():
        return
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".png", ".yaml", ".log") \
                and "checkpoints" not in path.parts:
            target = dest / path.relative_to(run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def run_distillations(args: argparse.Namespace, report: Report, fast: dict[str, float],
                      budget_end: float) -> None:
    """Parts (b) and (c) on the same data: (b) until its share of the time left, then (c) until
    ``budget_end`` (and whatever (b) left unused)."""
    try:
        data: tuple[Path, int] | Exception = prepare_data(args, args.workdir)
    except Exception as exc:
        data = exc
    todo = parts(args)
    left = budget_end - time.perf_counter()
    for i, part in enumerate(todo):
        end = budget_end
        if i == 0 and len(todo) > 1 and left != float("inf"):
            end = time.perf_counter() + (1 - args.lab_share) * left
        run_distill(args, report, part, fast, end, data)
        report.write()


# -- the command ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"), help="the markdown table")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/labkit_gpu_check"),
                        help="unpacked data and the distillation run")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="a pack file from pack_cifar.py, or a CIFAR-layout image folder")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".gpu",
                        help="wheels of hydra-core, omegaconf, antlr4, used when they are not installed")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override of part (b), labkit's recipe (repeatable), after it")
    parser.add_argument("--lab-override", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override of part (c), the lab's recipe (repeatable)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --toy)")
    parser.add_argument("--toy", action="store_true", help="toy sizes end to end (runs on a CPU)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs of each distillation stage (at most)")
    parser.add_argument("--min-epochs", type=int, default=10, help="never cut the schedule below this")
    parser.add_argument("--lab-epochs", type=int, default=LAB_EPOCHS,
                        help="epochs of each stage of part (c), the lab's recipe (at most)")
    parser.add_argument("--lab-min-epochs", type=int, default=3, help="never cut part (c) below this")
    parser.add_argument("--lab-share", type=float, default=0.35,
                        help="part (c)'s share of the time left after part (a); part (b) gets the rest")
    parser.add_argument("--budget-s", type=float, default=470,
                        help="wall time the whole check aims at; distill.py is stopped 40 s after it "
                             "(0: no plan, no limit)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per throughput loop")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-distill", action="store_true", help="skip parts (b) and (c)")
    parser.add_argument("--skip-lab", action="store_true", help="skip part (c), the lab's recipe")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.toy else "cuda")
    return args


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    sys.path[:0] = [str(ROOT), str(BENCH)]  # labkit is not installed on the lent machine
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = Report(args.out)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        report.header.append(f"**no CUDA device here** (torch {torch.__version__}); --device cpu or --toy "
                             f"checks the script on a CPU")
        report.write()
        print(report.render())
        return 2
    installed = ensure_packages(args)
    report.header += [f"- device: {device_line(device)}",
                      f"- torch {torch.__version__}, Python {platform.python_version()}, "
                      f"{os.cpu_count()} CPU cores{', toy sizes' if args.toy else ''}",
                      f"- started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
    if installed:
        report.header.append(f"- packages: {installed}")
    print("\n".join(report.header), flush=True)
    budget_end = start + args.budget_s if args.budget_s > 0 else float("inf")
    fast: dict[str, float] = {}
    if not args.skip_throughput:
        fast = run_throughput(args, report)
        report.write()
    if not args.skip_distill:
        run_distillations(args, report, fast, budget_end)
    wall = time.perf_counter() - start
    report.header.append(f"- total wall time: {wall:.0f} s ({wall / 60:.1f} min)"
                         f"{'; **some part failed**' if report.failed else ''}")
    report.write()
    print(report.render())
    print(f"written: {args.out}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

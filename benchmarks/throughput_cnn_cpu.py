"""CPU training throughput: the engine with precision=auto vs fp32, and a minimal hand-written loop.

    python benchmarks/throughput_cnn_cpu.py [--repeats 3] [--models fashion,student,mlp] [--ema]

For each model, in one process with interleaved repeats (best of --repeats):
  engine fp32   labkit's Engine, trainer.precision=fp32 (fp32, NCHW: the CPU path before the fast path)
  engine auto   the same Engine, trainer.precision=auto (what every run gets by default)
  engine bf16   trainer.precision=bf16 forced (shows why auto keeps the MLP in fp32)
  auto+ema      (with --ema) engine auto with trainer.ema.decay=0.999: the weight average's cost
  minimal       a hand-written loop in the precision and memory format auto chose, over a
                pre-normalised float tensor, fused Adam, no metrics or checks: the practical limit
Models: ``fashion`` is experiment=cnn_fashion_mnist's network (28x28x1), ``student`` the lab's
model=resnet_student (32x32x3, crop+flip as in the lab's recipe), ``mlp`` the default 2x256 MLP,
``cifar`` experiment=cnn_cifar10's half-width ConvPoolNet (batch 512, flip + 2-pixel translate).
Data are generated (only the shapes matter for speed). Only ratios are meaningful across machines.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labkit.data import SyntheticImages
from labkit.data.augment import CropFlip
from labkit.engine import Engine
from labkit.engine.accel import autocast, cpu_has_native_bf16
from labkit.engine.distributed import DistContext
from labkit.models import ConvPoolNet, FlexibleCNN, FlexibleMLP
from labkit.run import Runtime, prepare_model

CPU = torch.device("cpu")


@dataclass
class Case:
    make: Callable[[], nn.Module]
    shape: tuple[int, int, int]
    batch: int
    steps: int
    augment: dict | None = None


CASES = {
    "fashion": Case(lambda: FlexibleCNN(1, 10, [1, 1, 1, 1], width=16, stem_stride=2), (1, 28, 28), 128, 60),
    "student": Case(lambda: FlexibleCNN(3, 10, [1, 1, 1, 1], width=64), (3, 32, 32), 128, 12,
                    {"crop_padding": 4, "flip": True}),
    "mlp": Case(lambda: FlexibleMLP(input_shape=(1, 28, 28), depth=2, width=256), (1, 28, 28), 128, 300),
    "cifar": Case(lambda: ConvPoolNet(3, 10, widths=[32, 128, 128], stem_width=16, activation="relu"),
                  (3, 32, 32), 512, 12,
                  {"crop_padding": 2, "flip": True}),
}
WARMUP = 3


def make_data(case: Case) -> SyntheticImages:
    channels, size, _ = case.shape
    data = SyntheticImages(n_train=(case.steps + WARMUP) * case.batch, n_test=1, val_size=0,
                           in_channels=channels, image_size=size, batch_size=case.batch,
                           mean=[0.5], std=[0.25], augment=case.augment, drop_last=True)
    data.setup(CPU)
    return data


def built(case: Case, precision: str):
    torch.manual_seed(0)
    rt = Runtime(device=CPU, dist=DistContext(), precision=precision)
    return prepare_model(case.make(), rt)


def adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)


def time_engine(case: Case, data: SyntheticImages, precision: str, ema: bool = False) -> float:
    """Images/s of one Engine training epoch over ``case.steps`` batches, after a warm-up."""
    prepared = built(case, precision)
    engine = Engine(prepared.module, adam(prepared.module), device=CPU,
                    precision=prepared.fast_path.precision, log_every_n_steps=50,
                    ema={"decay": 0.999} if ema else None)
    loader = data.loader("train", torch.Generator().manual_seed(0))
    warm = data.loader("train", torch.Generator().manual_seed(1))
    warm.images, warm.targets = warm.images[: WARMUP * case.batch], warm.targets[: WARMUP * case.batch]
    engine.train_epoch(warm, len(warm))
    loader.images, loader.targets = loader.images[WARMUP * case.batch:], loader.targets[WARMUP * case.batch:]
    return engine.train_epoch(loader, len(loader))["images_per_s"]


def time_minimal(case: Case, data: SyntheticImages) -> float:
    """A plain loop in the fast path auto chose: the floor of the engine's overhead."""
    prepared = built(case, "auto")
    model, plan = prepared.module, prepared.fast_path
    optimizer = adam(model)
    images, targets = data._get("train")
    crop_flip = CropFlip(**case.augment) if case.augment else None
    generator = torch.Generator().manual_seed(0)
    normalised = (images.float() / 255 - 0.5) / 0.25
    order = torch.randperm(len(images), generator=generator)
    seen, start = 0, time.perf_counter()
    for step in range(case.steps + WARMUP):
        if step == WARMUP:
            seen, start = 0, time.perf_counter()
        index = order[step * case.batch : (step + 1) * case.batch]
        if crop_flip is not None:
            x = (crop_flip(images[index], generator).float() / 255 - 0.5) / 0.25
        else:
            x = normalised[index]
        with autocast(CPU, plan.precision):
            loss = F.cross_entropy(model(x), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(index)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="fashion,student,mlp,cifar")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every case's timed steps")
    parser.add_argument("--ema", action="store_true", help="also time auto with trainer.ema (decay 0.999)")
    args = parser.parse_args()
    names = args.models.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16 on this CPU: "
          f"{cpu_has_native_bf16()}, best of {args.repeats} interleaved repeats")
    runs: dict[tuple[str, str], Callable[[], float]] = {}
    for name in names:
        case = CASES[name]
        case.steps = max(2, round(case.steps * args.steps_scale))
        data = make_data(case)
        for column in ("fp32", "auto", "bf16"):
            runs[name, column] = lambda c=case, d=data, p=column: time_engine(c, d, p)
        runs[name, "minimal"] = lambda c=case, d=data: time_minimal(c, d)
        if args.ema:
            runs[name, "auto+ema"] = lambda c=case, d=data: time_engine(c, d, "auto", ema=True)
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.repeats):
        for key, run in runs.items():
            best[key] = max(best[key], run())
    print(f"{'model':<8} {'auto path':<30} {'fp32':>8} {'auto':>8} {'bf16':>8} {'minimal':>8} "
          f"{'auto/fp32':>10} {'auto/minimal':>13}   (images/s)")
    for name in names:
        r = {column: best[name, column] for column in ("fp32", "auto", "bf16", "minimal")}
        path = built(CASES[name], "auto").fast_path.describe()
        print(f"{name:<8} {path:<30} {r['fp32']:>8,.0f} {r['auto']:>8,.0f} {r['bf16']:>8,.0f} "
              f"{r['minimal']:>8,.0f} {r['auto'] / r['fp32']:>10.2f} {r['auto'] / r['minimal']:>13.2f}")
        if args.ema:
            ema = best[name, "auto+ema"]
            print(f"{'':<8} auto+ema {ema:,.0f} images/s: {ema / r['auto']:.3f} of auto without it")


if __name__ == "__main__":
    main()

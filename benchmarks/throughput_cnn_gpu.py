"""Training throughput of the lab's teacher and student CNNs on a GPU: fast path vs eager vs naive.

    python benchmarks/throughput_cnn_gpu.py [--steps 200] [--warmup 30] [--batch 256] [--compile]

Each model (student: basic blocks 1-1-1-1, teacher: 3-4-6-3, width 64, 10 classes) trains for
``--steps`` steps on CIFAR-shaped synthetic images with 4-pixel crop + flip augmentation, three ways:
  fast    labkit's Engine over the device-resident uint8 TensorLoader (batched augmentation on
          the GPU), bf16 autocast, channels_last, cudnn.benchmark, fused Adam
          (and torch.compile with --compile)
  eager   the same Engine and loader in fp32, NCHW, no cudnn autotuning (fused Adam kept)
  naive   a torchvision-style DataLoader applying RandomCrop+RandomHorizontalFlip+ToTensor+
          Normalize to each PIL image in --workers processes, copying each batch to the GPU,
          plain Adam and ``loss.item()`` every step, as the original lab did
Warm-up steps (cuDNN autotuning, compilation, worker start-up) are not timed. Only ratios
mean something across machines. ``--device cpu --steps 2 --batch 8 --width 8`` checks that
the script runs on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F

from labkit.data import SyntheticImages, TensorLoader
from labkit.engine import Engine
from labkit.engine.accel import FastPath, apply_fast_path, plan_fast_path
from labkit.engine.optim import build_optimizer
from labkit.models import FlexibleCNN, count_parameters

MODELS = {"student": [1, 1, 1, 1], "teacher": [3, 4, 6, 3]}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def make_model(layers: list[int], width: int) -> FlexibleCNN:
    torch.manual_seed(0)
    return FlexibleCNN(3, 10, layers, width=width)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_engine(data: SyntheticImages, layers: list[int], args, fast: bool) -> float:
    """Images/s of the Engine's training epoch over ``args.steps`` batches."""
    device = torch.device(args.device)
    model = make_model(layers, args.width).to(device)
    if fast:
        plan = plan_fast_path("auto", device, model, compile=args.compile)
        apply_fast_path(model, plan)
    else:
        plan = FastPath()
        torch.backends.cudnn.benchmark = False
    optimizer = build_optimizer(functools.partial(torch.optim.Adam, lr=1e-3), model)
    engine = Engine(model, optimizer, device=device, precision=plan.precision, log_every_n_steps=10**9)
    images, targets = data._get("train")

    def loader(n: int, seed: int) -> TensorLoader:
        # the training loader's options over the first n images (a loader's size is fixed when
        # it is made, so the images are cut before, not after)
        options = data.loader_options("train", torch.Generator(device=device).manual_seed(seed), 0, 1, None)
        return TensorLoader(images[:n], targets[:n], **{**options, "drop_last": True})

    warm = loader(args.warmup * args.batch, 1)
    engine.train_epoch(warm, len(warm))
    timed = loader(args.steps * args.batch, 0)
    metrics = engine.train_epoch(timed, len(timed))
    return metrics["images_per_s"]


class PerSampleImages(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per item: uint8 HWC array -> PIL image -> transforms."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        from torchvision import transforms

        self.images = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        self.targets = targets.cpu().tolist()
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.targets[i]


def time_naive(data: SyntheticImages, layers: list[int], args) -> float:
    """Images/s of a per-sample DataLoader loop in eager fp32."""
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = False
    images, targets = data._get("train")
    dataset = PerSampleImages(images[: (args.steps + args.warmup) * args.batch],
                              targets[: (args.steps + args.warmup) * args.batch])
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    model = make_model(layers, args.width).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, start = 0, None
    for step, (x, y) in enumerate(loader):
        if step == args.warmup:
            synchronize(device)
            start = time.perf_counter()
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the lab's running-loss bookkeeping: one host sync per step
        if start is not None:
            seen += len(y)
    synchronize(device)
    return seen / (time.perf_counter() - start)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options; other scripts build their ``args`` from it (benchmarks/gpu_check.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps before timing")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=64, help="FlexibleCNN width (64: the lab's)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the naive loop")
    parser.add_argument("--models", default="student,teacher")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the fast path")
    parser.add_argument("--device", default="cuda")
    return parser


def make_data(args) -> SyntheticImages:
    """Enough CIFAR-shaped synthetic images for the warm-up and timed steps, set up on the device."""
    n = (args.steps + args.warmup) * args.batch
    data = SyntheticImages(n_train=n, n_test=1, val_size=0, in_channels=3, image_size=32,
                           batch_size=args.batch, mean=MEAN, std=STD,
                           augment={"crop_padding": 4, "flip": True})
    data.setup(torch.device(args.device))
    return data


def measure_model(data: SyntheticImages, model_name: str, args) -> dict[str, float]:
    """Parameters and images/s of the three loops for one of ``MODELS``."""
    layers = MODELS[model_name]
    return {
        "params": count_parameters(make_model(layers, args.width)),
        "naive": time_naive(data, layers, args),
        "eager": time_engine(data, layers, args, fast=False),
        "fast": time_engine(data, layers, args, fast=True),
    }


def main() -> None:
    args = build_parser().parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this benchmark is for GPUs (--device cpu only checks it runs)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, batch {args.batch}, {args.steps} timed steps")
    data = make_data(args)
    print(f"{'model':<8} {'params':>11} {'naive':>9} {'eager':>9} {'fast':>9} "
          f"{'fast/naive':>11} {'fast/eager':>11}   (images/s)")
    for model_name in args.models.split(","):
        r = measure_model(data, model_name, args)
        print(f"{model_name:<8} {r['params']:>11,} {r['naive']:>9,.0f} {r['eager']:>9,.0f} "
              f"{r['fast']:>9,.0f} {r['fast'] / r['naive']:>11.2f} {r['fast'] / r['eager']:>11.2f}")


if __name__ == "__main__":
    main()

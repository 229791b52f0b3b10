"""Training throughput of the default MNIST MLP: labkit's engine vs a minimal loop vs a naive loop.

    python benchmarks/throughput_mlp.py [--images 30000] [--repeats 3] [--data-root DIR]

All three train the default MLP of conf/model/mlp.yaml (784-256-256-10) with Adam at batch 128
on the same images:
  engine   labkit's Engine over its device-resident uint8 TensorLoader (metrics included);
           it also uses torch's fused Adam, as labkit does by default (trainer.fused_optimizer)
  minimal  a hand-written loop over a pre-normalised float tensor (the floor of overhead),
           with torch's default Adam and with fused Adam (like for like with the engine)
  naive    a torchvision-style DataLoader applying ToTensor+Normalize to each PIL sample,
           as the original lab did
Timings are the best of --repeats runs; only ratios are meaningful across machines.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from labkit.config.resolvers import PROJECT_ROOT
from labkit.data import MNISTFamily
from labkit.engine import Engine
from labkit.engine.optim import build_optimizer
from labkit.models import FlexibleMLP

BATCH = 128


def make_model() -> FlexibleMLP:
    """The default MLP, with depth and width read from conf/model/mlp.yaml."""
    cfg = OmegaConf.load(PROJECT_ROOT / "conf" / "model" / "mlp.yaml")
    torch.manual_seed(0)
    return FlexibleMLP(input_shape=(1, 28, 28), depth=cfg.depth, width=cfg.width)


def time_engine(data: MNISTFamily, n: int) -> float:
    model = make_model()
    optimizer = build_optimizer(functools.partial(torch.optim.Adam, lr=1e-3), model)
    engine = Engine(model, optimizer, log_every_n_steps=50)
    loader = data.loader("train", torch.Generator().manual_seed(0))
    loader.images, loader.targets = loader.images[:n], loader.targets[:n]
    start = time.perf_counter()
    engine.train_epoch(loader, len(loader))
    return n / (time.perf_counter() - start)


def time_minimal(images: torch.Tensor, targets: torch.Tensor, n: int, fused: bool) -> float:
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    x = ((images[:n].float() / 255 - 0.1307) / 0.3081).reshape(n, -1)
    y = targets[:n]
    start = time.perf_counter()
    perm = torch.randperm(n)
    for i in range(0, n, BATCH):
        idx = perm[i : i + BATCH]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - start)


class PerSampleMNIST(torch.utils.data.Dataset):
    """What torchvision's MNIST does per item: uint8 -> PIL image -> transform."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        from torchvision import transforms

        self.images, self.targets = images[:, 0].numpy(), targets.tolist()
        self.transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
        )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L")), self.targets[i]


def time_naive(images: torch.Tensor, targets: torch.Tensor, n: int) -> float:
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        PerSampleMNIST(images[:n], targets[:n]), batch_size=BATCH, shuffle=True, num_workers=0
    )
    start = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", type=Path, default=PROJECT_ROOT / "data")
    args = parser.parse_args()

    data = MNISTFamily(root=args.data_root, val_size=0, mean=[0.1307], std=[0.3081])
    data.setup("cpu")
    images, targets = data._get("train")
    n = min(args.images, len(images))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n} images/run, "
          f"batch {BATCH}, best of {args.repeats}")
    runs = {
        "engine": lambda: time_engine(data, n),
        "minimal": lambda: time_minimal(images, targets, n, fused=False),
        "minimal+fused": lambda: time_minimal(images, targets, n, fused=True),
        "naive": lambda: time_naive(images, targets, n),
    }
    # Repeats are interleaved so that warm-up and machine noise hit every loop alike.
    results = dict.fromkeys(runs, 0.0)
    for _ in range(args.repeats):
        for name, fn in runs.items():
            results[name] = max(results[name], fn())
    for name, value in results.items():
        print(f"{name:>14}: {value:>10,.0f} img/s")
    for other, target in (("minimal", "0.9"), ("minimal+fused", "0.9"), ("naive", "8")):
        ratio = results["engine"] / results[other]
        print(f"engine / {other + ':':<14} {ratio:5.2f}  (target >= {target})")


if __name__ == "__main__":
    main()

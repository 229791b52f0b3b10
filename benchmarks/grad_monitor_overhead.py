"""Cost of the per-block gradient monitor: engine throughput with and without it.

    python benchmarks/grad_monitor_overhead.py [--images 30000] [--repeats 5] [--depth 2] [--width 256]

Trains the default MLP of conf/model/mlp.yaml (784-256-256-10, Adam, batch 128) for one pass
over the same MNIST images through labkit's Engine, once plainly and once with a
GradientMonitor (per-step block norms accumulated on the device, read once per epoch; the
one-batch probes at the start and end are not included, they run once per training run).
Repeats alternate between the two so machine noise hits both alike; the best of each is kept.
Target: overhead below 10 %.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from labkit.analysis.grad_monitor import GradientMonitor
from labkit.config.resolvers import PROJECT_ROOT
from labkit.data import MNISTFamily
from labkit.engine import Engine
from labkit.engine.optim import build_optimizer
from labkit.models import FlexibleMLP


def images_per_second(data: MNISTFamily, n: int, depth: int, width: int, monitor: bool) -> float:
    torch.manual_seed(0)
    model = FlexibleMLP(input_shape=(1, 28, 28), depth=depth, width=width)
    optimizer = build_optimizer(functools.partial(torch.optim.Adam, lr=1e-3), model)
    callbacks = [GradientMonitor()] if monitor else []
    engine = Engine(model, optimizer, callbacks=callbacks, log_every_n_steps=50)
    loader = data.loader("train", torch.Generator().manual_seed(0))
    loader.images, loader.targets = loader.images[:n], loader.targets[:n]
    for callback in callbacks:
        callback.on_fit_start(engine)
    start = time.perf_counter()
    engine.train_epoch(loader, len(loader))
    row: dict = {}
    for callback in callbacks:  # the once-per-epoch read-back belongs to the cost
        callback.on_epoch_end(engine, row)
    return n / (time.perf_counter() - start)


def main() -> None:
    defaults = OmegaConf.load(PROJECT_ROOT / "conf" / "model" / "mlp.yaml")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=defaults.depth)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--data-root", type=Path, default=PROJECT_ROOT / "data")
    args = parser.parse_args()

    data = MNISTFamily(root=args.data_root, val_size=0, mean=[0.1307], std=[0.3081])
    data.setup("cpu")
    n = min(args.images, data.split_size("train"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MLP depth {args.depth} "
          f"width {args.width}, {n} images/run, batch {data.batch_size}, best of {args.repeats}")
    best = {False: 0.0, True: 0.0}
    for _ in range(args.repeats):
        for monitor in (False, True):
            best[monitor] = max(best[monitor],
                                images_per_second(data, n, args.depth, args.width, monitor))
    overhead = best[False] / best[True] - 1
    print(f"{'without monitor':>16}: {best[False]:>10,.0f} img/s")
    print(f"{'with monitor':>16}: {best[True]:>10,.0f} img/s")
    print(f"overhead: {100 * overhead:+.1f} % of training time (target < 10 %)")


if __name__ == "__main__":
    main()

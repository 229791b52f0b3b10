"""Cost of ``optimizer=muon`` per training step against fused Adam, on the experiment=cnn_fashion_mnist net.

    OMP_NUM_THREADS=1 python benchmarks/muon_step_cost.py [--steps 30] [--repeats 5] [--batch 128]

One process, one model (FlexibleCNN 1-1-1-1, width 16, stride-2 stem, 28x28x1, with labkit's fast
path: bf16 autocast and channels_last where this CPU runs bf16 natively), random batches kept in
memory. Forward, backward and optimizer step are timed for each optimizer; repeats alternate
between them so machine noise hits both alike, and the best repeat of each is kept. Prints the
milliseconds per step and the Muon / Adam ratio (reported as a ratio: absolute times on a shared
CPU say little).
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F

from labkit.engine.accel import apply_fast_path, autocast, plan_fast_path
from labkit.engine.muon import muon
from labkit.engine.optim import build_optimizer
from labkit.models import FlexibleCNN

OPTIMIZERS = {
    "adam": functools.partial(torch.optim.Adam, lr=2e-3),
    "muon": functools.partial(muon, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0,
                              adjust_lr_fn="original", ns_steps=5,
                              aux=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0)),
}


def time_steps(name: str, batch: int, steps: int) -> float:
    """Seconds per training step of a fresh model with optimizer ``name`` (after 3 warm-up steps)."""
    torch.manual_seed(0)
    model = FlexibleCNN(1, 10, [1, 1, 1, 1], width=16, stem_stride=2)
    plan = plan_fast_path("auto", torch.device("cpu"), model)
    model = apply_fast_path(model, plan)
    optimizer = build_optimizer(OPTIMIZERS[name], model)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        with autocast(torch.device("cpu"), plan.precision):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    best = {name: float("inf") for name in OPTIMIZERS}
    for _ in range(args.repeats):
        for name in OPTIMIZERS:
            best[name] = min(best[name], time_steps(name, args.batch, args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}")
    for name, seconds in best.items():
        print(f"{name}: {seconds * 1e3:.2f} ms/step")
    print(f"muon / adam: {best['muon'] / best['adam']:.2f}")


if __name__ == "__main__":
    main()

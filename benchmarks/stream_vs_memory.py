"""Training throughput on the real CIFAR-10 JPEGs: data.storage=memory vs data.storage=stream.

    python benchmarks/stream_vs_memory.py [--repeats 3] [--workers 1,2] [--models student,fashion]

One process, repeats interleaved (best of --repeats). For each model the same training step (the
fast path ``trainer.precision=auto`` chooses, fused Adam, crop + flip as data=cifar10_jpeg) is
fed by the in-memory loader and by the streaming loader with each number of decoding workers;
``loader only`` rows time the loaders without a model (where the time goes). Models: ``student``
is the lab's model=resnet_student (compute-bound), ``fashion`` experiment=cnn_fashion_mnist's
network (width 16, stride-2 stem; input-bound) on the same 32x32x3 images. Only ratios are
meaningful: the other core of this machine may be busy.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from labkit.data import ImageFolder
from labkit.engine.accel import autocast
from labkit.engine.distributed import DistContext
from labkit.models import FlexibleCNN
from labkit.run import Runtime, prepare_model

FOLDER = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "CIFAR-10-JPEG"
CPU = torch.device("cpu")
MODELS = {  # name: (builder, timed steps of batch 128)
    "student": (lambda: FlexibleCNN(3, 10, [1, 1, 1, 1], width=64), 10),
    "fashion": (lambda: FlexibleCNN(3, 10, [1, 1, 1, 1], width=16, stem_stride=2), 40),
}
WARMUP = 3


def folder_data(storage: str, workers: int, cache: str | None) -> ImageFolder:
    data = ImageFolder(path=str(FOLDER.resolve()), cache_dir=cache, resize=False, storage=storage,
                       num_workers=workers, num_classes=10, in_channels=3, image_size=32, val_size=5000,
                       batch_size=128, mean=[0.4913, 0.4821, 0.4465], std=[0.2452, 0.2428, 0.2606],
                       augment={"crop_padding": 4, "flip": True})
    data.setup(CPU)
    return data


def images_per_s(loader, steps: int, step=None) -> float:
    """Images/s over ``steps`` batches after ``WARMUP`` (``step``: the training step, or none)."""
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
    seen, start = 0, 0.0
    for i, batch in enumerate(batches):
        if i == WARMUP:
            seen, start = 0, time.perf_counter()
        if i == WARMUP + steps:
            break
        if step is not None:
            step(batch)
        seen += len(batch.targets)
    return seen / (time.perf_counter() - start)


def training_step(name: str):
    torch.manual_seed(0)
    prepared = prepare_model(MODELS[name][0](), Runtime(device=CPU, dist=DistContext(), precision="auto"))
    model, precision = prepared.module, prepared.fast_path.precision
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step(batch) -> None:
        with autocast(CPU, precision):
            loss = F.cross_entropy(model(batch.inputs), batch.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="decoding worker processes to try")
    parser.add_argument("--models", default="student,fashion")
    parser.add_argument("--cache-dir", default=None, help="the memory path's decoded cache (else decode)")
    args = parser.parse_args()
    start = time.perf_counter()
    paths = {"memory": folder_data("memory", 0, args.cache_dir)}
    print(f"memory path set up in {time.perf_counter() - start:.1f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), best of {args.repeats} interleaved repeats")
    for workers in (int(w) for w in args.workers.split(",")):
        paths[f"stream, {workers} worker(s)"] = folder_data("stream", workers, None)
    loaders = {label: data.loader("train", torch.Generator().manual_seed(0)) for label, data in paths.items()}
    rows: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):
        for label, loader in loaders.items():
            key = ("loader only", label)
            rows[key] = max(rows.get(key, 0.0), images_per_s(loader, 40))
        for name in args.models.split(","):
            step = training_step(name)
            for label, loader in loaders.items():
                speed = images_per_s(loader, MODELS[name][1], step)
                rows[name, label] = max(rows.get((name, label), 0.0), speed)
    print(f"{'what':<12} {'loader':<22} {'images/s':>9} {'x memory':>9}")
    for (what, label), speed in rows.items():
        print(f"{what:<12} {label:<22} {speed:>9.0f} {speed / rows[what, 'memory']:>9.2f}")


if __name__ == "__main__":
    main()

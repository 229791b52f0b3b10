"""Resume through the stream path: SIGTERM mid-epoch, resume, compare with an uninterrupted run.

    python benchmarks/stream_resume_check.py <image folder> [--image-size 64] [--out /tmp/stream-resume]

Three ``train.py`` runs on the folder with ``data.storage=stream``, one worker, the CPU and
``trainer.deterministic=true``: an uninterrupted one, one stopped by SIGTERM at epoch 2 step 7
(sent from inside the streaming loader, as a preemption would arrive), and its resume; prints
both runs' per-epoch and final metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stop_inside(epoch_at: int, step_at: int, args: list[str]) -> None:
    """Run train.py in this process with a SIGTERM after training batch ``step_at`` of ``epoch_at``."""
    sys.path.insert(0, str(ROOT))
    from labkit.data.stream import StreamLoader

    original, epochs = StreamLoader.iter_from, [0]

    def stopping(self, start_batch, generator_state=None):
        if not self.shuffle:  # validation and test
            yield from original(self, start_batch, generator_state)
            return
        epochs[0] += 1
        for step, batch in enumerate(original(self, start_batch, generator_state), start=start_batch + 1):
            yield batch
            if epochs[0] == epoch_at and step == step_at:
                os.kill(os.getpid(), signal.SIGTERM)

    StreamLoader.iter_from = stopping
    sys.argv = [str(ROOT / "train.py"), *args]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")


def metrics(run: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((run / "summary.json").read_text())
    return summary, [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    if sys.argv[1:2] == ["--stop-inside"]:
        stop_inside(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", default="/tmp/stream-resume")
    args = parser.parse_args()
    out = Path(args.out)
    common = ["data=imagefolder", f"data.path={args.folder}", f"data.image_size={args.image_size}",
              "data.storage=stream", "data.num_workers=1", "data.val_size=200", "data.train_size=640",
              "data.batch_size=32", "model=mlp", "trainer.epochs=2", "trainer.deterministic=true",
              "trainer.device=cpu", "logger=none"]
    train = [sys.executable, str(ROOT / "train.py"), *common]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    steps = [("uninterrupted", train + [f"hydra.run.dir={out / 'reference'}"]),
             ("stopped", [sys.executable, __file__, "--stop-inside", "2", "7", *common,
                          f"hydra.run.dir={out / 'resumed'}"]),
             ("resumed", train + [f"hydra.run.dir={out / 'resumed'}", "trainer.resume=true"])]
    for name, command in steps:
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        print(f"{name}: exit status {result.returncode}")
    for name in ("reference", "resumed"):
        summary, rows = metrics(out / name)
        print(f"{name:<10} test_acc {summary['test_acc']:.6f} test_loss {summary['test_loss']:.9f} "
              f"per epoch (train_loss, val_acc): {[(r['train_loss'], r['val_acc']) for r in rows]}")


if __name__ == "__main__":
    main()

"""Run train.py and send this process a signal at a chosen training step (test helper).

    python tests/helpers/fault_runner.py FAULT EPOCH STEP [hydra overrides...]

It wraps the TensorLoader so that right after batch STEP of epoch EPOCH has been handed to the
engine, the process receives the signal FAULT (KILL for a hard crash, TERM for preemption, INT
for Ctrl-C), or, with FAULT=NAN, batch STEP itself is filled with NaN (a corrupt input). The
production code is untouched; only the loader seen by this process is instrumented.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from labkit.data.loader import TensorLoader  # noqa: E402

fault, epoch_at, step_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
original = TensorLoader.iter_from
calls = {"train_epochs": 0}


def instrumented(self, start_batch, generator_state=None):
    if not self.shuffle:  # validation / test loaders
        yield from original(self, start_batch, generator_state)
        return
    calls["train_epochs"] += 1
    for step, batch in enumerate(original(self, start_batch, generator_state), start=start_batch + 1):
        hit = calls["train_epochs"] == epoch_at and step == step_at
        if hit and fault == "NAN":
            batch = batch._replace(inputs=torch.full_like(batch.inputs, float("nan")))
        yield batch
        if hit and fault != "NAN":
            os.kill(os.getpid(), getattr(signal, f"SIG{fault}"))


TensorLoader.iter_from = instrumented
sys.argv = [str(ROOT / "train.py"), *sys.argv[4:]]

runpy.run_path(str(ROOT / "train.py"), run_name="__main__")

"""Per-block gradient norms during training: the measurement behind the depth/residual studies.

The L2 norm of each block's weight gradients tells whether the loss signal still reaches the
early layers: in a deep plain network without normalisation the first blocks' norms are orders
of magnitude below the last ones' (vanishing gradients), with skip connections they are not.

:class:`GradientMonitor` is an engine :class:`~labkit.engine.Callback`. After every backward
pass it computes one norm per block and adds it to running sums on the device; the host reads
them once per epoch, so the monitor costs one fused norm over the weight gradients per step.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labkit.analysis.grads import plot_grad_norms
from labkit.data.loader import Batch
from labkit.engine.engine import Callback, Criterion, Engine
from labkit.models.summary import describe_model
from labkit.tracking.files import write_json

#: ``(name, depth position, weight tensors)`` of one block, in depth order.
WeightGroup = tuple[str, int, list[nn.Parameter]]


def is_layer_weight(name: str, param: nn.Parameter) -> bool:
    """Weight matrices and kernels of Linear/Conv layers; biases and norm scales are left out."""
    return name.rsplit(".", 1)[-1] == "weight" and param.dim() >= 2


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a DistributedDataParallel or ``torch.compile`` wrapper."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def weight_groups(model: nn.Module) -> list[WeightGroup]:
    """The model's layer weights grouped by block, in depth order.

    A model exposing ``model.blocks`` (FlexibleMLP, FlexibleCNN) gets one group per block,
    ``block0``, ``block1``, ..., at positions 0, 1, ...; weights registered before the first
    block form ``stem`` (position -1), those after the last block ``head`` (position
    ``len(blocks)``), and any between two blocks count with the block before them. A model
    without ``blocks`` gets one group per top-level child module that holds weights.
    """
    model = unwrap(model)
    weights = [(n, p) for n, p in model.named_parameters() if is_layer_weight(n, p)]
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        groups: dict[str, list[nn.Parameter]] = {}
        for name, param in weights:
            groups.setdefault(name.split(".", 1)[0], []).append(param)
        return [(name, i, params) for i, (name, params) in enumerate(groups.items())]

    blocks = list(blocks)
    n_blocks = len(blocks)
    block_of = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    stem: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    per_block: list[list[nn.Parameter]] = [[] for _ in range(n_blocks)]
    last_block = -1
    for _, param in weights:
        index = block_of.get(id(param))
        if index is not None:
            per_block[index].append(param)
            last_block = max(last_block, index)
        elif last_block < 0:
            stem.append(param)
        elif last_block == n_blocks - 1:
            head.append(param)
        else:
            per_block[last_block].append(param)
    groups_out: list[WeightGroup] = [("stem", -1, stem)] if stem else []
    groups_out += [(f"block{i}", i, params) for i, params in enumerate(per_block) if params]
    if head:
        groups_out.append(("head", n_blocks, head))
    return groups_out


def combine_norms(norms: torch.Tensor, group_index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per-group L2 norms from per-tensor ones (last dim): ``sqrt(sum of squares)`` per group."""
    squares = norms.new_zeros(*norms.shape[:-1], n_groups)
    return squares.index_add_(-1, group_index, norms.square()).sqrt_()


def tensor_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each gradient tensor, as one vector (one fused kernel where torch has it)."""
    return torch.stack(torch._foreach_norm(grads))


def probe_grad_norms(
    model: nn.Module,
    batch: Batch,
    criterion: Criterion,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, float]:
    """Per-block gradient norms of ``criterion`` on one batch, leaving no trace on the model.

    The forward pass runs in training mode, as the training steps do, but the ``.grad`` fields,
    the buffers (BatchNorm running statistics) and the random number generators are left as
    they were, so a run with the probe trains exactly like one without it.
    """
    model = unwrap(model)  # no DDP gradient synchronisation for a local measurement
    groups = weight_groups(model)
    params = [p for _, _, ps in groups for p in ps]
    index = torch.tensor([g for g, (_, _, ps) in enumerate(groups) for _ in ps],
                         device=batch.inputs.device)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    cuda = [batch.inputs.device] if batch.inputs.is_cuda else []
    try:
        with torch.random.fork_rng(devices=cuda):
            model.train()
            with autocast():
                loss = criterion(model(batch.inputs), batch)
            grads = torch.autograd.grad(loss.float(), params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        values = combine_norms(tensor_norms(grads), index, len(groups)).tolist()
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    return {name: value for (name, _, _), value in zip(groups, values, strict=True)}


class GradientMonitor(Callback):
    """Records per-block gradient norms: every step (as epoch mean and max) and in two probes.

    * After each backward pass the norm of every weight gradient is kept as one small device
      vector; ``on_epoch_end`` groups them by block, reduces them to mean and max over the
      epoch's steps with a single read-back, and puts ``grad_norms = {block: {"mean": ..,
      "max": ..}}`` into the epoch's metric row, which the trackers write to ``metrics.jsonl``
      and W&B.
    * With a ``probe_batch``, the norms on that fixed batch are measured before the first step
      and after the last one, written to ``<run_dir>/grad_norms.json`` and drawn as
      ``grad_norms.png`` (norm against depth, log scale).
    """

    def __init__(self, probe_batch: Batch | None = None, run_dir: str | Path | None = None) -> None:
        self.probe_batch = probe_batch
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.probes: dict[str, dict[str, float]] = {}
        self.groups: list[WeightGroup] = []
        self._step_norms: list[torch.Tensor] = []

    # -- engine hooks -------------------------------------------------------------------------
    def on_fit_start(self, engine: Engine) -> None:
        self.groups = weight_groups(engine.model)
        self._params = [p for _, _, ps in self.groups for p in ps]
        self._index = torch.tensor([g for g, (_, _, ps) in enumerate(self.groups) for _ in ps],
                                   device=engine.device)
        self._step_norms = []
        if self.probe_batch is None:
            return
        if engine.epoch == 0 and not engine.history:
            self.probes["init"] = self._probe(engine)
            if self.run_dir is not None:  # written now too, so a crashed run keeps it
                self.save(engine.model)
        else:  # resumed: the initial probe is the one the first attempt wrote
            self.probes.update(self._stored_init())

    def on_after_backward(self, engine: Engine) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        # one small device vector per step; grouping, mean and max wait for the epoch's end
        self._step_norms.append(tensor_norms(grads))

    def on_epoch_end(self, engine: Engine, metrics: dict[str, Any]) -> None:
        if self._step_norms:
            per_step = combine_norms(torch.stack(self._step_norms), self._index, len(self.groups))
            means, maxima = torch.stack([per_step.mean(0), per_step.amax(0)]).tolist()
            metrics["grad_norms"] = {
                name: {"mean": mean, "max": peak}
                for (name, _, _), mean, peak in zip(self.groups, means, maxima, strict=True)
            }
        self._step_norms = []

    def on_fit_end(self, engine: Engine) -> None:
        if self.probe_batch is None:
            return
        self.probes["final"] = self._probe(engine)
        if self.run_dir is not None:
            self.save(engine.model)

    # -- probe and files ----------------------------------------------------------------------
    def _stored_init(self) -> dict[str, dict[str, float]]:
        path = self.run_dir / "grad_norms.json" if self.run_dir is not None else None
        if path is None or not path.is_file():
            return {}
        stored = json.loads(path.read_text())
        if not stored.get("init") or stored.get("groups") != [name for name, _, _ in self.groups]:
            return {}
        return {"init": dict(zip(stored["groups"], stored["init"], strict=True))}

    def _probe(self, engine: Engine) -> dict[str, float]:
        batch = Batch(*(t.to(engine.device) for t in self.probe_batch))
        return probe_grad_norms(engine.model, batch, engine.criterion, engine.autocast)

    def record(self, model: nn.Module) -> dict[str, Any]:
        """What ``grad_norms.json`` holds: the blocks, their depth positions and both probes."""
        return {
            **describe_model(model),
            "probe_size": len(self.probe_batch.targets) if self.probe_batch is not None else 0,
            "groups": [name for name, _, _ in self.groups],
            "positions": [position for _, position, _ in self.groups],
            **{when: [norms[name] for name, _, _ in self.groups] for when, norms in self.probes.items()},
        }

    def save(self, model: nn.Module) -> Path:
        """Write ``grad_norms.json`` and ``grad_norms.png`` into the run directory."""
        assert self.run_dir is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "grad_norms.json"
        record = self.record(model)
        write_json(path, record)
        plot_grad_norms(record, self.run_dir / "grad_norms.png")
        return path

"""Data-parallel training over torch.distributed, launched by torchrun.

torchrun starts one process per device with RANK / WORLD_SIZE / LOCAL_RANK set. labkit joins
the process group *before* Hydra composes its config, so that rank 0 can hand its timestamp to
the others and every rank resolves the same run directory (each rank would otherwise take its
own ``${now:...}`` and scatter the outputs over several folders). Only rank 0 writes files,
checkpoints, plots and W&B; metrics are summed over ranks so every rank sees the same numbers.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta

import torch
import torch.distributed as dist

from labkit.config.choices import STRATEGIES
from labkit.errors import ConfigError

RUN_STAMP_ENV = "LABKIT_RUN_STAMP"
STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S-%f"


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job: rank 0 of 1 for an ordinary run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or (dist.is_available() and dist.is_initialized())

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def join_process_group() -> None:
    """Called by the entry points before Hydra: join the group, agree on one run directory.

    Ranks other than 0 also tell Hydra not to write its ``.hydra/`` files and logs, so the run
    directory holds exactly one set of outputs.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    atexit.register(leave_process_group)
    stamp = [datetime.now().strftime(STAMP_FORMAT) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(stamp, src=0)
    os.environ[RUN_STAMP_ENV] = stamp[0]
    if dist.get_rank() != 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled",
                     "hydra/hydra_logging=disabled"]


def context(strategy: str) -> DistContext:
    """The context for ``trainer.strategy``: ddp needs torchrun, auto stays single-process."""
    if strategy == "auto":
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ConfigError("this process was started by torchrun with several ranks but "
                              "trainer.strategy=auto; pass trainer.strategy=ddp")
        return DistContext()
    if strategy not in STRATEGIES:
        raise ConfigError(f"trainer.strategy={strategy!r} is invalid: expected {' or '.join(STRATEGIES)}")
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("trainer.strategy=ddp needs a launcher: run "
                          "`torchrun --nproc_per_node=N train.py trainer.strategy=ddp ...`")
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def all_reduce_sum(tensor: torch.Tensor) -> None:
    """Sum ``tensor`` over all ranks in place (a no-op in a single process); pack several values
    into one tensor, since each call is one collective."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on at least one rank (so all ranks stop at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def leave_process_group() -> None:
    """Leave together: a rank that tears down its gloo connections while a peer is still using
    them can abort that peer ("terminate called without an active exception", seen once in the
    torchrun resume test), so gloo ranks meet first, for at most a minute (a rank that failed
    alone must not wait forever)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo" and dist.get_world_size() > 1:
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        except RuntimeError:
            pass  # a peer has gone or failed: leave anyway
    dist.destroy_process_group()


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """Each rank on its own GPU (LOCAL_RANK); CPU ranks share the CPU."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def prepare_model(model: torch.nn.Module, ctx: DistContext, sync_batchnorm: bool) -> torch.nn.Module:
    """Optionally turn BatchNorm into SyncBatchNorm (statistics over the global batch).

    Without it each rank normalises with its own shard's statistics and DDP broadcasts rank 0's
    running statistics at every forward, so all ranks (and the checkpoint) agree either way.
    """
    if not (ctx.enabled and sync_batchnorm):
        return model
    if not torch.cuda.is_available():
        raise ConfigError("trainer.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def augment_generator(cfg, ctx: DistContext, device: torch.device) -> torch.Generator | None:
    """Under DDP each rank augments with its own stream; a single process uses the loader's."""
    if not ctx.enabled:
        return None
    seed = int(cfg.trainer.seed) + 1_000_003 * (ctx.rank + 1)
    return torch.Generator(device=device).manual_seed(seed)

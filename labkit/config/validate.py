"""Check a composed config before any data or model is built.

Each rule names its key, the value found and what is allowed, so a typo costs one line of
output and exit status 2 instead of a stack trace minutes into a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from labkit.engine.device import resolve_device
from labkit.errors import ConfigError

_MISSING = object()


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    def check(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    return check, f"an integer >= {low}"


def _positive_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v > 0


def _four_block_counts(v: Any) -> bool:
    """FlexibleCNN's ``layers``: exactly one positive block count per stage."""
    counts = list(v) if isinstance(v, ListConfig | list | tuple) else None
    return counts is not None and len(counts) == 4 and all(_int_at_least(1)[0](n) for n in counts)


# key -> (predicate, description of the allowed values); absent keys are skipped.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "trainer.epochs": _int_at_least(1),
    "trainer.seed": _int_at_least(0),
    "trainer.log_every_n_steps": _int_at_least(1),
    "trainer.precision": (lambda v: v in ("auto", "fp32", "bf16"), "auto, fp32 or bf16"),
    "trainer.compile": (lambda v: isinstance(v, bool), "true or false"),
    "trainer.test_on": (lambda v: v in ("best", "last"), "best or last"),
    "trainer.label_smoothing": (lambda v: isinstance(v, int | float) and not isinstance(v, bool)
                                and 0 <= v < 1, "a number in [0, 1)"),
    "trainer.eval_flip": (lambda v: isinstance(v, bool), "true or false"),
    "scheduler.interval": (lambda v: v in ("epoch", "step"), "epoch or step"),
    "data.batch_size": _int_at_least(1),
    "data.eval_batch_size": _int_at_least(1),
    "data.val_size": _int_at_least(0),
    "data.train_size": (lambda v: v is None or _int_at_least(1)[0](v), "null or an integer >= 1"),
    "data.num_classes": _int_at_least(2),
    "data.in_channels": _int_at_least(1),
    "data.image_size": _int_at_least(1),
    "data.n_train": _int_at_least(1),
    "data.n_test": _int_at_least(1),
    "data.augment.crop_padding": _int_at_least(0),
    "data.augment.flip": (lambda v: isinstance(v, bool), "true or false"),
    "model.layers": (_four_block_counts, "a list of 4 integers >= 1, e.g. [2,2,2,2]"),
    "model.block": (lambda v: v in ("basic", "bottleneck"), "basic or bottleneck"),
    "model.stem_stride": _int_at_least(1),
    "model.stem_width": _int_at_least(1),
    "model.widths": (lambda v: isinstance(v, ListConfig | list | tuple) and len(v) > 0
                     and all(_int_at_least(1)[0](w) for w in v), "a non-empty list of integers >= 1"),
    "model.depth": _int_at_least(1),
    "model.width": _int_at_least(1),
    "model.dropout": (lambda v: isinstance(v, int | float) and 0 <= v < 1, "a number in [0, 1)"),
    "model.residual": (lambda v: isinstance(v, bool), "true or false"),
    "model.norm": (lambda v: isinstance(v, bool), "true or false"),
    "optimizer.lr": (_positive_number, "a number > 0"),
    "analysis.grad_norms": (lambda v: isinstance(v, bool), "true or false"),
    "analysis.probe_size": _int_at_least(1),
    "analysis.wandb_watch": (lambda v: isinstance(v, bool), "true or false"),
    "analysis.watch_log_freq": _int_at_least(1),
}


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` on the first value outside its allowed range."""
    for key, (check, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING:
            continue
        if not check(value):
            raise ConfigError(f"{key}={value!r} is invalid: expected {allowed}")
    device = OmegaConf.select(cfg, "trainer.device", default=None)
    if device is not None:
        resolve_device(device)

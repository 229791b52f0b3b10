"""The type and allowed values of every key of every config group, per entry point.

One schema for all groups, read by :func:`labkit.config.validate.validate_config`. Allowed
names come from :mod:`labkit.config.choices`, which the code that implements them imports too
(``ACTIVATIONS``, ``BLOCKS``, ``PRECISIONS``, ...), so the check and the code cannot disagree and
configuration imports nothing above it. A key that is not declared here is rejected, so a new
option needs its line here (``tests/test_config.py`` composes every YAML option against it and
compares the model and data sections with the constructors' parameters).

Why not Hydra structured configs: tried on the optimizer group, ``optimizer.lr=foo`` gave
Hydra's five-line merge error with exit status 1, ``optimizer.lr=-1`` passed (a dataclass has
types, not ranges) and ``+optimizer.foo=1`` was still appended (``+`` bypasses struct mode);
models and data sets also differ in keys per ``_target_``. Checking the composed config here
covers all of it in one place and keeps the YAML files plain.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labkit.config.choices import (
    ACTIVATIONS,
    BLOCKS,
    CACHE_TEACHER,
    CIFAR_VARIANTS,
    DEVICES,
    DISTILL_METHODS,
    EXPLAIN_BASELINES,
    EXPLAIN_METHODS,
    EXPLAIN_TARGETS,
    MUON_ADJUST_LR,
    NORMS_1D,
    PRECISIONS,
    SCHEDULER_INTERVALS,
    STORAGES,
    STRATEGIES,
    TEST_ON,
    WANDB_MODES,
)
from labkit.config.fields import (
    Bool,
    Choice,
    Custom,
    Field,
    Int,
    List,
    Node,
    Number,
    Text,
    Variants,
    fail,
    is_number,
)

POSITIVE = Number(min=0, min_open=True)
NON_NEGATIVE = Number(min=0)
FRACTION = Number(min=0, max=1, max_open=True)  # [0, 1)
PATH = Text(what="a path")


def _existing_file(value: Any) -> bool:
    return isinstance(value, str) and Path(value).expanduser().is_file()


CHECKPOINT = Custom(test=_existing_file, what="the path of an existing checkpoint file")
DEVICE = Custom(test=lambda v: isinstance(v, str) and v.split(":")[0] in DEVICES,
                what=f"{', '.join(DEVICES[:-1])} or {DEVICES[-1]} (cuda:N for one GPU)")


def target(node: Node) -> Node:
    """``node`` with its ``_target_`` key declared."""
    return Node({"_target_": Text(), **node.fields}, rules=node.rules)


def partial(fields: dict[str, Field], rules=()) -> Node:
    """An optimizer / scheduler node: ``_partial_: true`` is required (the engine passes the rest)."""
    return target(Node({"_partial_": Choice([True]), **fields}, rules=rules))


# --- model (keys in the YAML files' order) ---------------------------------------------------
CLASSES = Int(min=2)
ACTIVATION = Choice(ACTIVATIONS)
MODELS = {
    "labkit.models.FlexibleMLP": target(Node({
        "input_shape": List(Int(min=1), length=3),
        "num_classes": CLASSES,
        "depth": Int(min=1),
        "width": Int(min=1),
        "residual": Bool(),
        "norm": Bool(),
        "norm_type": Choice(NORMS_1D),
        "activation": ACTIVATION,
        "dropout": FRACTION,
    })),
    "labkit.models.FlexibleCNN": target(Node({
        "in_channels": Int(min=1),
        "num_classes": CLASSES,
        "layers": List(Int(min=1), length=4),
        "block": Choice(BLOCKS),
        "width": Int(min=1),
        "residual": Bool(),
        "norm": Bool(),
        "activation": ACTIVATION,
        "stem_stride": Int(min=1),
        "zero_init_residual": Bool(),
    })),
    "labkit.models.ConvPoolNet": target(Node({
        "in_channels": Int(min=1),
        "num_classes": CLASSES,
        "widths": List(Int(min=1), min_len=1),
        "stem_width": Int(min=1),
        "norm": Bool(),
        "activation": ACTIVATION,
    })),
}
MODEL = Variants(MODELS)


# --- data ----------------------------------------------------------------------------------
#: the keys of a data config's ``augment`` node (null: no augmentation); the augmentation
#: (labkit.data.augment) checks its arguments against it too
# cutout: absent (an override such as {crop_padding:2,flip:false}) keeps CropFlip's default 0
AUGMENT = Node({"crop_padding": Int(min=0), "flip": Bool(), "cutout": Int(min=0)}, null=True)


def _normalisation_matches_channels(node: Mapping[str, Any], path: str) -> None:
    """``mean`` / ``std``: one value for every channel, or one per channel."""
    channels = node.get("in_channels")
    for key in ("mean", "std"):
        values = node.get(key)
        if is_number(channels) and isinstance(values, list) and len(values) not in (1, channels):
            raise fail(f"{path}.{key}", values, f"1 or {channels} values (data.in_channels={channels})")


_DATA_COMMON = {
    "batch_size": Int(min=1),
    "eval_batch_size": Int(min=1),
    "val_size": Int(min=0),
    "train_size": Int(min=1, null=True),
    "split_seed": Int(min=0),
    "drop_last": Bool(),
    "num_classes": Int(min=2),
    "in_channels": Int(min=1),
    "image_size": Int(min=1),
    "mean": List(Number(), min_len=1),
    "std": List(POSITIVE, min_len=1),
    "augment": AUGMENT,
}


def data_node(fields: dict[str, Field]) -> Node:
    return target(Node({**_DATA_COMMON, **fields}, rules=[_normalisation_matches_channels]))


DATASETS = {
    "labkit.data.MNISTFamily": data_node({"folder": Text(), "root": PATH, "download": Bool()}),
    "labkit.data.CIFAR": data_node({"variant": Choice(CIFAR_VARIANTS), "root": PATH, "download": Bool()}),
    "labkit.data.ImageFolder": data_node({"path": PATH, "root": PATH,
                                          "cache_dir": Text(null=True, what="a path"), "resize": Bool(),
                                          # null: computed from the training images (imagefolder.py)
                                          "mean": List(Number(), min_len=1, null=True),
                                          "std": List(POSITIVE, min_len=1, null=True),
                                          # memory | stream | auto, and the streaming loader's settings
                                          "storage": Choice(STORAGES),
                                          "memory_share": Number(min=0, max=1, min_open=True),
                                          "num_workers": Int(min=0), "prefetch_factor": Int(min=1),
                                          "skip_bad_images": Bool()}),
    "labkit.data.SyntheticImages": data_node({"n_train": Int(min=1), "n_test": Int(min=1),
                                              "noise": NON_NEGATIVE, "seed": Int(min=0), "root": PATH}),
}
DATA = Variants(DATASETS)


# --- optimizer and scheduler -----------------------------------------------------------------
def _nesterov_needs_momentum(node: Mapping[str, Any], path: str) -> None:
    if node.get("nesterov") and (not node.get("momentum") or node.get("dampening")):
        raise fail(f"{path}.nesterov", True, f"false unless {path}.momentum > 0 and dampening = 0 "
                   f"(momentum={node.get('momentum')!r})")


_ADAM = {
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "betas": List(FRACTION, length=2),
    "eps": POSITIVE,
    "amsgrad": Bool(),
}
_TORCH_OPTIMIZERS = {
    "torch.optim.Adam": partial(_ADAM),
    "torch.optim.AdamW": partial(_ADAM),
    "torch.optim.SGD": partial({
        "lr": POSITIVE,
        "momentum": FRACTION,
        "dampening": FRACTION,
        "weight_decay": NON_NEGATIVE,
        "nesterov": Bool(),
    }, rules=[_nesterov_needs_momentum]),
}
OPTIMIZERS = {
    **_TORCH_OPTIMIZERS,
    # optimizer=muon (labkit.engine.muon): torch's Muon on the hidden weight matrices and ``aux``,
    # one of torch's optimizers above (itself a partial), on the rest
    "labkit.engine.muon.muon": partial({
        "lr": POSITIVE,
        "momentum": FRACTION,
        "nesterov": Bool(),
        "weight_decay": NON_NEGATIVE,
        "adjust_lr_fn": Choice(MUON_ADJUST_LR, null=True),  # null: torch's default, original
        "ns_steps": Int(min=1, max=99),  # torch refuses 100 or more
        "aux": Variants(_TORCH_OPTIMIZERS),
    }, rules=[_nesterov_needs_momentum]),
}
OPTIMIZER = Variants(OPTIMIZERS)

_INTERVAL = {"interval": Choice(SCHEDULER_INTERVALS)}
SCHEDULERS = {
    "torch.optim.lr_scheduler.CosineAnnealingLR": partial({
        **_INTERVAL, "T_max": Int(min=1), "eta_min": NON_NEGATIVE}),
    "torch.optim.lr_scheduler.StepLR": partial({
        **_INTERVAL, "step_size": Int(min=1), "gamma": POSITIVE}),
    "torch.optim.lr_scheduler.OneCycleLR": partial({
        **_INTERVAL,
        "max_lr": Number(min=0, min_open=True, null=True),  # null: each parameter group's own lr
        "pct_start": Number(min=0, max=1, min_open=True, max_open=True),
        "anneal_strategy": Choice(["cos", "linear"]),
        "div_factor": POSITIVE,
        "final_div_factor": POSITIVE,
        "cycle_momentum": Bool(),
        "base_momentum": FRACTION,
        "max_momentum": FRACTION,
        "three_phase": Bool(),
    }),
}
SCHEDULER = Variants(SCHEDULERS, empty=True)  # scheduler=none: a constant learning rate


# --- trainer, logger, paths, analysis, distill ---------------------------------------------
TRAINER = Node({
    "epochs": Int(min=1),
    "device": DEVICE,
    "seed": Int(min=0),
    "deterministic": Bool(),
    "precision": Choice(PRECISIONS),
    "compile": Bool(),
    "log_every_n_steps": Int(min=1),
    "grad_clip": Number(min=0, min_open=True, null=True),
    "label_smoothing": FRACTION,
    "eval_flip": Bool(),
    "eval_translate": Int(min=0),
    "ema": Node({
        "decay": Number(min=0, max=1, min_open=True, max_open=True, null=True),
        "start_step": Int(min=0),
        "every": Int(min=1),
    }),
    "checkpoint": Bool(),
    "test_on": Choice(TEST_ON),
    "fused_optimizer": Bool(),
    "resume": Bool(),
    "ckpt_path": Custom(test=_existing_file, what="the path of an existing checkpoint file", null=True),
    "strategy": Choice(STRATEGIES),
    "sync_batchnorm": Bool(),
})
# one node per tracker; logger=[wandb,tensorboard] composes both, logger=none neither ({})
LOGGER = Node({
    "wandb": Node({
        "project": Text(),
        "entity": Text(null=True),
        "group": Text(null=True),
        "name": Text(null=True),
        "job_type": Text(null=True),
        "tags": List(Text()),
        "mode": Choice(WANDB_MODES),
    }),
    "tensorboard": Node({"flush_secs": Int(min=1)}),
})
PATHS = Node({"root_dir": PATH, "data_dir": PATH, "log_dir": PATH, "output_dir": PATH})
ANALYSIS = Node({
    "grad_norms": Bool(),
    "probe_size": Int(min=1),
    "wandb_watch": Bool(),
    "watch_log_freq": Int(min=1),
})
def _method_spec(value: Any) -> bool:
    """``kd``, ``kd+at`` or a list of distinct known method names."""
    names = value.split("+") if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names:
        return False
    names = [n.strip() if isinstance(n, str) else n for n in names]
    return all(n in DISTILL_METHODS for n in names) and len(set(names)) == len(names)


def _feature_points(value: Any) -> bool:
    """Feature-point names (``stage2`` or teacher:student ``stage3:stage4``); their existence
    is checked against the models once they are built."""
    return isinstance(value, list | tuple) and len(value) > 0 and all(isinstance(v, str) and v for v in value)


FEATURE_LAYERS = Custom(test=_feature_points, null=True,
                        what="a non-empty list of feature points, e.g. [stage2] or [stage3:stage4]")
DISTILL = Node({
    "method": Custom(test=_method_spec,
                     what=f"one of {', '.join(DISTILL_METHODS)}, a sum such as kd+at, or a list"),
    "ce_weight": Custom(test=lambda v: v == "auto" or (is_number(v) and v >= 0),
                        what="auto or a number >= 0"),
    "feature_layers": FEATURE_LAYERS,
    # each method's own node (conf/distill.yaml cites the papers behind the defaults)
    "kd": Node({"temperature": POSITIVE, "alpha": Number(min=0, max=1)}),
    "fitnet": Node({"weight": NON_NEGATIVE, "connector_relu": Bool(), "feature_layers": FEATURE_LAYERS}),
    "at": Node({"weight": NON_NEGATIVE, "feature_layers": FEATURE_LAYERS}),
    "rkd": Node({"distance_weight": NON_NEGATIVE, "angle_weight": NON_NEGATIVE, "relation_batch": Int(min=3),
                 "feature_layers": FEATURE_LAYERS}),
    "dkd": Node({"alpha": NON_NEGATIVE, "beta": NON_NEGATIVE, "temperature": POSITIVE,
                 "warmup": Number(min=0, max=1)}),
    "dist": Node({"beta": NON_NEGATIVE, "gamma": NON_NEGATIVE, "temperature": POSITIVE}),
    "cache_teacher": Choice(CACHE_TEACHER),
    "teacher_ckpt": Custom(test=_existing_file, what="the path of an existing checkpoint file", null=True),
    "teacher_seed": Int(min=0, null=True),
    "teacher_epochs": Int(min=1, null=True),
    "stage_store": Text(null=True, what="a folder path"),
    "force": Bool(),
}, renamed={"temperature": "kd.temperature", "alpha": "kd.alpha"})  # moved into kd when the methods came

# --- the root of each entry point ----------------------------------------------------------
_ROOT = {
    "task_name": Text(),
    "tags": List(Text()),
    "optimized_metric": Text(null=True),
    # `+residual=true` / `+norm=true`: root switches the model configs read (oc.select)
    "residual": Bool(),
    "norm": Bool(),
}
# in the order of checking: what others interpolate (paths, trainer.epochs, data shapes) first
_RUN = {"paths": PATHS, "trainer": TRAINER, "data": DATA, "optimizer": OPTIMIZER, "scheduler": SCHEDULER,
        "logger": LOGGER}
#: eval.py's and explain.py's ``data`` keys: each replaces the checkpoint's value when set
REBUILT_DATA = Node({"root": Text(null=True, what="a path"), "path": Text(null=True, what="a path"),
                     "download": Bool(null=True), "eval_batch_size": Int(min=1, null=True),
                     "storage": Choice(STORAGES, null=True)})

ENTRY_POINTS: dict[str, Node] = {
    "train": Node({**_ROOT, **_RUN, "model": MODEL, "analysis": ANALYSIS}),
    "distill": Node({**_ROOT, **_RUN, "teacher": MODEL, "student": MODEL, "distill": DISTILL}),
    "eval": Node({
        "task_name": Text(),
        "ckpt_path": CHECKPOINT,
        "trainer": Node({"device": DEVICE, "eval_flip": Bool(null=True),
                         "eval_translate": Int(min=0, null=True)}),
        "data": REBUILT_DATA,
        "paths": PATHS,
    }, renamed={"device": "trainer.device"}),
    "explain": Node({
        "task_name": Text(),
        # one checkpoint, a run folder, or a list of them (what each is, the command checks)
        "ckpt_path": Custom(test=lambda v: (isinstance(v, str) and bool(v)) or (
            isinstance(v, list | tuple) and len(v) > 0 and all(isinstance(p, str) and p for p in v)),
            what="a checkpoint or run folder, or a list of them"),
        "trainer": Node({"device": DEVICE}),
        "data": REBUILT_DATA,
        "paths": PATHS,
        "explain": Node({
            "method": Choice(EXPLAIN_METHODS),
            "layer": Custom(test=lambda v: (isinstance(v, str) and bool(v)) or (
                isinstance(v, int) and not isinstance(v, bool)),
                what="last, stem, blocks.<i>, an index or a module name"),
            "target": Choice(EXPLAIN_TARGETS),
            "per_class": Int(min=1),
            "side_by_side": Int(min=1),
            "pool": Int(min=1),
            "steps": Int(min=2),
            "baseline": Choice(tuple(EXPLAIN_BASELINES)),
            "seed": Int(min=0),
            "labels": List(Text(), min_len=1, null=True),
        }),
    }),
}

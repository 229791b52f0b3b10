"""Stage reuse cannot go stale: a stage's fingerprint is the whole resolved config minus a short
list of keys that cannot change its result. Every key of the composed distill config is flipped,
one at a time, and each stage's fingerprint must change exactly when the stage reads that key."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf

from labkit.distill.stages import IGNORED_KEYS, settings_fingerprint, stage_settings

from .conftest import compose_config

STAGES = ("teacher", "student_baseline", "student_distill")


def leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [k for key, value in node.items() for k in leaves(value, f"{prefix}.{key}" if prefix else key)]
    return [prefix]


def flipped(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list):
        return [*value, value[-1]] if value else [1]
    if value is None:
        return 3
    return {}  # an empty node gets a key elsewhere; here it becomes another empty container


def under(key: str, *prefixes: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def reads(stage: str, key: str) -> bool:
    """Written from the design, not from the code: which keys each stage depends on."""
    if under(key, *IGNORED_KEYS):
        return False
    if stage == "student_baseline":
        return not under(key, "teacher", "distill")
    if stage == "teacher":
        # its own seed and epochs (distill.teacher_seed / _epochs), or a checkpoint to evaluate
        return not under(key, "student", "distill") or under(
            key, "distill.teacher_ckpt", "distill.teacher_seed", "distill.teacher_epochs")
    return True


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return compose_config([], tmp_path_factory.mktemp("run"), config_name="distill")


def fingerprints(cfg) -> dict[str, str]:
    return {stage: settings_fingerprint(stage_settings(cfg, stage)) for stage in STAGES}


def test_every_key_of_the_distill_config_retrains_exactly_the_stages_that_read_it(base):
    before = fingerprints(base)
    keys = leaves(OmegaConf.to_container(base, resolve=False))
    assert len(keys) > 80  # the whole config, not a hand-picked part
    wrong = []
    for key in keys:
        cfg = base.copy()
        OmegaConf.set_struct(cfg, False)
        OmegaConf.update(cfg, key, flipped(OmegaConf.select(cfg, key)), merge=False)
        after = fingerprints(cfg)
        for stage in STAGES:
            if (after[stage] != before[stage]) != reads(stage, key):
                wrong.append(f"{stage}: {key} ({'reused' if reads(stage, key) else 'retrained'})")
    assert not wrong, wrong


def test_a_fixed_teacher_seed_shares_one_teacher_across_seeds_but_not_across_epochs(base):
    cfg = base.copy()
    OmegaConf.update(cfg, "distill.teacher_seed", 0, merge=False)
    one = fingerprints(cfg)
    OmegaConf.update(cfg, "trainer.seed", 7, merge=False)
    other = fingerprints(cfg)
    assert one["teacher"] == other["teacher"] and one["student_baseline"] != other["student_baseline"]
    OmegaConf.update(cfg, "distill.teacher_epochs", 3, merge=False)
    longer = fingerprints(cfg)
    OmegaConf.update(cfg, "trainer.epochs", 9, merge=False)  # the students' epochs only
    assert fingerprints(cfg)["teacher"] == longer["teacher"] != other["teacher"]


def test_a_teacher_from_a_checkpoint_ignores_how_the_students_train(base):
    cfg = base.copy()
    OmegaConf.update(cfg, "distill.teacher_ckpt", "/some/teacher.pt", merge=False)
    before = fingerprints(cfg)["teacher"]
    for key, value in (("trainer.seed", 5), ("optimizer.lr", 0.5), ("trainer.epochs", 2)):
        OmegaConf.update(cfg, key, value, merge=False)
    assert fingerprints(cfg)["teacher"] == before
    OmegaConf.update(cfg, "teacher.width", 17, merge=False)
    assert fingerprints(cfg)["teacher"] != before

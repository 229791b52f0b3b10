"""Config composition: every group option composes and builds; overrides land where expected."""

from __future__ import annotations

import inspect

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from labkit.config import choices
from labkit.config.schema import DATASETS, MODELS
from labkit.config.validate import validate_config
from labkit.data.cifar import LAYOUTS
from labkit.distill.methods import METHODS as DISTILL_METHODS
from labkit.errors import ConfigError
from labkit.models import FlexibleMLP, describe_model
from labkit.models.cnn import BLOCKS
from labkit.models.layers import ACTIVATIONS, NORMS_1D
from labkit.run import build_optimization

from .conftest import CONF, compose_config

GROUPS = ["model", "data", "optimizer", "scheduler", "trainer", "logger", "experiment", "debug"]


def group_options(group: str) -> list[str]:
    """The selectable options (``_common.yaml`` and other ``_`` files are shared parts)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def is_distill_experiment(option: str) -> bool:
    """Experiments for distill.py set a teacher and a student; they compose with distill.yaml."""
    return "model@teacher" in (CONF / "experiment" / f"{option}.yaml").read_text()


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in group_options(g)]
)
def test_every_group_option_composes_and_builds(cfg_factory, tmp_path, group, option):
    if group == "experiment" and is_distill_experiment(option):
        cfg = compose_config([f"experiment={option}"], tmp_path / "run", config_name="distill")
        OmegaConf.to_container(cfg, resolve=True)
        validate_config(cfg)
        for role in ("teacher", "student"):
            assert len(list(instantiate(cfg[role]).parameters())) > 0
        return
    cfg = cfg_factory(f"{group}={option}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    validate_config(cfg.copy()) if group != "trainer" or option not in ("gpu", "ddp") else None
    model = instantiate(cfg.model)
    optimizer, scheduler = build_optimization(cfg, model, steps_per_epoch=10)
    assert any(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert (scheduler is None) == (not cfg.scheduler)


def selected_options(*overrides: str) -> dict:
    """The option Hydra chose for each config group (None: the group is off)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return dict(compose("train", list(overrides), return_hydra_config=True).hydra.runtime.choices)


def test_defaults_match_the_documented_ones(cfg_factory):
    cfg = cfg_factory()
    assert cfg.model._target_.endswith("FlexibleMLP")
    assert cfg.data.folder == "MNIST"
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.scheduler._target_.endswith("CosineAnnealingLR")
    choices = selected_options()
    assert (choices["experiment"], choices["sweep"], choices["debug"]) == (None, None, None)
    assert choices["hydra/sweeper"] == "basic" and cfg.tags == []  # a single run, no study
    for key in ("trainer.epochs", "trainer.device", "trainer.seed", "data.root", "data.download",
                "data.batch_size", "data.val_size", "model.depth", "model.width",
                "model.residual", "model.norm", "optimizer.lr"):
        assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", key
    assert cfg.model.residual is False and cfg.model.norm is False


@pytest.mark.parametrize("override,key", [("+residual=true", "residual"), ("+norm=true", "norm"),
                                          ("model.residual=true", "residual"),
                                          ("model.norm=true", "norm")])
def test_residual_and_norm_switches_reach_the_built_model(cfg_factory, override, key):
    cfg = cfg_factory("model.depth=5", override)
    assert cfg.model[key] is True
    info = describe_model(instantiate(cfg.model))
    if key == "residual":
        assert info["skip_connections"] == 4
    else:
        assert info["norm_layers"] == 5


def test_scheduler_none_and_sgd(cfg_factory):
    cfg = cfg_factory("optimizer=sgd", "scheduler=none")
    optimizer, scheduler = build_optimization(cfg, FlexibleMLP(depth=1, width=8))
    assert isinstance(optimizer, __import__("torch").optim.SGD) and scheduler is None



def test_one_cycle_too_short_for_its_warm_up_is_a_config_error(cfg_factory):
    """4 steps x pct_start 0.25 = a one-step warm-up, which crashes OneCycleLR mid-run."""
    cfg = cfg_factory("scheduler=onecycle", "trainer.epochs=1")
    with pytest.raises(ConfigError, match="one-cycle warm-up of 1.0 steps"):
        build_optimization(cfg, FlexibleMLP(depth=1, width=8), steps_per_epoch=4)
    _, scheduler = build_optimization(cfg, FlexibleMLP(depth=1, width=8), steps_per_epoch=8)
    for _ in range(8):
        scheduler.step()

def test_data_config_feeds_the_model_shape(cfg_factory):
    cfg = cfg_factory("data=fashion_mnist")
    assert list(cfg.model.input_shape) == [1, 28, 28]
    assert cfg.model.num_classes == cfg.data.num_classes


def test_validation_accepts_defaults(cfg_factory):
    validate_config(cfg_factory())


@pytest.mark.parametrize("allowed,registry", [
    (choices.ACTIVATIONS, ACTIVATIONS), (choices.NORMS_1D, NORMS_1D), (choices.BLOCKS, BLOCKS),
    (choices.CIFAR_VARIANTS, LAYOUTS), (choices.DISTILL_METHODS, DISTILL_METHODS)],
    ids=["activations", "norms_1d", "blocks", "cifar_variants", "distill_methods"])
def test_allowed_values_are_the_names_the_code_implements(allowed, registry):
    """The schema reads labkit.config.choices; the code keys its implementations by name."""
    assert tuple(registry) == allowed


def _parameters(cls) -> set[str]:
    """Keyword parameters of ``cls``, following ``**kwargs`` into the base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names


#: constructor parameters no config sets (an image folder's root is its path; nothing to download)
NOT_CONFIGURABLE = {"labkit.data.ImageFolder": {"download"},  # root: the folder above path (cifar10_jpeg)
                    "labkit.data.SyntheticImages": {"download"}}


@pytest.mark.parametrize("schemas", [MODELS, DATASETS], ids=["model", "data"])
def test_schema_declares_exactly_the_constructor_parameters(schemas):
    """A new constructor argument cannot reach the YAML files without its typed field."""
    for target, node in schemas.items():
        expected = _parameters(get_class(target)) - NOT_CONFIGURABLE.get(target, set())
        assert set(node.fields) - {"_target_"} == expected, target

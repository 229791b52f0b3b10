"""A command line that sets a key the config does not have: one line with the nearest names.

Hydra refuses ``distill.kd.temprature=3`` with five lines that advise appending the typo with
``+``; the schema (:mod:`labkit.config.schema`) knows the right name. While an entry script's
Hydra main runs inside :func:`unknown_keys_in_one_line`, Hydra applies the overrides of each
composition (the run's, the multirun's, each job's: ``-m``, sweep files, swept groups) through
:func:`_apply`, which first looks each key up in the config composed so far and, when it is not
there, ends the command with one line (exit status 2) instead (``~key`` too). Hydra's own loop
does the rest, so ``+`` / ``++`` appends, deletions of existing keys, group choices and ``hydra.*``
keys behave as before, and a bad value of a known key still gets the schema's line.

Why inside Hydra, not a check of ``sys.argv`` before it: that needs one more composition of the
config (0.2-0.3 s of start-up on the lab's 2-core machine) and its own copy of Hydra's rules for
groups, sweeps and search paths. This adds a look-up per override (about 50 us). The price: it replaces
an internal of Hydra (``ConfigLoaderImpl._apply_overrides_to_config``, hydra-core 1.3), for the
duration of the ``with`` only; ``tests/test_config_errors.py`` runs the scripts through it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, ListConfig, OmegaConf

from labkit.config.fields import Field, find_field, shown, unknown_key
from labkit.config.schema import ENTRY_POINTS
from labkit.errors import ConfigError, exit_on


@contextlib.contextmanager
def unknown_keys_in_one_line(config_name: str) -> Iterator[None]:
    """Within the ``with``, an override of a key the composed config lacks ends the command with one
    line naming the nearest keys of ``config_name``'s schema (``distill``, ...), exit status 2."""
    hydra_apply = ConfigLoaderImpl.__dict__["_apply_overrides_to_config"]
    config_name = _config_name(sys.argv[1:], config_name)

    def apply(overrides: list[Override], cfg: DictConfig) -> None:
        _apply(overrides, cfg, config_name, hydra_apply.__func__)

    ConfigLoaderImpl._apply_overrides_to_config = staticmethod(apply)
    try:
        yield
    finally:
        ConfigLoaderImpl._apply_overrides_to_config = hydra_apply


def _config_name(argv: list[str], default: str) -> str:
    """The config Hydra composes: ``--config-name`` / ``-cn`` on the command line, else the script's."""
    for i, arg in enumerate(argv):
        name, sep, value = arg.partition("=")
        if name in ("--config-name", "-cn"):
            return value if sep else (argv[i + 1] if i + 1 < len(argv) else default)
    return default


def _apply(overrides: list[Override], cfg: DictConfig, config_name: str,
           hydra_apply: Callable[[list[Override], DictConfig], None]) -> None:
    """Hydra's loop, one override at a time (a dict may bring the keys a later one sets), with a
    look-up first. Hydra passes no group choices here, only key overrides."""
    for override in overrides:
        problem = missing_key(override, cfg, config_name)
        if problem is not None:
            exit_on(problem)
        hydra_apply([override], cfg)


def missing_key(override: Override, cfg: DictConfig, config_name: str) -> ConfigError | None:
    """The one-line error of an assignment (``key=value``) or deletion (``~key``) of a key ``cfg``
    does not have; None for anything else (Hydra and the schema report the rest)."""
    if (override.is_add() or override.is_force_add() or override.is_hydra_override()
            or override.package is not None or _has(cfg, override.key_or_group)):
        return None
    return explain(cfg, override, config_name if config_name in ENTRY_POINTS else None)


def _has(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` is in ``cfg`` as Hydra's override sees it: a ``???`` or an interpolation that
    resolves only later (``${hydra:...}``) counts, a key below a null does not."""
    parent_key, _, name = key.rpartition(".")
    parent = cfg if not parent_key else OmegaConf.select(
        cfg, parent_key, default=None, throw_on_missing=False, throw_on_resolution_failure=False)
    if isinstance(parent, ListConfig):
        return True  # an index: Hydra says what is wrong with it
    return isinstance(parent, DictConfig) and name in parent.keys()


def explain(cfg: DictConfig, override: Override, entry: str | None) -> ConfigError:
    """One line for an override of a key ``cfg`` lacks: the nearest names in the schema of
    ``entry`` (a renamed key: its new name), else in the config; a key the schema knows but this
    config does not set is added with ``+``, as Hydra would have said."""
    key = override.key_or_group
    setting = f"~{key}" if override.is_delete() else f"{key}={shown(override.value())}"
    values = OmegaConf.to_container(cfg, resolve=False)
    values.pop("hydra", None)
    found = find_field(ENTRY_POINTS[entry], values, key, setting) if entry is not None else None
    if isinstance(found, ConfigError):
        return found
    if isinstance(found, Field):
        if override.is_delete():
            return ConfigError(f"{setting}: the config has no {key} to delete")
        return ConfigError(f"{setting}: the config has no {key} yet; add it with +{override.input_line}")
    return _nearest_in_config(values, key, setting)


def _nearest_in_config(values: Mapping, key: str, setting: str) -> ConfigError:
    """No schema to ask (or it cannot tell): the nearest keys of the deepest node that exists."""
    parent, node = "", values
    for name in key.split(".")[:-1]:
        if not isinstance(node.get(name), Mapping):
            break
        node, parent = node[name], f"{parent}.{name}" if parent else name
    below = key[len(parent) + 1 if parent else 0:].split(".")[0]
    if below in node:
        return ConfigError(f"{setting}: {parent + '.' if parent else ''}{below} holds a value, not keys")
    return unknown_key(key, None, list(node), parent, setting=setting)

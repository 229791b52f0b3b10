"""Check a composed config against its entry point's schema before any data or model is built.

Every key must be declared in :mod:`labkit.config.schema` and hold an allowed value; the first
that does not stops the run with one line naming the key, the value and what is allowed
(exit status 2). Called by the Hydra callback :class:`~labkit.config.hydra_callbacks.ConfigCheck`
before Hydra writes anything into the run folder, and again by each task (multirun jobs, tests).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from labkit.config.device import resolve_device
from labkit.config.schema import ENTRY_POINTS
from labkit.errors import ConfigError

#: root keys that belong to Hydra or the defaults list, not to the task
IGNORED_ROOT_KEYS = ("hydra",)


def entry_of(cfg: DictConfig) -> str:
    """Which entry point a config belongs to when the caller does not say: distill.py configs have
    a teacher, explain.py configs an ``explain`` node, eval.py configs a ``ckpt_path`` and no model."""
    if "teacher" in cfg or "distill" in cfg:
        return "distill"
    if "explain" in cfg:
        return "explain"
    if "ckpt_path" in cfg and "model" not in cfg:
        return "eval"
    return "train"


def resolved(cfg: DictConfig) -> dict:
    """The config as plain Python with every interpolation resolved (``???`` left as it is)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{key + ': ' if key else ''}cannot resolve the config: {first}") from None


def writable_folder_problem(folder: Path) -> str | None:
    """None when ``folder`` exists or could be made, and files can be written there; else why.

    Creates nothing: the test file goes into the nearest folder that already exists.
    """
    folder = folder.expanduser().absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".labkit-write-test-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_best_has_validation(values: dict) -> None:
    """``trainer.test_on=best`` tests the weights of the best validation epoch: with
    ``data.val_size=0`` there is none, and choosing on training accuracy would report it under a
    validation name."""
    data, trainer = values.get("data") or {}, values.get("trainer") or {}
    if data.get("val_size") == 0 and trainer.get("test_on") == "best":
        raise ConfigError("trainer.test_on='best' is invalid with data.val_size=0: no validation data to "
                          "choose the best weights on; hold images out (data.val_size=N) or test the last "
                          "weights (trainer.test_on=last)")


def validate_config(cfg: DictConfig, entry: str | None = None) -> None:
    """Raise :class:`ConfigError` on the first key that is unknown or holds a disallowed value.

    ``entry``: ``train``, ``distill`` or ``eval`` (default: guessed by :func:`entry_of`).
    Also checks that the device exists here and that ``paths.output_dir`` can be written.
    """
    entry = entry if entry in ENTRY_POINTS else entry_of(cfg)
    values = {k: v for k, v in resolved(cfg).items() if k not in IGNORED_ROOT_KEYS}
    ENTRY_POINTS[entry].check(values, "")
    check_best_has_validation(values)
    for key in ("trainer.device", "device"):
        device = OmegaConf.select(cfg, key, default=None)
        if device is not None:
            resolve_device(device)
    output_dir = values.get("paths", {}).get("output_dir")
    if output_dir:
        problem = writable_folder_problem(Path(output_dir))
        if problem:
            raise ConfigError(f"paths.output_dir={output_dir!r} is invalid: expected a folder that "
                              f"can be written ({problem})")

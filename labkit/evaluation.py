"""What `python eval.py` does: rebuild a model from its checkpoint and report on the test set."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from labkit.analysis.confusion import confusion_matrix, per_class_accuracy, plot_confusion
from labkit.config.validate import validate_config
from labkit.engine import load_checkpoint
from labkit.engine.checkpoint import load_model_weights
from labkit.errors import CheckpointError, ConfigError
from labkit.run import PreparedModel, Runtime, build_engine, build_model
from labkit.run_folder import STAGE_ROLES, model_weights
from labkit.tracking import write_json

log = logging.getLogger(__name__)


def eval_device(cfg: DictConfig) -> str:
    """``trainer.device``, the name every entry point uses (the old root ``device`` is refused
    with a pointer to it)."""
    return str(OmegaConf.select(cfg, "trainer.device", default="auto"))


@dataclass
class RebuiltRun:
    """A checkpoint with what it takes to rebuild its model and data: the run's own config (with
    this command's ``data`` overrides), the model node it was built from, and the runtime."""

    path: Path
    state: dict[str, Any]
    config: DictConfig
    role: str
    rt: Runtime

    @property
    def model_node(self) -> DictConfig:
        return self.config[self.role]

    def datamodule(self):
        """The run's data module, set up on this command's device."""
        datamodule = instantiate(self.config.data)
        datamodule.setup(self.rt.device)
        return datamodule

    def model(self, rt: Runtime | None = None) -> PreparedModel:
        """The model, built as the run built it (on ``rt``, default the run's runtime), with the
        checkpoint's weights (wrapper prefixes stripped)."""
        prepared = build_model(self.model_node, rt or self.rt, self.role)
        load_model_weights(prepared.module, model_weights(self.state, self.path), self.path)
        return prepared


def override_data(run_data: DictConfig, data: DictConfig | dict[str, Any]) -> None:
    """Replace the run's ``data`` values by this command's that are set. ``data.path`` exists only
    for image-folder runs; a new ``data.root`` moves a recorded ``data.path`` that lay under the old
    root along with it (``data=cifar10_jpeg``: ``<root>/CIFAR-10-JPEG``)."""
    given = {k: v for k, v in data.items() if v is not None}
    if "path" in given and "path" not in run_data:
        raise ConfigError(f"data.path={given['path']} is for image-folder runs (data=imagefolder, "
                          f"cifar10_jpeg); this run's data is read from data.root")
    old_root, old_path = Path(str(run_data.get("root"))), Path(str(run_data.get("path")))
    if {"root", "path"} <= set(run_data) and "path" not in given and "root" in given \
            and old_path.is_relative_to(old_root):
        given["path"] = str(Path(str(given["root"])) / old_path.relative_to(old_root))
    for key, value in given.items():
        run_data[key] = value


def rebuild_run(ckpt_path: str | Path, data: DictConfig | dict[str, Any] | None = None,
                device: str | None = None, role: str | None = None) -> RebuiltRun:
    """Load ``ckpt_path`` (a ``train.py`` checkpoint or a distillation stage's) and its config.

    ``data``: keys that replace the run's ``data`` values when not None (``override_data``);
    ``device``: this command's device (the run's trainer settings otherwise, single process);
    ``role``: the model node to build (default ``model``, or the distillation stage's role).
    """
    ckpt_path = Path(ckpt_path).expanduser()
    state = load_checkpoint(ckpt_path)
    if "config" not in state:
        raise CheckpointError(f"checkpoint {ckpt_path} carries no config to rebuild the model from")
    run_cfg = OmegaConf.create(state["config"])
    override_data(run_cfg.data, data or {})
    role = role or ("model" if "model" in run_cfg else STAGE_ROLES.get(str(state.get("stage")), ""))
    if role not in run_cfg:
        raise CheckpointError(f"checkpoint {ckpt_path} has no model config (no 'model', and no "
                              f"distillation stage to say whether it is the teacher or the student)")
    # the run's own trainer settings (precision, fast path), on this command's device
    rt = Runtime.from_config(run_cfg.trainer, device=device, single_process=True)
    return RebuiltRun(ckpt_path, state, run_cfg, role, rt)


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Test loss / accuracy, per-class accuracy and confusion matrix of ``cfg.ckpt_path``."""
    validate_config(cfg, "eval")
    run = rebuild_run(cfg.ckpt_path, cfg.data, eval_device(cfg))
    ckpt_path, state, run_cfg, rt = run.path, run.state, run.config, run.rt
    for key in ("eval_flip", "eval_translate"):  # test-time augmentation: this command's when set
        if OmegaConf.select(cfg, f"trainer.{key}") is not None:
            OmegaConf.update(run_cfg, f"trainer.{key}", cfg.trainer[key], force_add=True)
    datamodule = run.datamodule()
    prepared = run.model()
    engine = build_engine(run_cfg, prepared, rt, train=False)
    test = engine.evaluate(datamodule.loader("test"))
    prepared.module.eval()
    matrix = confusion_matrix(partial(engine.logits, prepared.module), datamodule.loader("test"),
                              datamodule.num_classes)
    per_class = per_class_accuracy(matrix)

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(matrix, out / "confusion_matrix.png", title=f"{ckpt_path.parent.parent.name}: test set")
    with open(out / "per_class.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "images", "accuracy"])
        for i, acc in enumerate(per_class):
            writer.writerow([i, int(matrix[i].sum()), "" if acc is None else f"{acc:.6f}"])
    result = {"checkpoint": str(ckpt_path), "epoch": state.get("epoch"), **prepared.info(),
              "eval_flip": bool(run_cfg.trainer.get("eval_flip", False)),
              "eval_translate": int(run_cfg.trainer.get("eval_translate", 0)),
              "test_loss": test["loss"],
              "test_acc": test["acc"], "per_class_acc": per_class,
              "confusion_matrix": matrix.tolist(), "data_fingerprint": datamodule.fingerprint}
    write_json(out / "eval.json", result)

    console = Console()
    table = Table(title=f"{ckpt_path} (epoch {state.get('epoch')})")
    table.add_column("class", justify="right")
    table.add_column("images", justify="right")
    table.add_column("accuracy", justify="right")
    for i, acc in enumerate(per_class):
        table.add_row(str(i), str(int(matrix[i].sum())), "-" if acc is None else f"{acc:.2%}")
    console.print(table)
    console.print(f"test loss {test['loss']:.4f}  test accuracy {test['acc']:.2%}  -> {out}",
                  highlight=False)
    return result

"""What `python explain.py` does: rebuild one or more CNN runs from their checkpoints, explain
test images with class activation maps, measure the maps' faithfulness, draw them.

One checkpoint gives ``grid.png`` (per class: correctly and wrongly classified test images with
the map of the explained class over them); several (or a distillation run folder: teacher,
baseline and distilled student) give ``comparison.png``, the same test images explained by each
run. Both write ``faithfulness.png`` (deletion / insertion curves against a random map),
``maps.pt`` (the raw maps and per-image scores) and ``explain.json`` (settings and numbers).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from labkit.config.choices import EXPLAIN_BASELINES as BASELINES
from labkit.config.validate import validate_config
from labkit.errors import CheckpointError, ConfigError, LabkitError, exit_on
from labkit.evaluation import RebuiltRun, rebuild_run
from labkit.explain.faithfulness import faithfulness
from labkit.explain.figures import plot_comparison, plot_curves, plot_grid
from labkit.explain.methods import (
    class_map,
    require_cnn,
    resolve_layer,
    to_unit,
    upsample,
)
from labkit.models import count_parameters
from labkit.run_folder import (
    STAGE_ROLES,
    checkpoint_label,
    checkpoint_path,
    load_model_state,
    run_checkpoint,
    run_dir_of,
    stage_path,
)
from labkit.tracking import write_json

log = logging.getLogger(__name__)

MAPS_FORMAT = "labkit-explain-maps-v1"

CLASS_NAMES = {
    "MNIST": [str(i) for i in range(10)],
    "FashionMNIST": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                     "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}

# data keys that change how a run was trained or read, not which test images it is tested on
_DATA_KEYS_FREE = ("root", "download", "batch_size", "eval_batch_size", "val_size", "train_size",
                   "split_seed", "drop_last", "augment", "cache_dir")


@dataclass
class Source:
    """One model to explain: the checkpoint whose config rebuilds it, and where its weights are."""

    label: str
    ckpt: Path
    weights: Path | None = None  # a distillation stage file (the tested weights); else ckpt's
    role: str | None = None      # teacher / student for a distillation stage

    @property
    def run_dir(self) -> Path:
        """The run folder the checkpoint belongs to (a distillation run for a stage's)."""
        return run_dir_of(self.weights or self.ckpt)


def distill_run_sources(folder: Path) -> list[Source]:
    """A distillation run folder's finished stages: weights from ``<stage>.pth`` (the tested
    weights), the config from that stage's engine checkpoint, or any stage's (a teacher loaded
    from ``distill.teacher_ckpt`` has none; the students' configs hold its model node)."""
    configs = [p for stage in STAGE_ROLES for name in ("last", "best")
               if (p := checkpoint_path(folder / stage, name)).is_file()]
    sources = []
    for stage, role in STAGE_ROLES.items():
        weights = stage_path(folder, stage)
        own = [p for p in configs if p.parent.parent.name == stage]
        if not weights.is_file() and not own:
            continue
        if not (own or configs):
            raise CheckpointError(f"{folder} has {weights.name} but no stage checkpoint with a config to "
                                  f"rebuild it from")
        sources.append(Source(stage, (own or configs)[0], weights if weights.is_file() else None, role))
    if not sources:
        raise CheckpointError(f"{folder} is a folder but not a distillation run (no teacher.pth, "
                              f"student_baseline.pth, student_distill.pth): pass a checkpoint file")
    return sources


def expand_sources(ckpt_path: Any, labels: Sequence[str] | None = None) -> list[Source]:
    """``ckpt_path``: a checkpoint file, a run folder (its ``checkpoints/best.pt``), a distillation
    run folder (its three stages), or a list of these."""
    entries = list(ckpt_path) if isinstance(ckpt_path, ListConfig | list | tuple) else [ckpt_path]
    if not entries:
        raise ConfigError("ckpt_path=[] is invalid: give a checkpoint, a distillation run folder or a list")
    sources: list[Source] = []
    for entry in entries:
        path = Path(str(entry)).expanduser()
        if path.is_dir() and (checkpoint := run_checkpoint(path)) is not None:
            sources.append(Source(path.name, checkpoint))
        elif path.is_dir():
            sources.extend(distill_run_sources(path))
        elif not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        else:
            sources.append(Source(checkpoint_label(path), path))
    if labels:
        if len(labels) != len(sources):
            raise ConfigError(f"explain.labels has {len(labels)} names for {len(sources)} models "
                              f"({', '.join(s.label for s in sources)})")
        sources = [dataclasses.replace(s, label=str(name)) for s, name in zip(sources, labels, strict=True)]
    names = [s.label for s in sources]
    return [dataclasses.replace(s, label=f"{s.label}#{names[: i + 1].count(s.label)}")
            if names.count(s.label) > 1 else s for i, s in enumerate(sources)]


def check_own_folder(output_dir: str | Path, sources: Sequence[Source]) -> None:
    """Refuse an output folder inside a checkpoint's run: explain never writes there."""
    out = Path(output_dir).expanduser().resolve()
    for source in sources:
        run = source.run_dir.resolve()
        if out == run or run in out.parents:
            raise ConfigError(f"the output folder {out} is inside the run of {source.ckpt}: explain writes "
                              f"a run folder of its own (leave hydra.run.dir at its default)")


class OwnRunFolder(Callback):
    """Hydra callback: the output-folder check before Hydra creates the folder (and its .hydra/)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            entries = OmegaConf.select(config, "ckpt_path", throw_on_missing=False)
            if entries is None or OmegaConf.is_missing(config, "ckpt_path"):
                return
            sources = expand_sources(entries)
            check_own_folder(config.hydra.run.dir, sources)
        except LabkitError as exc:
            exit_on(exc)


@dataclass
class Explained:
    """One source, rebuilt: the run, its plain fp32 model in eval mode, the resolved layer."""

    source: Source
    run: RebuiltRun
    model: torch.nn.Module
    layer: str


def load_source(source: Source, cfg: DictConfig) -> Explained:
    """Rebuild the model as its run built it, in fp32 and uncompiled (attribution wants exact
    gradients and hooks), with the checkpoint's weights; check it is a CNN and has the layer."""
    run = rebuild_run(source.ckpt, cfg.data, cfg.trainer.device, role=source.role)
    if source.weights is not None:  # the stage file's tested weights, with the checkpoint's config
        run = dataclasses.replace(run, state={**run.state, "model": load_model_state(source.weights)})
    rt = dataclasses.replace(run.rt, precision="fp32", compile=False)
    model = run.model(rt).module.eval()
    require_cnn(model, f"checkpoint {source.weights or source.ckpt}")
    layer, _ = resolve_layer(model, cfg.explain.layer)
    return Explained(source, run, model, layer)


def same_test_set(runs: Sequence[Explained]) -> None:
    """Runs shown side by side must be tested on the same images."""
    def key(e: Explained) -> dict[str, Any]:
        data = OmegaConf.to_container(e.run.config.data, resolve=True)
        return {k: v for k, v in data.items() if k not in _DATA_KEYS_FREE}

    first = key(runs[0])
    for other in runs[1:]:
        diff = sorted(k for k in set(first) | set(key(other)) if first.get(k) != key(other).get(k))
        if diff:
            raise ConfigError(f"{other.source.label} was trained on other data than {runs[0].source.label} "
                              f"(data.{', data.'.join(diff)} differ): runs side by side need one test set")


def class_names(datamodule: Any) -> list[str]:
    names = getattr(datamodule, "classes", None) or CLASS_NAMES.get(
        getattr(datamodule, "folder", None) or getattr(datamodule, "name", ""))
    if not names or len(names) != datamodule.num_classes:
        names = [str(i) for i in range(datamodule.num_classes)]
    return list(names)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor,
            batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and its softmax probability for each image (plain forward, no test-time flip)."""
    probs = torch.cat([model(x[i : i + batch_size]).float().softmax(-1)
                       for i in range(0, len(x), batch_size)])
    confidence, preds = probs.max(-1)
    return preds, confidence


def select_grid(targets: torch.Tensor, preds: torch.Tensor, num_classes: int,
                per_class: int) -> tuple[list[int], list[list[int | None]]]:
    """Per class the first ``per_class`` correctly and wrongly classified images: the pool
    indices to explain, and each class row's cells as positions in that list (None: empty)."""
    chosen: list[int] = []
    slots: list[list[int | None]] = []
    for c in range(num_classes):
        row: list[int | None] = []
        for correct in (True, False):
            hits = ((targets == c) & ((preds == c) == correct)).nonzero().flatten()[:per_class].tolist()
            row += [len(chosen) + k for k in range(len(hits))] + [None] * (per_class - len(hits))
            chosen += hits
        slots.append(row)
    return chosen, slots


def pool_indices(targets: torch.Tensor, num_classes: int, size: int, seed: int) -> torch.Tensor:
    """``size`` test images drawn across the whole test set (seeded), as evenly over the classes as
    they allow, in test-set order: an image folder's test set is sorted by class, so its first
    images would be one or two classes only."""
    cpu = targets.cpu()
    order = torch.randperm(len(cpu), generator=torch.Generator().manual_seed(seed))
    shuffled = cpu[order]
    rank = torch.zeros(len(cpu), dtype=torch.long)  # each image's place among its class, shuffled
    for c in range(num_classes):
        members = (shuffled == c).nonzero().flatten()
        rank[members] = torch.arange(len(members))
    # round robin over the classes: every class's first image, then every class's second, ...
    picked = order[torch.argsort(rank * len(cpu) + torch.arange(len(cpu)))[:size]]
    return picked.sort().values.to(targets.device)


def select_per_class(targets: torch.Tensor, num_classes: int, count: int) -> list[int]:
    """The first ``count`` images of each class, class by class."""
    return [i for c in range(num_classes) for i in (targets == c).nonzero().flatten()[:count].tolist()]


def explain_one(e: Explained, x: torch.Tensor, labels: torch.Tensor, baseline: torch.Tensor,
                cfg: DictConfig, batch_size: int = 256) -> dict[str, Any]:
    """Predictions, maps (raw and at image size) and faithfulness of one model on images ``x``."""
    preds, confidence = predict(e.model, x)
    explained = preds if cfg.explain.target == "pred" else labels
    maps = torch.cat([class_map(e.model, x[i : i + batch_size], explained[i : i + batch_size],
                                cfg.explain.method, e.layer) for i in range(0, len(x), batch_size)])
    score = faithfulness(e.model, x, maps, explained, int(cfg.explain.steps), int(cfg.explain.seed),
                         baseline)
    return {"preds": preds.cpu(), "confidence": confidence.cpu(), "explained": explained.cpu(),
            "maps": maps.cpu(), "heat": to_unit(upsample(maps, tuple(x.shape[-2:]))).cpu(), "faith": score}




def baseline_images(kind: str, images: torch.Tensor, loader: Any) -> torch.Tensor:
    """What a removed pixel becomes (normalised, like the model's inputs), for uint8 ``images``."""
    if kind == "mean":
        return torch.zeros(1, *images.shape[1:], device=images.device)
    if kind == "black":
        return loader.normalise(torch.zeros_like(images[:1]))
    from torchvision.transforms.functional import gaussian_blur

    sigma = images.shape[-1] / 8
    kernel = 2 * int(3 * sigma) + 1
    return gaussian_blur(loader.normalise(images), [kernel, kernel], [sigma, sigma])


def agreement(heat_a: torch.Tensor, heat_b: torch.Tensor) -> float:
    """Mean over images of the Pearson correlation of two runs' maps (at image size)."""
    a, b = heat_a.flatten(1), heat_b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return r.mean().item()


def check_settings(cfg: DictConfig) -> None:
    """The schema's check (labkit/config/schema.py, ``explain``), after a clearer line for a
    missing ``ckpt_path``."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path is required: ckpt_path=RUN/checkpoints/best.pt, a distillation run "
                          "folder, or a list [A,B,...]")
    validate_config(cfg, "explain")


@dataclass
class Shown:
    """The test images every run explains: where they are in the test set, the images (uint8 and
    normalised), their labels, the removed-pixel baseline, and the grid's cells (one run)."""

    names: list[str]
    num_classes: int
    pool: int
    index: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    x: torch.Tensor
    baseline: torch.Tensor
    slots: list[list[int | None]] | None


def choose_images(runs: Sequence[Explained], cfg: DictConfig) -> Shown:
    """Side by side: ``2 x per_class`` test images per class; one run: per class its first correctly
    and wrongly classified images among ``explain.pool`` test images drawn evenly over the classes."""
    datamodule = runs[0].run.datamodule()
    loader = datamodule.loader("test")
    pool = min(int(cfg.explain.pool), loader.num_samples)
    where = pool_indices(loader.targets, datamodule.num_classes, pool, int(cfg.explain.seed))
    images, targets = loader.images_at(where), loader.targets[where]
    per_class, slots = int(cfg.explain.per_class), None
    if len(runs) > 1:
        chosen = select_per_class(targets, datamodule.num_classes, 2 * per_class)
    else:
        pool_preds, _ = predict(runs[0].model, loader.normalise(images))
        chosen, slots = select_grid(targets, pool_preds, datamodule.num_classes, per_class)
    index = torch.tensor(chosen, dtype=torch.long, device=images.device)
    shown = images[index]
    return Shown(class_names(datamodule), datamodule.num_classes, pool, where[index], shown, targets[index],
                 loader.normalise(shown), baseline_images(str(cfg.explain.baseline), shown, loader), slots)


def explain_checkpoints(cfg: DictConfig) -> dict[str, Any]:
    """The whole command: see the module docstring. Returns what ``explain.json`` holds."""
    start = time.perf_counter()
    check_settings(cfg)
    sources = expand_sources(cfg.ckpt_path, cfg.explain.labels)
    out = Path(cfg.paths.output_dir)
    check_own_folder(out, sources)
    runs = [load_source(s, cfg) for s in sources]
    same_test_set(runs)
    shown = choose_images(runs, cfg)
    results = {e.source.label: explain_one(e, shown.x, shown.labels, shown.baseline, cfg) for e in runs}
    explain_s = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    files = draw(runs, results, shown, cfg, out)
    save_maps(runs, results, shown, cfg, out / "maps.pt")
    summary = {**explain_summary(runs, results, shown, cfg), "files": files, "explain_time_s": explain_s,
               "total_time_s": time.perf_counter() - start}
    write_json(out / "explain.json", summary)
    report(summary, out)
    return summary


def _what(runs: Sequence[Explained], cfg: DictConfig) -> str:
    """The figures' caption: method, layer(s) and which class is explained."""
    layer, target = ", ".join(sorted({e.layer for e in runs})), cfg.explain.target
    return f"{cfg.explain.method} at {layer}, class: {'predicted' if target == 'pred' else 'label'}"


def draw(runs: Sequence[Explained], results: dict[str, dict[str, Any]], shown: Shown, cfg: DictConfig,
         out: Path) -> list[str]:
    """``comparison.png`` (several runs) or ``grid.png`` (one), and ``faithfulness.png``; returns the
    names of the files the command writes."""
    images, labels, what = shown.images.cpu(), shown.labels.cpu(), _what(runs, cfg)
    if len(runs) > 1:
        picks = select_per_class(labels, shown.num_classes, int(cfg.explain.side_by_side))
        plot_comparison(images[picks], labels[picks], [
            {"label": label, "heat": r["heat"][picks], "preds": r["preds"][picks],
             "confidence": r["confidence"][picks],
             "note": f"score {r['faith']['map']['score']:.2f}\n(random {r['faith']['random']['score']:.2f})"}
            for label, r in results.items()], shown.names, f"{what}; title: prediction and confidence",
            out / "comparison.png")
        figure = "comparison.png"
    else:
        r = results[runs[0].source.label]
        f = r["faith"]
        plot_grid(images, r["heat"], labels, r["preds"], r["confidence"], shown.slots,
                  int(cfg.explain.per_class), shown.names,
                  f"{runs[0].source.label}: {what}\nfaithfulness (insertion - deletion AUC, "
                  f"{len(labels)} images): {f['map']['score']:.3f} vs random map {f['random']['score']:.3f} "
                  f"(paired difference {f['difference']['mean']:+.3f} ± {f['difference']['sem']:.3f} se)"
                  f"\ndeletion {f['map']['deletion_auc']:.3f} vs {f['random']['deletion_auc']:.3f}, "
                  f"insertion {f['map']['insertion_auc']:.3f} vs {f['random']['insertion_auc']:.3f}",
                  out / "grid.png")
        figure = "grid.png"
    plot_curves({label: r["faith"]["curves"] for label, r in results.items()},
                f"deletion / insertion: {what} vs a random map ({len(labels)} test images)",
                out / "faithfulness.png")
    return [figure, "faithfulness.png", "maps.pt", "explain.json"]


def save_maps(runs: Sequence[Explained], results: dict[str, dict[str, Any]], shown: Shown,
              cfg: DictConfig, path: Path) -> None:
    """``maps.pt``: the raw maps, predictions and per-image faithfulness of every run."""
    torch.save({
        "format": MAPS_FORMAT, "method": str(cfg.explain.method), "target": str(cfg.explain.target),
        "test_indices": shown.index.cpu(), "targets": shown.labels.cpu(), "class_names": shown.names,
        "runs": {label: {
            "layer": e.layer, "maps": r["maps"], "explained": r["explained"], "preds": r["preds"],
            "confidence": r["confidence"],
            **{f"{source}_{k}": v for source, per in r["faith"]["per_image"].items() for k, v in per.items()},
        } for e, (label, r) in zip(runs, results.items(), strict=True)},
    }, path)


def explain_summary(runs: Sequence[Explained], results: dict[str, dict[str, Any]], shown: Shown,
                    cfg: DictConfig) -> dict[str, Any]:
    """What ``explain.json`` holds besides the file list and the times: the settings, each run's
    faithfulness and the agreement of every pair of runs' maps."""
    labels = shown.labels.cpu()
    pairs = {f"{a} vs {b}": agreement(results[a]["heat"], results[b]["heat"])
             for i, a in enumerate(results) for b in list(results)[i + 1 :]}
    return {
        "method": str(cfg.explain.method), "layer": str(cfg.explain.layer), "target": str(cfg.explain.target),
        "mode": "side_by_side" if len(runs) > 1 else "grid", "per_class": int(cfg.explain.per_class),
        "pool": shown.pool, "steps": int(cfg.explain.steps), "seed": int(cfg.explain.seed),
        "baseline": str(cfg.explain.baseline), "baseline_is": BASELINES[str(cfg.explain.baseline)],
        "random_map": "uniform noise at the map's own resolution, upsampled the same way",
        "device": str(runs[0].run.rt.device), "images": len(labels), "test_indices": shown.index.tolist(),
        "class_names": shown.names,
        "runs": [{
            "label": e.source.label, "checkpoint": str(e.source.ckpt),
            "weights": str(e.source.weights or e.source.ckpt), "epoch": e.run.state.get("epoch"),
            "model": type(e.model).__name__, "params": count_parameters(e.model), "layer": e.layer,
            "map_size": list(results[e.source.label]["maps"].shape[-2:]),
            "accuracy_on_explained": (results[e.source.label]["preds"] == labels).float().mean().item(),
            "faithfulness": {k: results[e.source.label]["faith"][k]
                             for k in ("map", "random", "difference", "beats_random")},
        } for e in runs],
        "agreement": pairs or None,
    }


def report(summary: dict[str, Any], out: Path) -> None:
    console = Console()
    table = Table(title=f"{summary['method']}, {summary['images']} test images: faithfulness",
                  caption="AUC: deletion lower is better, insertion higher; score = insertion - deletion; "
                          "a random map's in brackets; diff: paired per image, ± standard error")
    for column in ("run", "layer", "map", "deletion", "insertion", "score", "diff"):
        table.add_column(column, justify="left" if column in ("run", "layer") else "right")
    for run in summary["runs"]:
        f = run["faithfulness"]
        table.add_row(run["label"], run["layer"], "x".join(map(str, run["map_size"])),
                      f"{f['map']['deletion_auc']:.3f} ({f['random']['deletion_auc']:.3f})",
                      f"{f['map']['insertion_auc']:.3f} ({f['random']['insertion_auc']:.3f})",
                      f"{f['map']['score']:.3f} ({f['random']['score']:.3f})",
                      f"{f['difference']['mean']:+.3f}±{f['difference']['sem']:.3f}")
    console.print(table)
    for pair, r in (summary["agreement"] or {}).items():
        console.print(f"map agreement {pair}: r = {r:.2f}", highlight=False)
    console.print(f"{summary['total_time_s']:.1f} s -> {out}", highlight=False)

"""The pictures: maps over their images (per class, correct and wrong), runs side by side, curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from labkit.tracking.figures import pyplot, save_figure

RIGHT, WRONG = "#1a7f37", "#cf222e"


def show(ax, image: torch.Tensor, heat: torch.Tensor | None, alpha: float = 0.5) -> None:
    """A uint8 ``[C, H, W]`` image (grey or RGB) with ``heat`` (``[H, W]`` in [0, 1]) over it."""
    if image.shape[0] == 1:
        ax.imshow(image[0].cpu().numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    if heat is not None:
        ax.imshow(heat.cpu().numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def _blank(ax, text: str = "") -> None:
    ax.axis("off")
    if text:
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=7, color="0.5", transform=ax.transAxes)


def plot_grid(images: torch.Tensor, heat: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor,
              confidence: torch.Tensor, slots: list[list[int | None]], per_class: int,
              class_names: Sequence[str], title: str, path: str | Path) -> Path:
    """One row per class: ``per_class`` correctly then ``per_class`` wrongly classified images
    (``slots[c][j]`` indexes ``images``; None leaves the cell empty), each titled with its true
    and predicted label and the prediction's confidence, its map overlaid."""
    plt = pyplot()
    rows, cols = len(slots), 2 * per_class
    fig, axes = plt.subplots(rows, cols, figsize=(1.05 * cols + 0.9, 1.12 * rows + 0.7), squeeze=False)
    for c, row in enumerate(slots):
        for j, i in enumerate(row):
            ax = axes[c][j]
            if i is None:
                _blank(ax, "none" if j >= per_class else "")
            else:
                show(ax, images[i], heat[i])
                ok = int(preds[i]) == int(targets[i])
                ax.set_title(f"T {class_names[int(targets[i])]}\nP {class_names[int(preds[i])]} "
                             f"{float(confidence[i]):.2f}", fontsize=6.5, color=RIGHT if ok else WRONG,
                             pad=2)
            if j == 0:
                ax.axis("on")
                ax.set_frame_on(i is not None)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_ylabel(class_names[c], fontsize=8)
    for j in range(cols):
        label = f"correct {j + 1}" if j < per_class else f"wrong {j - per_class + 1}"
        axes[0][j].annotate(label, (0.5, 1.55), xycoords="axes fraction", ha="center", fontsize=7.5,
                            color=RIGHT if j < per_class else WRONG)
    fig.suptitle(title, fontsize=8.5)
    return save_figure(fig, path)


def plot_comparison(images: torch.Tensor, targets: torch.Tensor, runs: list[dict[str, Any]],
                    class_names: Sequence[str], title: str, path: str | Path) -> Path:
    """The same images (columns) explained by each run (rows after the first, which shows the
    images alone); ``runs[r]`` has ``label``, ``heat`` ``[N, H, W]``, ``preds``, ``confidence``
    and ``note`` (a line under the label, e.g. its faithfulness)."""
    plt = pyplot()
    n, rows = len(images), len(runs) + 1
    fig, axes = plt.subplots(rows, n, figsize=(0.95 * n + 1.3, 1.08 * rows + 0.5), squeeze=False)
    for i in range(n):
        show(axes[0][i], images[i], None)
        axes[0][i].set_title(class_names[int(targets[i])], fontsize=7, pad=2)
        for r, run in enumerate(runs, start=1):
            ax = axes[r][i]
            show(ax, images[i], run["heat"][i])
            ok = int(run["preds"][i]) == int(targets[i])
            ax.set_title(f"{class_names[int(run['preds'][i])]} {float(run['confidence'][i]):.2f}",
                         fontsize=6.5, color=RIGHT if ok else WRONG, pad=2)
    axes[0][0].set_ylabel("image", fontsize=8)
    for r, run in enumerate(runs, start=1):
        axes[r][0].set_ylabel(f"{run['label']}\n{run.get('note', '')}".strip(), fontsize=7)
    fig.suptitle(title, fontsize=8.5)
    return save_figure(fig, path)


def plot_curves(curves: dict[str, dict[str, dict[str, list[float]]]], title: str, path: str | Path) -> Path:
    """Mean deletion and insertion curves: ``curves[run]["map" | "random"][kind]``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (run, pair) in enumerate(curves.items()):
        colour = colours[k % len(colours)]
        for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
            for source, style in (("map", "-"), ("random", ":")):
                values = pair[source][kind]
                xs = [s / (len(values) - 1) for s in range(len(values))]
                name = run if len(curves) > 1 else source
                ax.plot(xs, values, style, color=colour if len(curves) > 1 else colours[source == "random"],
                        label=f"{name} (random)" if len(curves) > 1 and source == "random" else name)
    for ax, kind, verb in zip(axes, ("deletion", "insertion"), ("removed", "inserted"), strict=True):
        ax.set_xlabel(f"fraction of pixels {verb}, most relevant first")
        ax.set_ylabel("probability of the explained class")
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} area is better)", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)

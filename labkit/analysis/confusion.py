"""Confusion matrix and per-class accuracy of a classifier on a loader, and their figure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from labkit.data.loader import Batch
from labkit.tracking.figures import pyplot, save_figure


@torch.no_grad()
def confusion_matrix(predict: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[Batch],
                     num_classes: int) -> torch.Tensor:
    """``[true, predicted]`` counts, accumulated on the device with one bincount per batch.

    ``predict`` maps inputs to logits: a model in eval mode, or ``Engine.logits`` bound to one
    (so the matrix counts exactly the predictions the test accuracy counted)."""
    counts = None
    for batch in batches:
        pred = predict(batch.inputs).argmax(1)
        flat = batch.targets * num_classes + pred
        step = torch.bincount(flat, minlength=num_classes * num_classes)
        counts = step if counts is None else counts + step
    if counts is None:
        return torch.zeros(num_classes, num_classes, dtype=torch.long)
    return counts.reshape(num_classes, num_classes).cpu()


def per_class_accuracy(matrix: torch.Tensor) -> list[float | None]:
    """Recall of each class (None for a class absent from the data)."""
    totals = matrix.sum(1)
    return [None if t == 0 else float(matrix[i, i] / t) for i, t in enumerate(totals.tolist())]


def plot_confusion(matrix: torch.Tensor, path: str | Path, title: str = "confusion matrix") -> Path:
    plt = pyplot()
    n = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    if n <= 20:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        for i in range(n):
            for j in range(n):
                value = int(matrix[i, j])
                color = "white" if value > matrix.max() / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return save_figure(fig, path)

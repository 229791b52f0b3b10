"""Is a map a measurement? Deletion and insertion curves against a random map (Petsiuk et al. 2018).

Rank the pixels by the map, most relevant first (ties in random order). **Deletion** replaces
the top ``k`` pixels with the baseline value (0 after normalisation: the data set's mean colour)
for ``k`` in ``steps`` equal steps from none to all and records the softmax probability of the
explained class: a faithful map makes it fall fast, a *low* area under the curve (AUC).
**Insertion** starts from the all-baseline image and puts the top pixels back: a faithful map
makes the probability rise fast, a *high* AUC. ``score = insertion AUC - deletion AUC``.

The baseline is a random map drawn at the explained map's own resolution and upsampled the same
way, so both remove pixels in patches of the same size: a map scores above it only by putting
the relevant patches first.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from labkit.explain.methods import upsample


def pixel_ranks(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[N, H*W]``: each pixel's rank (0 = most relevant) under its map, ties broken at random."""
    flat = maps.flatten(1)
    perm = torch.randperm(flat.shape[1], generator=generator)
    order = perm[flat[:, perm].argsort(dim=1, descending=True, stable=True)]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    return ranks


@torch.no_grad()
def perturbation_curves(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                        steps: int = 20, generator: torch.Generator | None = None,
                        baseline: torch.Tensor | None = None,
                        batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves ``[N, steps + 1]`` of ``maps`` (``[N, H, W]``, image size).

    Point ``s`` is the probability of class ``target`` with the top ``s / steps`` of the pixels
    removed (deletion) or the only ones present (insertion); a pixel is all its channels. A
    removed pixel takes its value in ``baseline`` (like ``x``; default 0, the data set's mean).
    """
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    generator = generator or torch.Generator().manual_seed(0)
    n, _, height, width = x.shape
    ranks = pixel_ranks(maps.cpu(), generator).to(x.device).view(n, 1, height, width)
    counts = torch.round(torch.linspace(0, height * width, steps + 1)).to(x.device)
    curves = {}
    per_batch = max(1, batch_size // (steps + 1))  # images per forward pass
    for kind in ("deletion", "insertion"):
        probs = torch.empty(n, steps + 1)
        for start in range(0, n, per_batch):
            xs, bs, rk, tg = (t[start : start + per_batch] for t in (x, baseline, ranks, target))
            top = rk[:, None] < counts[None, :, None, None, None]  # [n, S+1, 1, H, W]
            keep = ~top if kind == "deletion" else top
            batch = torch.where(keep, xs[:, None], bs[:, None]).flatten(0, 1)
            logits = model(batch).float().view(len(xs), steps + 1, -1)
            probs[start : start + len(xs)] = logits.softmax(-1).gather(
                2, tg.view(-1, 1, 1).expand(-1, steps + 1, 1))[..., 0].cpu()
        curves[kind] = probs
    return curves


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under each curve over the removed / inserted fraction 0..1 (trapezoids)."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[-1] - 1), dim=-1)


def random_maps(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform random maps of ``shape`` (``[N, h, w]``): the baseline a map must beat."""
    return torch.rand(shape, generator=generator)


def summarise(curves: dict[str, torch.Tensor]) -> dict[str, float]:
    deletion, insertion = auc(curves["deletion"]).mean().item(), auc(curves["insertion"]).mean().item()
    return {"deletion_auc": deletion, "insertion_auc": insertion, "score": insertion - deletion}


def faithfulness(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                 steps: int = 20, seed: int = 0, baseline: torch.Tensor | None = None) -> dict[str, Any]:
    """Deletion / insertion AUCs of ``maps`` (``[N, h, w]``, any resolution) and of random maps of
    the same resolution, on images ``x`` for classes ``target``.

    Returns the means (``map``, ``random``), the per-image paired score difference map - random
    (``difference``: mean and standard error), whether the map beats random on the score, and the
    mean curves (``curves``) and per-image AUCs (``per_image``) for figures and the maps file.
    """
    size = tuple(x.shape[-2:])
    generator = torch.Generator().manual_seed(int(seed))
    noise = random_maps(tuple(maps.shape), generator)
    result: dict[str, Any] = {"steps": int(steps), "curves": {}, "per_image": {}}
    for name, candidate in (("map", maps), ("random", noise)):
        curves = perturbation_curves(model, x, upsample(candidate.to(x.device), size).cpu(), target,
                                     steps, generator, baseline)
        result[name] = summarise(curves)
        result["curves"][name] = {kind: c.mean(0).tolist() for kind, c in curves.items()}
        result["per_image"][name] = {f"{kind}_auc": auc(c) for kind, c in curves.items()}
    per_image = {name: aucs["insertion_auc"] - aucs["deletion_auc"]
                 for name, aucs in result["per_image"].items()}
    diff = per_image["map"] - per_image["random"]
    sem = diff.std().item() / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
    result["difference"] = {"mean": diff.mean().item(), "sem": sem}  # paired, per image
    result["beats_random"] = result["map"]["score"] > result["random"]["score"]
    return result

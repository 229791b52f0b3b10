"""One run's ``grad_norms.png``: block gradient norm against depth, at initialisation and after
training (the record is ``grad_norms.json``, see :mod:`labkit.analysis.grad_monitor`).

Several runs on one figure, and their table, are the report's: :mod:`labkit.report.grads`. The
axis style and the probes are shared from here so both figures read alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labkit.tracking.figures import pyplot, save_figure

PROBES = (("init", "at initialisation"), ("final", "after training"))


def probe_values(record: dict[str, Any], when: str) -> list[float]:
    """The ``when`` probe's norms of a ``grad_norms.json`` record (missing ones as NaN)."""
    return [float("nan") if v is None else v for v in record.get(when) or []]


def style_axis(ax: Any, title: str) -> None:
    """Log-scale norms against depth position, input side left."""
    ax.set_yscale("log")
    ax.set_xlabel("block (depth position: input side left, head right)")
    ax.set_ylabel("L2 norm of weight gradients")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")


def plot_grad_norms(record: dict[str, Any], out: str | Path, title: str = "") -> Path:
    """One run: block gradient norm against depth, at initialisation and after training."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for when, label in PROBES:
        if record.get(when):
            ax.plot(record["positions"], probe_values(record, when), "-o", markersize=3, label=label)
    style_axis(ax, title or f"gradient norms per block ({record.get('model', 'model')}, "
                            f"{record.get('skip_connections', 0)} skips)")
    ax.legend()
    return save_figure(fig, out)

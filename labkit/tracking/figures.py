"""The two steps every labkit figure shares: a headless pyplot, and saving then closing.

On the tracking floor because a run's own figures (``curves.png``) are files it leaves behind;
analysis, the commands and the report draw with the same two steps. matplotlib is imported on
first use: a run that draws nothing never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed: CI, clusters, SSH)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """Lay out, write ``path`` (110 dpi PNG, folder created) and free the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, **savefig_kwargs)
    plt.close(fig)
    return path

"""Downloads through torchvision that never leave half-written files where data is expected."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from labkit.errors import DataError


@contextmanager
def torchvision_download(dataset: str, root: Path, target: Path, by_hand: str) -> Iterator[Path]:
    """Download torchvision's ``dataset`` into a temporary folder under ``root`` and yield it.

    The caller moves the finished files from there to ``target``; on any failure the temporary
    folder is removed, so an interrupted download is never mistaken for a dataset next time.
    ``by_hand`` tells the user what to put in ``target`` instead.
    """
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        try:
            getattr(tvd, dataset)(root=tmp, train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise DataError(
                f"could not download {dataset} into {target} ({type(exc).__name__}: {exc}); "
                f"{by_hand} or point data.root at a folder holding them"
            ) from exc
        yield Path(tmp)

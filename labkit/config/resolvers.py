"""OmegaConf resolvers the YAML files use."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def register_resolvers(project_root: str | Path | None = None) -> None:
    """Register ``${project_root:}`` (the folder holding ``conf/``); safe to call twice."""
    root = str(Path(project_root).resolve()) if project_root else str(PROJECT_ROOT)
    OmegaConf.register_new_resolver("project_root", lambda: root, replace=True)
